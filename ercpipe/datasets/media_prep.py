"""Utterance audio: one 16 kHz mono WAV per utterance of a dialogue shard, plus a status report.

For each row of the shard, [audio_start, audio_end) of audio_path (the whole file when the times are
empty) is decoded with ercpipe.io.media.load_audio and written to out_dir/{utterance_id}.wav.
out_dir/_report.tsv has one line per row: utterance_id, status, detail, where status is

    ok               the WAV was written
    missing_audio    no audio_path, or the file does not exist
    no_audio_stream  the file has no audio track
    corrupt_audio    the file cannot be decoded
    silent_audio     the window decodes to nothing or to digital silence

A row that is not ok gets no WAV (the audio extractor then stores zeros with present=False); no row is
ever left out of the report. The directory is built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ercpipe.io import manifest as manifest_io
from ercpipe.io.atomic import atomic_dir
from ercpipe.io.media import SAMPLE_RATE, MediaError, is_silent, load_audio, write_wav

logger = logging.getLogger(__name__)

REPORT_NAME = "_report.tsv"
STATUSES: tuple[str, ...] = ("ok", "missing_audio", "no_audio_stream", "corrupt_audio", "silent_audio")


def utterance_audio(row, out_dir: Path) -> tuple[str, str]:
    """Write one utterance's WAV into out_dir; returns (status, detail)."""
    if not row.audio_path:
        return "missing_audio", "the manifest row has no audio_path"
    try:
        signal = load_audio(row.audio_path, row.audio_start, row.audio_end)
    except MediaError as err:
        return err.reason, str(err)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        # PyAV raises these (not FFmpegError) for some damaged containers and headers.
        return "corrupt_audio", f"{row.audio_path}: {type(err).__name__}: {err}"
    if is_silent(signal):
        window = "" if math.isnan(row.audio_start) and math.isnan(row.audio_end) else \
            f" in [{row.audio_start}, {row.audio_end}) s"
        what = "no samples" if signal.size == 0 else "digital silence"
        return "silent_audio", f"{row.audio_path}{window}: {what}"
    write_wav(out_dir / f"{row.utterance_id}.wav", signal, SAMPLE_RATE)
    return "ok", f"{signal.size / SAMPLE_RATE:.3f} s"


def write_utterance_audio(manifest_path, shard: int, n_shards: int, out_dir: Path, threads: int = 1) -> None:
    """WAVs and _report.tsv for the dialogues of one shard (ercpipe.io.manifest.shard_rows)."""
    rows = manifest_io.shard_rows(manifest_io.read(manifest_path), shard, n_shards)
    logger.info("utterance audio shard %d/%d: %d utterances, %d thread(s)", shard, n_shards, len(rows), threads)
    with atomic_dir(out_dir) as tmp:
        with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
            results = list(tqdm(pool.map(lambda r: utterance_audio(r, tmp), rows.itertuples(index=False)),
                                total=len(rows), desc=f"utterance audio shard {shard}", unit="utt"))
        report = pd.DataFrame({"utterance_id": rows["utterance_id"].tolist(),
                               "status": [status for status, _ in results],
                               "detail": [detail for _, detail in results]})
        report.to_csv(tmp / REPORT_NAME, sep="\t", index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    counts = Counter(report["status"])
    failed = {s: n for s, n in counts.items() if s != "ok"}
    if failed:
        logger.warning("utterance audio shard %d: %d of %d rows without audio: %s", shard, sum(failed.values()),
                       len(rows), failed)
    logger.info("utterance audio shard %d: wrote %d WAV(s) to %s", shard, counts.get("ok", 0), out_dir)
