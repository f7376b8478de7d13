"""Memory and time reservations of the extraction jobs, computed from what each shard holds.

    extraction_resources(manifest_path, shard, n_shards, modality, threads, *, audio_dir=None,
                         settings=None, max_mem_mb=MAX_MEM_MB) -> {"mem_mb": int, "runtime": int}

`modality` is "utterance_audio" (rule utterance_audio), "audio", "visual" or "text" (the
`*_features_shard` rules); `runtime` is minutes, as Snakemake's `runtime` resource. The numbers are
`margin x model` with the model fitted to measurements on this project's machine
(bench/bench_audio_memory.py, bench/bench_features.py; docs/features.md "Memory and time per job"),
never less than the fixed reservation each rule had before (FLOORS) and never more than `max_mem_mb`:
an estimate above it raises ResourceLimitError naming the utterance that needs it, before the job
starts. Nothing is ever cut to fit: the whole utterance is what its features describe.

What each model reads:

* audio: the duration of every WAV of the shard's utterance-audio directory (the audio job's input),
  from the WAV headers (no samples are read). openSMILE runs on `threads` utterances at once, each
  needing a fixed amount plus a per-second amount for the low-level-descriptor history its
  whole-utterance functionals need (ercpipe.features.audio streams the signal, so that history is
  all that grows); the `threads` longest utterances are summed. Plus the feature matrix.
* utterance_audio: ercpipe.datasets.media_prep decodes and writes each utterance block by block, so
  its memory does not depend on durations; the time follows the decoded spans the manifest knows
  (a windowed row decodes its file from the start to audio_end).
* visual: ercpipe.features.visual decides which sampled frames an utterance keeps before decoding, so
  it holds at most max_frames frames whatever the utterance's length (and the next utterance's, decoded
  in a thread meanwhile); memory follows max_frames and batch_size (MTCNN's batch) at FRAME_BYTES per
  frame (1280x720 RGB unless given), not the durations, so whole-file rows (MELD's clips, no times in
  the manifest) are covered as well as windowed ones. The defaults stay under the floor. The time
  follows the sampled frames of the windows the manifest knows (max_frames for a whole-file row).
* text: the encoder's batch, not the data, sets the memory (the floor); the time follows the rows.

This module imports only the standard library and pandas (the Snakefile imports it at parse time).
A missing input raises FileNotFoundError carrying the path as given, which Snakemake turns into
<TBD> while the input does not exist yet (a dry run) and evaluates again once it does.
"""
from __future__ import annotations

import errno
import math
import wave
from functools import lru_cache
from pathlib import Path

import pandas as pd

from ercpipe.errors import ErcpipeError
from ercpipe.features.settings import AUDIO_FEATURE_SETS, VISUAL_DEFAULTS
from ercpipe.io.digest import stat_identity

# Fixed reservations of the rules before this module: the least any job of the rule gets.
FLOORS: dict[str, dict[str, int]] = {
    "utterance_audio": {"mem_mb": 2000, "runtime": 60},
    "audio": {"mem_mb": 2000, "runtime": 120},
    "visual": {"mem_mb": 6000, "runtime": 480},
    "text": {"mem_mb": 4000, "runtime": 120},
}
MARGIN = 1.5  # memory: estimate x MARGIN (allocator, library versions, other inputs than the measured ones)
TIME_MARGIN = 3.0  # time: a busy or slower cluster core than the measured one
MAX_MEM_MB = 256_000  # default cap: more than this for one job is refused, naming the utterance

# openSMILE, ercpipe.features.audio streaming path, measured (bench/bench_audio_memory.py): peak RSS of
# a job = AUDIO_BASE_MB + per running utterance (AUDIO_INSTANCE_MB + slope x seconds). Slopes rounded
# up from the 10-600 s fits; sets not measured use the largest.
AUDIO_BASE_MB = 250.0  # python, numpy, pandas, h5py, opensmile, the first Smile
AUDIO_THREAD_MB = 100.0  # every further worker process (its own interpreter pages and Smile; measured ~100 MB)
AUDIO_INSTANCE_MB = 50.0  # one running openSMILE instance (config, components, buffers)
AUDIO_MB_PER_SECOND: dict[str, float] = {"IS10": 0.30, "eGeMAPSv02": 0.30, "ComParE_2016": 0.45}
# CPU seconds per second of audio, one core (IS10 13 ms, eGeMAPSv02 17 ms, ComParE_2016 12 ms measured).
AUDIO_CPU_PER_SECOND = 0.02

# utterance_audio: PyAV decoding, CPU seconds per second of decoded span (AAC 48 kHz stereo: 10 ms).
DECODE_CPU_PER_SECOND = 0.015

# visual: peak RSS of extract_shard on one 720p utterance (docs/features.md): about 900 MB with 1 frame kept,
# 1.4 GB with 16, 1.6 GB with 32, 1.9 GB with 64 (batch_size 32), whatever the clip's length.
VISUAL_BASE_MB = 1200.0
FRAME_BYTES = 1280 * 720 * 3
VISUAL_HELD_FRAMES = 3  # frame copies per kept frame: this utterance's, the next one's (prefetched), MTCNN's stack
VISUAL_BATCH_FRAMES = 6  # frame-sized buffers per frame of one MTCNN batch (its float32 copy and pyramid)
VISUAL_SECONDS_PER_FRAME = 0.25  # decode + MTCNN + backbone per sampled frame, one core (measured 0.12-0.15)

# text: transformer encoders on CPU, seconds per utterance (MiniLM 0.01-0.03; roberta-large about 0.2).
TEXT_SECONDS_PER_ROW = 0.3



class ResourceLimitError(ErcpipeError, ValueError):
    """A job would need more memory than the configured maximum."""


def extraction_resources(manifest_path, shard: int, n_shards: int, modality: str, threads: int = 1, *,
                         audio_dir=None, settings: dict | None = None, max_mem_mb: int = MAX_MEM_MB,
                         frame_bytes: int = FRAME_BYTES) -> dict[str, int]:
    """{"mem_mb": int, "runtime": int (minutes)} for one shard of an extraction rule (module docstring).

    `audio_dir` (modality "audio") is the utterance-audio directory of the shard; `settings` the
    extractor's settings from the config (audio: feature_set; visual: fps, max_frames, batch_size).
    """
    if modality not in FLOORS:
        raise ValueError(f"modality {modality!r} is not one of {sorted(FLOORS)}")
    threads = max(1, int(threads))
    settings = settings or {}
    rows = _shard_rows(manifest_path, int(shard), int(n_shards))
    advice = ("split that utterance into shorter rows in the manifest (audio_start/audio_end, "
              "video_start/video_end) or raise the maximum (max_mem_mb)")
    if modality == "audio":
        if audio_dir is None:
            raise ValueError("modality 'audio' needs audio_dir (the utterance-audio directory of the shard)")
        seconds = wav_durations(audio_dir, rows["utterance_id"].tolist())
        estimate_mb, cpu_s = audio_estimate(seconds, settings.get("feature_set", "IS10"), threads)
        longest = seconds.idxmax() if len(seconds) and seconds.max() > 0 else ""
        what = f"utterance {longest}: {seconds.get(longest, 0.0):.0f} s of audio" if longest else "no audio"
    elif modality == "utterance_audio":
        spans = decode_spans(rows)
        estimate_mb = 0.0  # bounded: media_prep streams; the floor holds (docs/features.md)
        cpu_s = float(spans.sum()) * DECODE_CPU_PER_SECOND / threads
        what = ""
    elif modality == "visual":
        fps = float(settings.get("fps", VISUAL_DEFAULTS["fps"]))
        max_frames = int(settings.get("max_frames", VISUAL_DEFAULTS["max_frames"]))
        batch_size = int(settings.get("batch_size", VISUAL_DEFAULTS["batch_size"]))
        estimate_mb = visual_estimate_mb(max_frames, batch_size, frame_bytes)  # the same for every utterance
        windows = video_windows(rows)
        frames = windows.mul(fps).apply(lambda n: max_frames if math.isnan(n) else min(max_frames, math.ceil(n)))
        cpu_s = float(frames.sum()) * VISUAL_SECONDS_PER_FRAME  # torch threads gain only 1.2-1.3x: not counted
        what = f"max_frames {max_frames}, batch_size {batch_size}, {frame_bytes} bytes per frame"
        advice = "lower max_frames or batch_size in the visual settings, or raise the maximum (max_mem_mb)"
    else:  # text
        estimate_mb = 0.0
        cpu_s = len(rows) * TEXT_SECONDS_PER_ROW  # one core's speed: torch threads gain little on CPU
        what = ""
    floor = FLOORS[modality]
    mem_mb = max(floor["mem_mb"], int(math.ceil(estimate_mb * MARGIN)))
    if mem_mb > max_mem_mb:
        raise ResourceLimitError(
            f"{modality} shard {shard} of {manifest_path} needs about {mem_mb} MB ({what}), more than the maximum "
            f"of {max_mem_mb} MB; {advice}")
    runtime = max(floor["runtime"], int(math.ceil((60.0 + cpu_s * TIME_MARGIN) / 60.0)))
    return {"mem_mb": int(mem_mb), "runtime": int(runtime)}


def audio_estimate(seconds: pd.Series, feature_set: str, threads: int) -> tuple[float, float]:
    """(peak MB without margin, CPU-bound wall seconds) of openSMILE over utterances of these durations."""
    slope = AUDIO_MB_PER_SECOND.get(feature_set, max(AUDIO_MB_PER_SECOND.values()))
    dim = AUDIO_FEATURE_SETS.get(feature_set, max(AUDIO_FEATURE_SETS.values()))
    durations = seconds[seconds > 0].sort_values(ascending=False)
    running = durations.head(threads)  # the `threads` longest may run at the same time
    mem = (AUDIO_BASE_MB + (threads - 1) * AUDIO_THREAD_MB
           + len(running) * AUDIO_INSTANCE_MB + slope * float(running.sum())
           + 2 * len(seconds) * dim * 4 / 2**20)  # feature matrix + the vectors waiting to be stored
    total, longest = float(durations.sum()), float(durations.max()) if len(durations) else 0.0
    wall = max(total / threads, longest) * AUDIO_CPU_PER_SECOND
    return mem, wall


def visual_estimate_mb(max_frames: int, batch_size: int, frame_bytes: int = FRAME_BYTES) -> float:
    """Peak MB (without margin) of a visual job: the frames kept per utterance (this one's and the prefetched
    next one's) and MTCNN's buffers for one batch; independent of the utterances' lengths."""
    frame_mb = frame_bytes / 2**20
    return VISUAL_BASE_MB + frame_mb * (VISUAL_HELD_FRAMES * max_frames
                                        + VISUAL_BATCH_FRAMES * min(max_frames, batch_size))


def decode_spans(rows: pd.DataFrame) -> pd.Series:
    """Seconds of audio the utterance-audio step decodes per row: [0, audio_end) (it decodes from the
    start of the file); whole-file rows count 0 (their length is not in the manifest)."""
    return rows["audio_end"].fillna(0.0).clip(lower=0.0).set_axis(rows["utterance_id"])


def video_windows(rows: pd.DataFrame) -> pd.Series:
    """video_end - video_start per row (NaN for whole-file rows: no duration in the manifest)."""
    return (rows["video_end"] - rows["video_start"]).clip(lower=0.0).set_axis(rows["utterance_id"])


def wav_durations(audio_dir, utterance_ids: list[str]) -> pd.Series:
    """Seconds of audio in audio_dir/{utterance_id}.wav from the WAV headers; 0 where there is no WAV
    (the row has no audio: the report says why)."""
    if not Path(audio_dir).is_dir():
        raise FileNotFoundError(errno.ENOENT, "utterance-audio directory does not exist", str(audio_dir))
    key = (str(audio_dir), stat_identity(audio_dir), tuple(utterance_ids))
    return pd.Series(_wav_durations(*key), index=list(utterance_ids), dtype="float64")


@lru_cache(maxsize=64)
def _wav_durations(audio_dir: str, _state: tuple, utterance_ids: tuple[str, ...]) -> tuple[float, ...]:
    return tuple(wav_seconds(Path(audio_dir) / f"{u}.wav") for u in utterance_ids)


def wav_seconds(path: Path) -> float:
    """Duration of a WAV from its header; 0.0 if it is missing or unreadable (then it is not extracted)."""
    try:
        with wave.open(str(path)) as w:  # PCM (what the utterance-audio step writes): header only
            return w.getnframes() / float(w.getframerate())
    except FileNotFoundError:
        return 0.0
    except (wave.Error, EOFError, OSError):
        pass
    try:  # float / extensible WAVs: soundfile reads the header too
        import soundfile as sf

        info = sf.info(str(path))
        return info.frames / float(info.samplerate)
    except Exception:  # noqa: BLE001 - a corrupt WAV is recorded by the extractor, not here
        return 0.0


def _shard_rows(manifest_path, shard: int, n_shards: int) -> pd.DataFrame:
    path = Path(manifest_path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "manifest does not exist", str(manifest_path))
    return _cached_rows(str(path), stat_identity(path), shard, n_shards).copy()


@lru_cache(maxsize=16)
def _cached_rows(path: str, _state: tuple, shard: int, n_shards: int) -> pd.DataFrame:
    from ercpipe.io import manifest as manifest_io

    return manifest_io.shard_rows(manifest_io.read(path), shard, n_shards)
