"""Acoustic features: openSMILE functionals of each utterance's 16 kHz mono WAV.

Input is the utterance-audio step's directory: `{utterance_id}.wav` for every usable row and
`_report.tsv` (utterance_id, status, detail) saying why a row has no WAV. A row without a usable
signal becomes a row of zeros with present=False; the reason is logged and stored as JSON in the
feature file's `absent` attribute ({utterance_id: reason}).

Parallelism: `threads` > 1 runs the utterances in that many worker processes (forked; one `Smile` per
process), each row keeping its own failure reason. openSMILE's native calls release the GIL, but the
Python around each utterance (reading the WAV, feeding blocks, the sink callback) holds it for about 5 %
of the utterance's CPU time (measured with cProfile on IEMOCAP-like 4.5-s WAVs), which bounds threads at
about 1 / (0.05 + 0.95 / n) x: 5.9x on 8 cores, below the 0.9 x cores wanted; processes share nothing.
One thread runs in this process, with no pool.

Memory: `Smile.process_signal` writes the whole signal into openSMILE's input level (one that grows to
hold it) before openSMILE runs; with all of the input available at once, openSMILE's memory grows with
the signal far beyond the signal's own size (IS10 peak RSS: 0.22 GB at 10 s, 1.6 GB at 300 s, 3.1 GB at
600 s; eGeMAPSv02 and ComParE_2016 less). Feeding the same signal in blocks into that growing level
does not help (IS10, 300 s: 1.6 GB): the writer runs ahead of openSMILE. Here the blocks
(BLOCK_SECONDS) go into a ring buffer of WAVE_BUFFER_SECONDS (the buffer openSMILE's own file reader
uses) while openSMILE runs, so the writer waits for it, and WAVs are read from disk block by block.
What still grows is openSMILE's history of low-level descriptors, which functionals over the whole
utterance need (about 0.25 MB per second of audio for IS10; docs/features.md). The vectors are
bit-identical to `process_signal` on the whole signal (the same float -> int16 conversion, the same
config and options); the tests check it.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import opensmile
import pandas as pd
import soundfile as sf
from opensmile.core.config import config as smile_config
from opensmile.core.lib import OpenSMILE, OpenSmileException
from tqdm.auto import tqdm

from ercpipe.datasets.media_prep import REPORT_NAME
from ercpipe.errors import ErcpipeError
from ercpipe.features import settings as settings_mod
from ercpipe.features.interface import NO_CONTEXT, ExtractionContext
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.io.atomic import write_text
from ercpipe.io.media import SILENCE_PEAK
from ercpipe.runlog import worker_context

logger = logging.getLogger(__name__)

# Feature set name -> (openSMILE enum member, functionals dimension); the names, dimensions, levels and
# defaults are in ercpipe.features.settings (light: training checks feature files with them).
FEATURE_SETS: dict[str, tuple[opensmile.FeatureSet, int]] = {
    name: (opensmile.FeatureSet[name], dim) for name, dim in settings_mod.AUDIO_FEATURE_SETS.items()}
LEVELS = {name: opensmile.FeatureLevel[member] for name, member in settings_mod.AUDIO_LEVELS.items()}
DEFAULT_SETTINGS = settings_mod.AUDIO_DEFAULTS
audio_settings = settings_mod.audio_settings  # validated, defaults filled in: what the file's hash covers


def feature_dim(settings: dict | None) -> int:
    """Width of the vectors `extract_shard` writes for these settings."""
    return FEATURE_SETS[audio_settings(settings)["feature_set"]][1]


ASCII_ONLY = "openSMILE reads only paths of ASCII characters"


class OpenSmilePathError(ErcpipeError, OSError):
    """openSMILE was to read a path that is not ASCII: it encodes its options and its config file's path as ASCII
    (a UnicodeEncodeError from inside opensmile was all one saw)."""


def make_smile(settings: dict) -> opensmile.Smile:
    settings = audio_settings(settings)
    package = Path(opensmile.__file__).parent
    if not str(package).isascii():
        raise OpenSmilePathError(
            f"{ASCII_ONLY}, and its config files are under {package}; install "
            "the environment at such a path (`make venv VENV=/path/to/venv`, or `snakemake --use-conda "
            "--conda-prefix /path/to/envs`)")
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


# Streaming input (see the module docstring). openSMILE's cWaveSource buffers 5 s; a block must fit.
BLOCK_SECONDS = 1.0
WAVE_BUFFER_SECONDS = 5.0
# A write refused this long while openSMILE runs means it no longer reads its input: stop, do not hang.
STALL_SECONDS = 120.0

# cExternalAudioSource as in opensmile's shared/standard_external_wave_input.conf.inc, but writing into
# a ring buffer instead of a level that grows to hold the whole signal.
_STREAM_SOURCE_CONF = """\
[componentInstances:cComponentManager]
instance[extsource].type=cExternalAudioSource

[extsource:cExternalAudioSource]
writer.dmLevel=wave
writer.levelconf.growDyn=0
writer.levelconf.isRb=1
writer.levelconf.nT=\\cm[waveBufferFrames{80000}:ring buffer length in frames]
sampleRate=\\cm[sampleRate{16000}:sample rate]
nBits=\\cm[nBits{16}:sample bits]
channels=\\cm[channels{1}:channel size]
"""
_conf_lock = threading.Lock()
_conf_path: Path | None = None


def _stream_source_conf() -> Path:
    """The streaming source config, written once per user into the temporary folder and kept there: its content
    never changes, and a folder of its own per process stayed behind every job that was killed (no atexit runs on
    SIGKILL or on SIGTERM's default action). Written under a temporary name and renamed, so that jobs starting
    together never read half of it; a folder of that name that is not this user's own is not used."""
    global _conf_path
    with _conf_lock:
        if _conf_path is None or not _conf_path.is_file():
            folder = _ascii_temp_folder() / f"ercpipe-opensmile-{os.getuid()}"
            folder.mkdir(mode=0o700, exist_ok=True)
            if folder.is_symlink() or folder.stat().st_uid != os.getuid():
                folder = Path(tempfile.mkdtemp(prefix="ercpipe-opensmile-"))
            path = folder / "stream_source.conf.inc"
            if not path.is_file() or path.read_text() != _STREAM_SOURCE_CONF:
                write_text(path, _STREAM_SOURCE_CONF)
            _conf_path = path
        return _conf_path


def _ascii_temp_folder() -> Path:
    """The temporary folder, or where it is not all ASCII (openSMILE reads its options as ASCII: TMPDIR=/tmp/é
    stopped every audio job), the first ASCII system one that can be written."""
    folder = Path(tempfile.gettempdir())
    if str(folder).isascii():
        return folder
    for candidate in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):
        if candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    raise OpenSmilePathError(f"{ASCII_ONLY}, and the temporary folder is {folder} (TMPDIR); set TMPDIR to a "
                             "folder whose path is ASCII")


def _stream_functionals(smile: opensmile.Smile, blocks, sample_rate: int) -> np.ndarray:
    """openSMILE functionals of a mono signal given as float blocks (each at most BLOCK_SECONDS long).

    Each block is converted exactly as `Smile.process_signal` converts a whole signal (x 32768, cast to
    int16) and written into the ring buffer while openSMILE runs in a helper thread; a full buffer makes
    the writer wait. NaNs when openSMILE gives no output (signal shorter than its analysis windows).
    """
    options = smile._options()  # the options process_signal passes (sink, level, buffer modes)
    options["source"] = str(_stream_source_conf())
    options["sampleRate"] = int(sample_rate)
    options["nBits"] = 16
    options["waveBufferFrames"] = max(int(WAVE_BUFFER_SECONDS * sample_rate), 2 * int(BLOCK_SECONDS * sample_rate))
    source, sink = smile_config.EXTERNAL_SOURCE_COMPONENT, smile_config.EXTERNAL_OUTPUT_COMPONENT
    native = OpenSMILE()
    native.initialize(config_file=smile.config_path, options=options, loglevel=smile.loglevel,
                      log_file=smile.logfile, debug=smile.verbose)
    rows: list[np.ndarray] = []
    native.external_sink_set_callback_ex(sink, lambda data, meta: rows.append(np.array(data, dtype=np.float32)))
    run = _NativeRun(native, source)
    try:
        threading.Thread(target=run, name="opensmile-run", daemon=True).start()
        for block in blocks:
            scaled = np.asarray(block, dtype=np.float32) * 32768
            data = scaled.astype(np.int16).tobytes()
            refused_since = None
            while not native.external_audio_source_write_data(source, data):
                if run.ended.is_set():
                    reason = run.failure or "no error given"
                    raise RuntimeError(f"openSMILE stopped before the end of its input: {reason}")
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > STALL_SECONDS:
                    raise RuntimeError(f"openSMILE took no audio for {STALL_SECONDS:.0f} s (its input buffer "
                                       "stays full); stopped")
                time.sleep(0.002)
        native.external_audio_source_set_eoi(source)
        run.ended.wait()
    except BaseException:
        run.end_and_free()
        raise
    native.free()
    if run.failure is not None:
        raise run.failure
    if not rows:
        return np.full(smile.num_features, np.nan, dtype=np.float32)
    return np.vstack(rows).astype(np.float32, copy=False).reshape(-1)


class _NativeRun:
    """openSMILE's run of one signal, the target of its helper thread, and its end when the feeding thread stops.

    The feeding thread may stop at any point (an error, or the CLI's signal handler raising while it waits), also
    while the helper thread is starting. openSMILE must then be ended before it is freed and before the interpreter
    exits: a run left going in the daemon thread crashed the process at exit (status -11 or -6), and openSMILE
    refuses to abort a run that has not begun (which then waits for input for ever). The run's end is awaited on an
    Event, never with Thread.join: Python 3.11's join, interrupted by a signal handler's exception, marks a thread
    that still runs as stopped (and openSMILE was freed under it).
    """

    def __init__(self, native: OpenSMILE, source: str) -> None:
        self.native, self.source = native, source
        self.failure: BaseException | None = None  # what the run raised, handed to the feeding thread
        self.ended = threading.Event()
        self._gate = threading.Lock()  # makes "begin the run" and "cancel it" exclusive
        self._begun = self._cancelled = False

    def __call__(self) -> None:
        try:
            with self._gate:
                if self._cancelled:
                    return
                self._begun = True
            self.native.run()
        except BaseException as err:  # noqa: BLE001 - handed to the feeding thread
            self.failure = err
        finally:
            self.ended.set()

    def end_and_free(self) -> None:
        """End the run wherever it is and free openSMILE; a stop that comes meanwhile is raised once openSMILE
        has returned."""
        with self._gate:  # from here on the thread, if it has not begun the run, never will
            self._cancelled = True
        late = None
        if self._begun:
            try:
                self.native.abort()
            except OpenSmileException:  # not running yet (or ended): the end of input makes it return at once
                self.native.external_audio_source_set_eoi(self.source)
            while not self.ended.is_set():
                try:
                    self.ended.wait()
                except BaseException as err:  # noqa: BLE001 - raised below, once openSMILE no longer runs
                    late = late or err
        self.native.free()
        if late is not None:
            raise late


def functionals(smile: opensmile.Smile, signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """One float32 vector of openSMILE functionals for a mono signal (fed to openSMILE in blocks)."""
    signal = np.asarray(signal, dtype=np.float32)
    step = max(1, int(BLOCK_SECONDS * sample_rate))
    return _stream_functionals(smile, (signal[i:i + step] for i in range(0, signal.size, step)), sample_rate)


def _wav_blocks(path: Path, step: int):
    """Mono float32 blocks of a WAV (channels averaged, as ercpipe.io.media.read_wav does)."""
    for block in sf.blocks(str(path), blocksize=step, dtype="float32", always_2d=True):
        yield block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)


def wav_peak(path: Path) -> tuple[int, int, float]:
    """(frames, sample rate, peak |amplitude| of the mono mixdown) of a WAV, read block by block."""
    info = sf.info(str(path))
    step = max(1, int(BLOCK_SECONDS * info.samplerate))
    peak = 0.0
    for block in _wav_blocks(path, step):
        if block.size:
            peak = max(peak, float(np.max(np.abs(block))))
    return info.frames, info.samplerate, peak


def wav_functionals(smile: opensmile.Smile, path: Path) -> np.ndarray:
    """`functionals` of a WAV file, read from disk block by block (the whole signal is never in memory)."""
    rate = sf.info(str(path)).samplerate
    return _stream_functionals(smile, _wav_blocks(Path(path), max(1, int(BLOCK_SECONDS * rate))), rate)


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


class _UtteranceWorker:
    """(vector, '') or (None, reason) for one utterance; one `Smile`, made on first use, per worker."""

    def __init__(self, settings: dict, audio_dir: Path, report: dict[str, tuple[str, str]], dim: int):
        self.settings, self.audio_dir, self.report, self.dim = settings, Path(audio_dir), report, dim
        self.smile: opensmile.Smile | None = None

    def __call__(self, utterance_id: str, flags: str) -> tuple[np.ndarray | None, str]:
        wav, reason = _wav_status(utterance_id, flags, self.audio_dir, self.report)
        if reason:
            return None, reason
        try:
            frames, rate, peak = wav_peak(wav)
        except (RuntimeError, OSError) as err:  # soundfile's LibsndfileError is a RuntimeError
            return None, f"corrupt_audio: {wav}: {err}"
        if frames == 0 or peak < SILENCE_PEAK:  # ercpipe.io.media.is_silent, as the utterance-audio step
            return None, "silent_audio"
        if self.smile is None:
            self.smile = make_smile(self.settings)
        try:
            vector = wav_functionals(self.smile, wav)  # the whole utterance, never cut
        except sf.LibsndfileError as err:
            return None, f"corrupt_audio: {wav}: {err}"
        if vector.shape != (self.dim,):
            raise RuntimeError(f"openSMILE returned {vector.shape} for {wav}; expected ({self.dim},) for "
                               f"{self.settings['feature_set']}")
        if not np.isfinite(vector).all():
            # openSMILE fills NaN when the signal is shorter than its analysis windows.
            return None, f"non_finite_features (signal of {frames / rate * 1000:.0f} ms, too short)"
        return vector, ""


_process_worker: _UtteranceWorker | None = None  # the worker of a pool process (set by _start_worker)


def _start_worker(settings: dict, audio_dir: Path, report: dict[str, tuple[str, str]], dim: int) -> None:
    global _process_worker
    _process_worker = _UtteranceWorker(settings, audio_dir, report, dim)


def _worker_utterance(utterance_id: str, flags: str) -> tuple[np.ndarray | None, str]:
    return _process_worker(utterance_id, flags)


def extract_shard(manifest_path, settings: dict | None, out_path, *, threads: int = 1, device: str = "auto",
                  context: ExtractionContext | None = None) -> None:
    """openSMILE features for the utterances of the manifest (a job's shard manifest), written to `out_path`
    (HDF5); the call shape of every extractor (ercpipe.features.interface). `context.audio_dir` holds the
    utterance WAVs (rule utterance_audio); openSMILE runs on the CPU, so `device` is not used."""
    settings = audio_settings(settings)
    audio_dir = (context or NO_CONTEXT).audio_dir
    if audio_dir is None:
        raise ValueError("audio extraction needs context=ExtractionContext(audio_dir=...): the folder of "
                         "utterance WAVs that the utterance-audio step writes")
    rows = manifest_io.read(manifest_path)
    ids = rows["utterance_id"].tolist()
    dim = FEATURE_SETS[settings["feature_set"]][1]
    if ids and not audio_dir.is_dir():
        raise FileNotFoundError(f"audio directory {audio_dir} does not exist; run the utterance-audio rule first")
    report = read_audio_report(audio_dir) if ids else {}
    logger.info("audio %s: %d utterances, openSMILE %s %s, %d process(es)", manifest_path, len(ids),
                settings["feature_set"], settings["level"], threads)

    flags = rows["flags"].tolist()
    feats = np.zeros((len(ids), dim), dtype=np.float32)
    present = np.zeros(len(ids), dtype=bool)
    absent: dict[str, str] = {}
    workers = min(max(1, int(threads)), len(ids))
    pool = None
    if workers > 1:
        # Processes, not threads: see the module docstring ("Parallelism"). The streaming config is written
        # here first, so forked workers share it.
        _stream_source_conf()
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=worker_context(), initializer=_start_worker,
                                   initargs=(settings, audio_dir, report, dim))
        results = pool.map(_worker_utterance, ids, flags)
    else:
        results = map(_UtteranceWorker(settings, audio_dir, report, dim), ids, flags)
    try:
        for i, (utterance_id, (vector, reason)) in enumerate(
                tqdm(zip(ids, results), total=len(ids), desc="audio", unit="utt")):
            if vector is None:
                absent[utterance_id] = reason
                logger.debug("audio of %s absent: %s", utterance_id, reason)
            else:
                feats[i] = vector
                present[i] = True
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    feature_io.log_absent_summary("audio", absent, len(ids), logger)
    feature_io.write(out_path, feature_io.FeatureSet(ids, feats, present, {
        "modality": "audio", "extractor": "opensmile", "model": settings["feature_set"],
        "settings": settings, "versions": feature_io.package_versions(["opensmile", "av", "ercpipe"]),
        "absent": json.dumps(absent, sort_keys=True)}))
