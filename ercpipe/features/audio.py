"""Acoustic features: openSMILE functionals of each utterance's 16 kHz mono WAV.

Input is the utterance-audio step's directory: `{utterance_id}.wav` for every usable row and
`_report.tsv` (utterance_id, status, detail) saying why a row has no WAV. A row without a usable
signal becomes a row of zeros with present=False; the reason is logged and stored as JSON in the
feature file's `absent` attribute ({utterance_id: reason}).

openSMILE's native library releases the GIL while it computes, so a thread pool (one `Smile` object
per thread) scales with cores as well as `Smile(num_workers=...)` does (measured: 24 utterances,
130 s of speech, 1.28 s with 2 threads vs 1.30 s with num_workers=2 vs 2.53 s serial) and lets each
row keep its own failure reason.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import opensmile
import pandas as pd
from tqdm.auto import tqdm

from ercpipe.config import with_defaults
from ercpipe.datasets.media_prep import REPORT_NAME
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.io.media import is_silent, read_wav

logger = logging.getLogger(__name__)

# Feature set name -> (openSMILE enum member, functionals dimension). The dimensions were checked
# against opensmile 2.6.0; IS10 is config is09-13/IS10_paraling_compat (the IEMOCAP standard).
FEATURE_SETS: dict[str, tuple[opensmile.FeatureSet, int]] = {
    "IS09": (opensmile.FeatureSet.IS09, 384),
    "IS10": (opensmile.FeatureSet.IS10, 1582),
    "emobase": (opensmile.FeatureSet.emobase, 988),
    "eGeMAPSv02": (opensmile.FeatureSet.eGeMAPSv02, 88),
    "ComParE_2016": (opensmile.FeatureSet.ComParE_2016, 6373),
}
LEVELS = {"functionals": opensmile.FeatureLevel.Functionals}

DEFAULT_SETTINGS: dict = {
    "feature_set": "IS10",  # one of FEATURE_SETS
    "level": "functionals",  # one vector per utterance (the only level a per-utterance file can hold)
}


def audio_settings(settings: dict | None) -> dict:
    """Validated settings with defaults filled in; this dict is what the feature file's hash covers."""
    out = with_defaults(settings, DEFAULT_SETTINGS, "audio feature")
    if out["feature_set"] not in FEATURE_SETS:
        raise ValueError(f"audio feature_set {out['feature_set']!r} is not one of {sorted(FEATURE_SETS)}")
    if out["level"] not in LEVELS:
        raise ValueError(f"audio level {out['level']!r} is not one of {sorted(LEVELS)}")
    return out


def feature_dim(settings: dict | None) -> int:
    """Width of the vectors `extract_shard` writes for these settings."""
    return FEATURE_SETS[audio_settings(settings)["feature_set"]][1]


def make_smile(settings: dict) -> opensmile.Smile:
    settings = audio_settings(settings)
    return opensmile.Smile(FEATURE_SETS[settings["feature_set"]][0], LEVELS[settings["level"]])


def read_audio_report(audio_dir: Path) -> dict[str, tuple[str, str]]:
    """{utterance_id: (status, detail)} from the utterance-audio step's report; {} if there is none."""
    path = Path(audio_dir) / REPORT_NAME
    if not path.exists():
        return {}
    report = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in ("utterance_id", "status") if c not in report.columns]
    if missing:
        raise ValueError(f"{path}: lacks column(s) {missing}; re-run the utterance-audio rule")
    details = report["detail"] if "detail" in report.columns else pd.Series([""] * len(report))
    return {u: (s, d) for u, s, d in zip(report["utterance_id"], report["status"], details)}


def functionals(smile: opensmile.Smile, signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """One float32 vector of openSMILE functionals for a mono signal."""
    frame = smile.process_signal(np.asarray(signal, dtype=np.float32), sample_rate)
    return frame.to_numpy(dtype=np.float32).reshape(-1)


AUDIO_FLAGS = ("missing_audio", "corrupt_audio", "no_audio_stream", "silent_audio")


def _wav_status(utterance_id: str, flags: str, audio_dir: Path,
                report: dict[str, tuple[str, str]]) -> tuple[Path, str]:
    """The WAV to read and '' if it should be usable, else a reason why the row has no audio."""
    wav = audio_dir / f"{utterance_id}.wav"
    if utterance_id in report:
        status, detail = report[utterance_id]
        if status != "ok":
            return wav, status + (f": {detail}" if detail else "")
        if not wav.exists():
            raise FileNotFoundError(
                f"{audio_dir / REPORT_NAME} says utterance {utterance_id} is ok but {wav} does not exist; "
                "the utterance-audio output is incomplete: delete the directory and re-run its rule")
        return wav, ""
    if report:
        raise ValueError(f"utterance {utterance_id} is not in {audio_dir / REPORT_NAME}; the audio directory "
                         "was made from another manifest or shard: re-run the utterance-audio rule")
    if wav.exists():
        return wav, ""
    # No report (a plain directory of WAVs): the manifest's flag, if any, says why the file is absent.
    flagged = [f for f in AUDIO_FLAGS if manifest_io.has_flag(flags, f)]
    return wav, flagged[0] if flagged else "missing_wav"


def extract_shard(manifest_path, shard: int, n_shards: int, audio_dir: Path, settings: dict, out_path,
                  threads: int = 1) -> None:
    """openSMILE features for the utterances of one dialogue shard, written to `out_path` (HDF5)."""
    settings = audio_settings(settings)
    audio_dir = Path(audio_dir)
    rows = manifest_io.shard_rows(manifest_io.read(manifest_path), shard, n_shards)
    ids = rows["utterance_id"].tolist()
    dim = FEATURE_SETS[settings["feature_set"]][1]
    if ids and not audio_dir.is_dir():
        raise FileNotFoundError(f"audio directory {audio_dir} does not exist; run the utterance-audio rule first")
    report = read_audio_report(audio_dir) if ids else {}
    logger.info("audio shard %d/%d: %d utterances, openSMILE %s %s, %d thread(s)", shard, n_shards, len(ids),
                settings["feature_set"], settings["level"], threads)

    per_thread = threading.local()

    def one(utterance_id: str, flags: str) -> tuple[np.ndarray | None, str]:
        wav, reason = _wav_status(utterance_id, flags, audio_dir, report)
        if reason:
            return None, reason
        try:
            signal, rate = read_wav(wav)
        except (RuntimeError, OSError) as err:  # soundfile's LibsndfileError is a RuntimeError
            return None, f"corrupt_audio: {wav}: {err}"
        if is_silent(signal):  # the same test the utterance-audio step applies
            return None, "silent_audio"
        if not hasattr(per_thread, "smile"):
            per_thread.smile = make_smile(settings)
        vector = functionals(per_thread.smile, signal, rate)
        if vector.shape != (dim,):
            raise RuntimeError(f"openSMILE returned {vector.shape} for {wav}; expected ({dim},) for "
                               f"{settings['feature_set']}")
        if not np.isfinite(vector).all():
            # openSMILE fills NaN when the signal is shorter than its analysis windows.
            return None, f"non_finite_features (signal of {signal.size / rate * 1000:.0f} ms, too short)"
        return vector, ""

    feats = np.zeros((len(ids), dim), dtype=np.float32)
    present = np.zeros(len(ids), dtype=bool)
    absent: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        results = pool.map(one, ids, rows["flags"].tolist())
        for i, (utterance_id, (vector, reason)) in enumerate(
                tqdm(zip(ids, results), total=len(ids), desc=f"audio shard {shard}", unit="utt")):
            if vector is None:
                absent[utterance_id] = reason
                logger.debug("audio of %s absent: %s", utterance_id, reason)
            else:
                feats[i] = vector
                present[i] = True
    log_absent_summary("audio", absent, len(ids))
    feature_io.write(out_path, feature_io.FeatureSet(ids, feats, present, {
        "modality": "audio", "extractor": "opensmile", "model": settings["feature_set"],
        "settings": settings, "versions": feature_io.package_versions(["opensmile", "ercpipe"]),
        "absent": json.dumps(absent, sort_keys=True)}))


def log_absent_summary(modality: str, absent: dict[str, str], total: int, log: logging.Logger = logger) -> None:
    """One warning per shard: how many rows have no features, counted by reason, with examples."""
    if not absent:
        return
    counts = Counter(reason.split(" ")[0].split(":")[0] for reason in absent.values())
    examples = ", ".join(list(absent)[:3])
    log.warning("%s: %d of %d utterances have no features (zeros, present=False): %s; e.g. %s",
                   modality, len(absent), total, dict(counts), examples)
