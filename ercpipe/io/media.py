"""Reading utterance media: audio as 16 kHz mono float32, video as RGB frames sampled at a fixed rate.

PyAV (which bundles its own FFmpeg) decodes everything the datasets ship: IEMOCAP's DivX .avi and
.wav, MELD's H.264/AAC .mp4. No system ffmpeg is needed.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np
import soundfile as sf

from ercpipe.errors import ErcpipeError
from ercpipe.io.atomic import atomic_path, write_failed

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


def require_readable(path: str | Path) -> None:
    """Stop on a media file this user may not read. Flagged as broken instead, it would stay flagged after a chmod,
    which changes neither its size nor its mtime (what tells Snakemake that a raw file changed)."""
    from ercpipe.io.manifest import ManifestError

    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise ManifestError(f"cannot read {path}: permission denied; make it readable (e.g. chmod a+r) and run "
                            "again") from None
    except OSError:
        pass  # missing, a folder, ...: what the caller flags when it opens the file


NOT_RIFF = "not a WAV file (no RIFF/WAVE header)"


def wav_problem(path: str | Path) -> str:
    """What is wrong with a WAV file's RIFF structure, from its first bytes and its size (no decoding), or "":
    empty, not RIFF/WAVE, no data chunk, or a data chunk the file does not hold whole (cut short: a decoder
    reads what is there without an error). Other RIFF variants (RF64) and streamed sizes are not judged."""
    size = Path(path).stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    require_readable(path)
    with open(path, "rb") as fh:
        head = fh.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return NOT_RIFF if head[:4] not in (b"RF64", b"BW64") else ""
        offset = 12
        while offset + 8 <= size:
            fh.seek(offset)
            chunk, length = fh.read(4), int.from_bytes(fh.read(4), "little")
            if chunk == b"data":
                held = size - offset - 8
                if length not in (0, 0xFFFFFFFF) and held < length:
                    return (f"truncated: its header declares {length} bytes of samples, the file holds {held} (cut "
                            "short); replace it with a complete copy")
                return ""
            offset += 8 + length + (length & 1)
    return "no data chunk (no samples)"


def _local(path: str | Path) -> str:
    """The path as FFmpeg must be given a file: absolute, since a relative name whose part before a colon is
    letters or digits ("take:1.wav") is read as a protocol ("Protocol not found")."""
    return os.path.abspath(path)


def probe(path: str | Path) -> MediaInfo:
    """What a media file holds, without raising: used by the readers to flag defects."""
    path = Path(path)
    if not path.exists():
        return MediaInfo(str(path), False, False, False, False, 0.0, "missing")
    if path.is_file() and path.stat().st_size == 0:
        return MediaInfo(str(path), True, False, False, False, 0.0, "empty file (0 bytes)")
    if path.suffix.lower() == ".wav" and path.is_file():
        problem = wav_problem(path)  # checks that it can be read
        # Another format under a .wav name (an MP3 or AIFF renamed) is judged by decoding it, as any other file:
        # flagged as not a WAV, a usable recording lost its audio with probe_media on and kept it with it off.
        if problem and problem != NOT_RIFF:
            return MediaInfo(str(path), True, False, False, False, 0.0, problem)
    elif path.is_file():
        require_readable(path)
    try:
        with av.open(_local(path)) as container:
            has_audio = len(container.streams.audio) > 0
            has_video = len(_picture_streams(container)) > 0
            duration = float(container.duration / av.time_base) if container.duration else 0.0
            # Opening succeeds on some truncated files; decoding one packet proves the file is usable.
            stream = _video_stream(container, path) if has_video else \
                (_audio_stream(container) if has_audio else None)
            if stream is None:
                return MediaInfo(str(path), True, False, False, False, duration, "no streams")
            # (A stream is not touched once its file is closed: PyAV crashes.)
            kind, found = stream.type, next(container.decode(stream), None) is not None
            cut = _cut_short(container, stream) if found else ""
        if not found and kind == "video" and has_audio:
            # A video track without a single frame (Matroska keeps an empty one where MP4 drops it): the clip has
            # no picture, and its sound is checked on its own, from the start (the video's decoding read to the end).
            has_video, kind = False, "audio"
            with av.open(_local(path)) as container:
                stream = _audio_stream(container)
                found = next(container.decode(stream), None) is not None
                cut = _cut_short(container, stream) if found else ""
        if not found:
            return MediaInfo(str(path), True, False, False, False, duration, f"its {kind} track holds no frame")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        # FFmpeg names the absolute path it was given; the path as the dataset gives it reads the same anywhere.
        # PyAV quotes it with repr, whose quote marks depend on the path (a project folder named with a ' gets
        # double quotes): the quoted forms are swapped first, so the text does not depend on where the project is.
        local, given = _local(path), str(path)
        detail = str(err).replace(repr(local), repr(given)).replace(local, given)
        return MediaInfo(str(path), True, False, False, False, 0.0, f"{type(err).__name__}: {detail}")
    if cut:
        return MediaInfo(str(path), True, False, has_audio, has_video, duration, cut)
    return MediaInfo(str(path), True, True, has_audio, has_video, duration)


def empty_window_problem(path: str | Path, start: float, end: float, kind: str) -> tuple[str, str] | None:
    """Why a window of `path` gave no samples or frames when the window or the file is at fault, as (reason,
    detail): an empty window (bad_time), a file cut short, or a window that starts after the file ends
    (corrupt_{kind}, as the readers call it when they probe). None when neither explains it (the file holds
    nothing there)."""
    if not math.isnan(start) and not math.isnan(end) and end <= start:
        return "bad_time", (f"{path}: the window [{start}, {end}) s is empty (its end is not after its start; the "
                            "row is flagged bad_time): fix the times")
    info = probe(path)
    if not info.decodable:
        return f"corrupt_{kind}", f"{path}: {info.error}"
    if not math.isnan(start) and 0 < info.duration <= start:
        return f"corrupt_{kind}", (f"{path}: the utterance starts at {start} s, after the end of the file "
                                   f"({info.duration:.2f} s); check its times")
    return None


def _cut_short(container, stream) -> str:
    """Why the file was cut short, or "": its header or index gives a length (the stream's duration, an MP4's
    "faststart" index; else the container's, as Matroska and WebM give it) while its data ends more than a
    second before it. Opening and decoding the first packet succeed on such a file, and decoding later yields
    fewer frames without an error. A file without a length, or a seek the container cannot do, tells nothing
    ("")."""
    if stream.time_base is None:
        return ""
    if stream.duration:
        length, what = float(stream.duration * stream.time_base), f"its index lists {{:.2f}} s of {stream.type}"
    elif container.duration:
        length, what = float(container.duration / av.time_base), "its header gives {:.2f} s"
    else:
        return ""
    if length <= 1.0:  # nothing can end more than a second early (a still image read as a one-frame video)
        return ""
    origin = _origin(container)
    try:
        container.seek(int((max(0.0, length - 0.5) + origin) / stream.time_base), stream=stream, any_frame=True,
                       backward=True)
        for packet in container.demux():
            # A container without an index to seek by (a Matroska file that lost its cues with its tail) lands
            # on the last data it holds: where that data ends is what tells.
            if packet.pts is not None and packet.size and packet.time_base is not None \
                    and float(packet.pts * packet.time_base) - origin >= length - 1.0:
                return ""
    except (av.error.FFmpegError, OSError, ValueError):
        return ""
    return (f"truncated: {what.format(length)}, but the file's data ends more than a second before that (the "
            "file was cut short); replace it with a complete copy")


def _window(start: float | None, end: float | None) -> tuple[float, float]:
    lo = 0.0 if start is None or (isinstance(start, float) and math.isnan(start)) else float(start)
    hi = math.inf if end is None or (isinstance(end, float) and math.isnan(end)) else float(end)
    return lo, hi


def _seconds(pts: int, stream, origin: float) -> float:
    """A timestamp of `stream` in seconds from the file's origin (_origin)."""
    return float(pts * stream.time_base) - origin


def _origin(container) -> float:
    """Where second 0 of the file is: its start time when positive. Stream times are read from there, so a
    window means the same for audio and video, and an MP3 (whose start time is its encoder delay, already
    removed from the decoded samples) or an MPEG-TS (whose clock starts anywhere) is timed like a WAV."""
    start = container.start_time
    return max(0.0, float(start / av.time_base)) if start is not None else 0.0


# Audio windows starting later than this are decoded from a seek to AUDIO_SEEK_MARGIN seconds before them.
AUDIO_SEEK_AFTER = 5.0
AUDIO_SEEK_MARGIN = 2.0
# Decoders whose frame times after a seek are not where their samples are: Vorbis (libvorbis switches between
# short and long blocks, and FFmpeg's first frame after a seek was 128 samples off, moving some windows by 8 ms).
# Their windows are decoded from the start.
SEEK_INEXACT_CODECS = frozenset({"vorbis"})


def iter_audio(path: str | Path, start: float | None = None, end: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """The [start, end) window of the first audio stream, as mono float32 blocks at `sample_rate`.

    The window is cut in samples counted from the first decoded frame's time (from the file's origin,
    _origin). A window that starts after AUDIO_SEEK_AFTER seconds is decoded from a seek to AUDIO_SEEK_MARGIN
    before it (an utterance late in an hour-long recording used to be decoded from the file's start, once per
    utterance): the same samples for PCM; for a compressed track the decoder settles within its first frames
    after the seek, long before the window, and the resampler's phase may move by a fraction of a sample
    (Vorbis, whose frame times after a seek are off, is decoded from the start: SEEK_INEXACT_CODECS).
    Channels are averaged (FFmpeg's own mono downmix adds them with gains that clip a loud stereo or 5.1 track). Blocks are the
    resampler's frames (a few ms each), so a long file is never held whole. Non-finite samples (a damaged
    float WAV) in the window are corrupt_audio.
    """
    lo, hi = _window(start, end)
    path = Path(path)
    if not path.exists():
        raise MediaError("missing_audio", path)
    position = 0
    i0 = i1 = None
    try:
        with av.open(_local(path)) as container:
            if not container.streams.audio:
                raise MediaError("no_audio_stream", path)
            stream = _audio_stream(container)
            origin = _origin(container)
            resampler, setup = None, None

            def window(frames):
                nonlocal position
                for out in frames:
                    block = out.to_ndarray().mean(axis=0, dtype=np.float32)
                    begin, position = position, position + block.size  # this block: samples [begin, position)
                    a, b = max(i0, begin), position if i1 is None else min(i1, position)
                    if b > a:
                        part = block[a - begin:b - begin]
                        # Only the window's own samples: a damaged stretch elsewhere in the recording is not this
                        # utterance's (whether it was decoded depended on where the seek landed).
                        if not np.isfinite(part).all():
                            at = first_t + (a + int(np.argmin(np.isfinite(part)))) / sample_rate
                            raise MediaError("corrupt_audio", path, f"non-finite samples (NaN or inf) at {at:.3f} s")
                        yield part

            seek = lo > AUDIO_SEEK_AFTER and stream.codec_context.name not in SEEK_INEXACT_CODECS
            frames = _decode_from(container, stream, lo - AUDIO_SEEK_MARGIN, origin) if seek \
                else container.decode(stream)
            first_t = 0.0
            for i, frame in enumerate(frames):
                if i0 is None:  # the window is fixed by the first frame's time
                    first_t = max(0.0, _seconds(frame.pts, stream, origin)) if frame.pts is not None else 0.0
                    i0 = max(0, int(round((lo - first_t) * sample_rate)))
                    i1 = None if math.isinf(hi) else max(i0, int(round((hi - first_t) * sample_rate)))
                if frame.pts is not None and _seconds(frame.pts, stream, origin) >= hi:
                    break
                # A stream may change its channel layout or rate midway (a TV recording's 5.1 programme after a
                # stereo advert); a resampler takes one input setup, so each setup gets its own, flushed in turn.
                frame_setup = (frame.format.name, frame.layout.name, frame.sample_rate)
                if frame_setup != setup:
                    if resampler is not None:
                        yield from window(resampler.resample(None))
                    resampler, setup = av.AudioResampler(format="fltp", rate=sample_rate), frame_setup
                yield from window(resampler.resample(frame))
            if resampler is not None:
                yield from window(resampler.resample(None))
    except av.error.FFmpegError as err:
        raise MediaError("corrupt_audio", path, str(err)) from err


def load_audio(path: str | Path, start: float | None = None, end: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole [start, end) window of iter_audio as one mono float32 array."""
    blocks = list(iter_audio(path, start, end, sample_rate))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


# A signal whose peak amplitude is below this (about -100 dBFS, under one 16-bit step) is silence.
SILENCE_PEAK = 1e-5


def is_silent(signal: np.ndarray) -> bool:
    """True for an empty signal or digital silence (no sample above SILENCE_PEAK)."""
    return signal.size == 0 or float(np.max(np.abs(signal))) < SILENCE_PEAK


def write_wav(path: str | Path, signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    with atomic_path(path) as tmp:
        try:
            sf.write(str(tmp), np.asarray(signal, dtype=np.float32), sample_rate, subtype="PCM_16", format="WAV")
        except sf.LibsndfileError as err:
            raise sndfile_write_error(Path(path), tmp, err) from err


# libsndfile's code for a failed system call (a full disk, a file size limit: "System error.").
SNDFILE_SYSTEM_ERROR = 2


def sndfile_write_error(final: Path, tmp: Path, err: "sf.LibsndfileError") -> Exception:
    """What to raise for libsndfile's error while writing `final`: its "System error." (which names no file) as
    write_failed's message; any other error (a bad sample rate) as it is."""
    return write_failed(final, tmp, err) if err.code == SNDFILE_SYSTEM_ERROR else err


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    signal, rate = sf.read(str(path), dtype="float32", always_2d=False)
    if signal.ndim > 1:
        signal = signal.mean(axis=1)
    return signal, rate


class _SamplingGrid:
    """Sampling instants lo, lo + 1/fps, ...: a frame is taken when it is the first at or after the next
    instant (one rule for decoded frames and for packet timestamps, so counts agree)."""

    def __init__(self, lo: float, fps: float):
        self.next_t = lo
        self.step = 1.0 / fps

    def take(self, t: float) -> bool:
        if t + 1e-6 < self.next_t:
            return False
        while self.next_t <= t + 1e-6:
            self.next_t += self.step
        return True


def _audio_stream(container):
    """The sound: the track marked default where a file has several (a second language, a silent or commentary
    track first), else the first, as a player would choose."""
    streams = list(container.streams.audio)
    return next((a for a in streams if a.disposition & av.stream.Disposition.default), streams[0])


def _picture_streams(container) -> list:
    """The video streams that are pictures of the recording: not a cover image (an MP3's or M4A's album art, a
    thumbnail track), which is one still, not the utterance's faces."""
    return [v for v in container.streams.video if not v.disposition & av.stream.Disposition.attached_pic]


def _video_stream(container, path: Path):
    """The picture: the largest video stream that is not a cover image (a file can carry a thumbnail
    track or a second, smaller camera before the main one)."""
    streams = _picture_streams(container)
    if not streams:
        raise MediaError("no_video", path)
    return max(streams, key=lambda v: ((v.codec_context.width or 0) * (v.codec_context.height or 0), -v.index))


# FFmpeg's AVFMT_NOTIMESTAMPS: a raw elementary stream (.h264, .hevc, .m4v, as cameras and DVRs write them), whose
# frames carry no timestamps and which cannot be seeked; its frames are timed by their index at its frame rate.
_NO_TIMESTAMPS = 0x0080


def _frame_rate_if_untimed(container, stream, path: Path) -> float | None:
    """The frame rate by which frames are timed, for a file whose frames carry no timestamps; None otherwise."""
    if not container.format.flags & _NO_TIMESTAMPS:
        return None
    rate = stream.guessed_rate or stream.average_rate
    if not rate:
        raise MediaError("corrupt_video", path, "its frames carry no timestamps and it gives no frame rate (a raw "
                                                "video stream): put it in a container, e.g. `ffmpeg -framerate FPS "
                                                "-i FILE -c copy FILE.mp4` with the camera's frame rate")
    return float(rate)


def _decode_from(container, stream, lo: float, origin: float):
    """Decoded frames of `stream` from the last one at or before `lo` seconds (after `origin`) on. A seek lands
    on a keyframe at or before its target in most containers; in some (MPEG-TS) it can land after it, past
    frames the window needs, so the target moves back (1, 2, 4 ... s) until the first frame is not after lo."""
    target, back = lo, 1.0
    while True:
        at_start = target <= 0
        if at_start:
            container.seek(0, backward=True)  # the file's first packet, whatever its clock says
        else:
            container.seek(int((target + origin) / stream.time_base), stream=stream, backward=True)
        frames = container.decode(stream)
        first = next((f for f in frames if f.pts is not None), None)
        if first is None:
            return
        if at_start or _seconds(first.pts, stream, origin) <= lo:
            yield first
            yield from frames
            return
        target, back = max(0.0, lo - back), back * 2


def iter_frames(path: str | Path, start: float | None = None, end: float | None = None,
                fps: float = 2.0, keep: Callable[[int], bool] | None = None,
                ) -> Iterator[tuple[float, np.ndarray | None]]:
    """Yield (time in seconds, RGB uint8 frame [H, W, 3]) sampled every 1/fps s inside [start, end).

    A frame is taken at the first decoded frame at or after each sampling instant, so an utterance
    shorter than 1/fps still yields its first frame. A window that falls between two frames (a camera at a
    low or variable frame rate) yields the frame on screen at its start, the last one before it, with that
    frame's time. With `keep`, the i-th sampled frame (from 0) is converted to RGB only where keep(i) is
    true and is None otherwise (its time is still yielded).
    """
    lo, hi = _window(start, end)
    path = Path(path)
    if not path.exists():
        raise MediaError("missing_video", path)
    if hi <= lo:
        return  # an empty window has no frame, not even the one on screen at its start
    grid = _SamplingGrid(lo, fps)
    index = 0
    try:
        with av.open(_local(path)) as container:
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"
            origin = _origin(container)
            rate = _frame_rate_if_untimed(container, stream, path)
            # A file without timestamps cannot be seeked: it is decoded from its start.
            frames = _decode_from(container, stream, lo, origin) if lo > 0 and rate is None else \
                container.decode(stream)
            before = None  # (time, frame) of the last frame before the window
            for decoded, frame in enumerate(frames):
                if frame.pts is None and rate is None:
                    continue
                t = decoded / rate if frame.pts is None else _seconds(frame.pts, stream, origin)
                if t >= hi:
                    if index == 0 and before is not None:  # the window lies between two frames
                        t, frame = before
                        yield t, (_upright(frame, stream.sample_aspect_ratio) if keep is None or keep(0) else None)
                    break
                if not grid.take(t):
                    if t < lo:
                        before = (t, frame)
                    continue
                yield t, (_upright(frame, stream.sample_aspect_ratio) if keep is None or keep(index) else None)
                index += 1
    except av.error.FFmpegError as err:
        raise MediaError("corrupt_video", path, str(err)) from err


def _upright(frame, sample_aspect=None) -> np.ndarray:
    """The frame as RGB, shaped as a player shows it: an anamorphic video (DVD, broadcast) stores pixels wider or
    narrower than square (`sample_aspect`, the stream's sample aspect ratio), stretched back here (the longer
    side grows, so nothing is lost), and a phone video stores its pictures sideways with a display rotation
    (PyAV's frame.rotation, degrees counterclockwise). A squeezed or sideways face is found less often and
    embeds as another face."""
    width, height = frame.width, frame.height
    if sample_aspect and sample_aspect > 0 and sample_aspect != 1:
        if sample_aspect > 1:
            width = int(round(width * sample_aspect))
        else:
            height = int(round(height / sample_aspect))
    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
    orientation = _display_orientation(frame)
    if orientation is not None:
        transpose, flip_rows, flip_columns = orientation
        if not (transpose or flip_rows or flip_columns):
            return rgb
        shown = rgb.transpose(1, 0, 2) if transpose else rgb
        return np.ascontiguousarray(shown[::-1 if flip_rows else 1, ::-1 if flip_columns else 1])
    turns = int(round(getattr(frame, "rotation", 0) / 90)) % 4  # a rotation that is not a quarter turn: the nearest
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def _display_orientation(frame) -> tuple[bool, bool, bool] | None:
    """How the frame's display matrix (the track header's; a phone's portrait video, a mirrored front camera)
    turns the stored picture into the shown one, as (transpose, flip rows, flip columns); None for a matrix that is
    not a quarter turn with or without a mirror. A stored pixel (column p, row q) is shown at (a p + c q, b p + d q)
    (libavutil/display.h). frame.rotation alone reads a mirror as a half turn, so a mirrored video came out upside
    down and its faces were not found."""
    for data in getattr(frame, "side_data", ()):
        if str(getattr(data, "type", "")).rsplit(".", 1)[-1] != "DISPLAYMATRIX":
            continue
        a, b, _, c, d, *_ = struct.unpack("=9i", bytes(data))
        if a == d == 0 and b and c:  # shown column from the stored row, shown row from the stored column
            return True, b < 0, c < 0
        if b == c == 0 and a and d:
            return False, d < 0, a < 0
        return None
    return False, False, False


def count_sampled_frames(path: str | Path, start: float | None = None, end: float | None = None,
                         fps: float = 2.0) -> int | None:
    """How many frames iter_frames will yield, from the packets' timestamps (demuxed, not decoded).

    None where the packets cannot tell (a packet without a timestamp, a read error: iter_frames then
    reports the defect). A decoder that drops or adds frames makes the real count differ; callers
    that need the exact count check it against what iter_frames yields.
    """
    lo, hi = _window(start, end)
    path = Path(path)
    if not path.exists():
        return None
    if hi <= lo:
        return 0
    times: list[float] = []
    try:
        with av.open(_local(path)) as container:
            stream = _video_stream(container, path)
            origin = _origin(container)
            if lo > 0:  # packets from a keyframe at or before lo; every later one is counted by its time
                container.seek(int((lo + origin) / stream.time_base), stream=stream, backward=True)
            for packet in container.demux(stream):
                if packet.size == 0 and packet.pts is None:
                    continue  # the demuxer's final flush packet
                if packet.pts is None:
                    return None
                times.append(_seconds(packet.pts, stream, origin))
                if packet.dts is not None and _seconds(packet.dts, stream, origin) >= hi:
                    break  # decoding order: every later packet has dts, hence pts, >= hi
    except (av.error.FFmpegError, MediaError, OSError, ValueError, UnicodeDecodeError):
        return None
    grid = _SamplingGrid(lo, fps)
    count = sum(1 for t in sorted(times) if t < hi and grid.take(t))
    if count == 0 and any(t >= hi for t in times) and any(t < lo for t in times):
        return 1  # the window lies between two frames: iter_frames yields the one before it
    return count
