"""Video of the synthetic corpus: frame encoding (IEMOCAP's DivX .avi, MELD's H.264 + AAC .mp4) and the look
of rooms and actors (faces drawn by ercpipe.synthetic.faces).
"""
from __future__ import annotations

import fractions
from dataclasses import replace
from pathlib import Path

import av
import numpy as np

from ercpipe.synthetic.faces import FaceStyle, random_style


def video_frame(image: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuv420p")


def write_video(path: Path, frames: list[av.VideoFrame], codec: str, fps: float, size: tuple[int, int],
                 audio: np.ndarray | None = None, audio_rate: int = 48000) -> None:
    """Encode `frames` (re-used objects are fine: the encoder copies) and optional stereo audio."""
    container_format = "avi" if path.suffix == ".avi" else "mp4"
    rate = int(fps) if float(fps).is_integer() else fractions.Fraction(int(round(fps * 1000)), 1000)
    with av.open(str(path), "w", format=container_format) as out:
        if codec == "libx264":
            stream = out.add_stream(codec, rate=rate, options={"preset": "ultrafast", "crf": "23"})
        else:
            stream = out.add_stream(codec, rate=rate)
            stream.bit_rate = 1_000_000
            stream.codec_context.codec_tag = "DX50"  # the DivX 5 FourCC of IEMOCAP's .avi files
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        audio_stream = None
        if audio is not None:  # FFmpeg's default AAC coder (twoloop) is ~5x slower than "fast"
            audio_stream = out.add_stream("aac", rate=audio_rate, layout="stereo", options={"aac_coder": "fast"})
        for index, frame in enumerate(frames):
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if audio_stream is not None:
            planes = np.ascontiguousarray(np.stack([audio, audio]).astype(np.float32))
            audio_frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout="stereo")
            audio_frame.sample_rate = audio_rate
            audio_frame.pts = 0
            out.mux(audio_stream.encode(audio_frame))
            out.mux(audio_stream.encode())


def wall_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A muted wall colour (rooms of the corpus videos)."""
    base = rng.integers(120, 200, 3)
    return tuple(int(v) for v in base)


def actor_style(rng: np.random.Generator, gender: str) -> FaceStyle:
    """A corpus actor's look: a face from the corpus palette with a hair style drawn for `gender`."""
    style = random_style(rng, palette="corpus")
    styles = ("long", "bun", "short") if gender == "F" else ("short", "bald", "short")
    return replace(style, hair_style=styles[int(rng.integers(len(styles)))])
