"""Reading utterance media: audio as 16 kHz mono float32, video as RGB frames sampled at a fixed rate.

PyAV (which bundles its own FFmpeg) decodes everything the datasets ship: IEMOCAP's DivX .avi and
.wav, MELD's H.264/AAC .mp4. No system ffmpeg is needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import soundfile as sf

from ercpipe.errors import ErcpipeError
from ercpipe.io.atomic import atomic_path

SAMPLE_RATE = 16000


class MediaError(ErcpipeError, RuntimeError):
    """A media file is missing or cannot be decoded; `reason` is a manifest flag name."""

    def __init__(self, reason: str, path: str | Path, detail: str = ""):
        self.reason = reason
        self.path = str(path)
        super().__init__(f"{path}: {reason.replace('_', ' ')}" + (f" ({detail})" if detail else ""))


@dataclass
class MediaInfo:
    path: str
    exists: bool
    decodable: bool
    has_audio: bool
    has_video: bool
    duration: float  # seconds, 0 if unknown
    error: str = ""


def probe(path: str | Path) -> MediaInfo:
    """What a media file holds, without raising: used by the readers to flag defects."""
    path = Path(path)
    if not path.exists():
        return MediaInfo(str(path), False, False, False, False, 0.0, "missing")
    try:
        with av.open(str(path)) as container:
            has_audio = len(container.streams.audio) > 0
            has_video = len(container.streams.video) > 0
            duration = float(container.duration / av.time_base) if container.duration else 0.0
            # Opening succeeds on some truncated files; decoding one packet proves the file is usable.
            stream = container.streams.video[0] if has_video else (container.streams.audio[0] if has_audio else None)
            if stream is None:
                return MediaInfo(str(path), True, False, False, False, duration, "no streams")
            next(container.decode(stream))
    except (av.error.FFmpegError, StopIteration, UnicodeDecodeError, ValueError) as err:
        return MediaInfo(str(path), True, False, False, False, 0.0, f"{type(err).__name__}: {err}")
    return MediaInfo(str(path), True, True, has_audio, has_video, duration)


def _window(start: float | None, end: float | None) -> tuple[float, float]:
    lo = 0.0 if start is None or (isinstance(start, float) and math.isnan(start)) else float(start)
    hi = math.inf if end is None or (isinstance(end, float) and math.isnan(end)) else float(end)
    return lo, hi


def load_audio(path: str | Path, start: float | None = None, end: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the [start, end) window of the first audio stream to mono float32 at `sample_rate`.

    The stream is decoded from its beginning (no seeking), so the window is exact in samples; the
    datasets' audio files are at most a few minutes long.
    """
    lo, hi = _window(start, end)
    path = Path(path)
    if not path.exists():
        raise MediaError("missing_audio", path)
    chunks: list[np.ndarray] = []
    first_t = 0.0
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError("no_audio_stream", path)
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for i, frame in enumerate(container.decode(stream)):
                if i == 0 and frame.pts is not None:
                    first_t = max(0.0, float(frame.pts * stream.time_base))
                if frame.pts is not None and float(frame.pts * stream.time_base) >= hi:
                    break
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except av.error.FFmpegError as err:
        raise MediaError("corrupt_audio", path, str(err)) from err
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    signal = np.concatenate(chunks).astype(np.float32, copy=False)
    i0 = max(0, int(round((lo - first_t) * sample_rate)))
    i1 = len(signal) if math.isinf(hi) else max(i0, int(round((hi - first_t) * sample_rate)))
    return signal[i0:i1]


# A signal whose peak amplitude is below this (about -100 dBFS, under one 16-bit step) is silence.
SILENCE_PEAK = 1e-5


def is_silent(signal: np.ndarray) -> bool:
    """True for an empty signal or digital silence (no sample above SILENCE_PEAK)."""
    return signal.size == 0 or float(np.max(np.abs(signal))) < SILENCE_PEAK


def write_wav(path: str | Path, signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.asarray(signal, dtype=np.float32), sample_rate, subtype="PCM_16", format="WAV")


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    signal, rate = sf.read(str(path), dtype="float32", always_2d=False)
    if signal.ndim > 1:
        signal = signal.mean(axis=1)
    return signal, rate


def iter_frames(path: str | Path, start: float | None = None, end: float | None = None,
                fps: float = 2.0) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time in seconds, RGB uint8 frame [H, W, 3]) sampled every 1/fps s inside [start, end).

    A frame is taken at the first decoded frame at or after each sampling instant, so an utterance
    shorter than 1/fps still yields its first frame.
    """
    lo, hi = _window(start, end)
    path = Path(path)
    if not path.exists():
        raise MediaError("missing_video", path)
    step = 1.0 / fps
    next_t = lo
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("no_video", path)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if lo > 0:
                container.seek(int(lo / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                if t >= hi:
                    break
                if t + 1e-6 < next_t:
                    continue
                yield t, frame.to_ndarray(format="rgb24")
                while next_t <= t + 1e-6:
                    next_t += step
    except av.error.FFmpegError as err:
        raise MediaError("corrupt_video", path, str(err)) from err
