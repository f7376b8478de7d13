"""Speech of the synthetic corpus: espeak-ng voices with emotion-dependent prosody, resampled to 16 kHz.

espeak-ng (Debian package `espeak-ng`) speaks each utterance with emotion-dependent pitch, rate and
amplitude around each speaker's own voice (`Voice`); `resample` is a deterministic FFT resampler.
"""
from __future__ import annotations

import io
import math
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from ercpipe.io.media import SAMPLE_RATE
from ercpipe.labels import canonical_emotion


@dataclass(frozen=True)
class Voice:
    """A speaker's espeak-ng voice: variant name, base pitch (0-99) and speaking-rate factor."""

    variant: str
    pitch: float
    rate: float


# canonical emotion -> (pitch offset, words per minute, amplitude 0-200); amplitude <= 150 never clips.
PROSODY: dict[str, tuple[float, float, float]] = {
    "neutral": (0, 160, 100),
    "happy": (14, 172, 118),
    "excited": (28, 198, 145),
    "sad": (-18, 122, 65),
    "anger": (-4, 188, 150),
    "frustration": (-8, 166, 125),
    "surprise": (34, 176, 135),
    "fear": (22, 208, 85),
    "disgust": (-14, 138, 108),
}
_FEMALE_VARIANTS = ("en-us+f3", "en-us+f2", "en-us+f4")
_MALE_VARIANTS = ("en-us", "en-us+m3", "en-us+m4")


def random_voice(rng: np.random.Generator, gender: str) -> Voice:
    variants = _FEMALE_VARIANTS if gender == "F" else _MALE_VARIANTS
    base = 55 if gender == "F" else 40
    return Voice(variants[int(rng.integers(len(variants)))], base + float(rng.uniform(-8, 8)),
                 float(rng.uniform(0.92, 1.08)))


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed: the synthetic corpus speaks its utterances with it. "
                           "Install it (Debian: apt-get install espeak-ng; `make apt-demo` does it) and rerun.")
    return path


def speak(text: str, voice: Voice, emotion: str, rng: np.random.Generator) -> np.ndarray:
    """espeak-ng speech of `text` in `voice` with the emotion's prosody, float32 mono at 16 kHz."""
    pitch_offset, wpm, amplitude = PROSODY[canonical_emotion(emotion)]
    pitch = int(np.clip(round(voice.pitch + pitch_offset + rng.uniform(-3, 3)), 0, 99))
    rate = int(round(wpm * voice.rate * rng.uniform(0.95, 1.05)))
    cmd = [espeak_binary(), "-v", voice.variant, "-p", str(pitch), "-s", str(rate), "-a", str(int(amplitude)),
           "--stdout"]
    # The text goes in on stdin, so nothing in it can be taken for an option.
    result = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=False)
    if result.returncode != 0 or len(result.stdout) < 64:
        raise RuntimeError(f"espeak-ng failed (exit {result.returncode}) on {text!r}: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    # espeak-ng streams a WAV whose header carries a placeholder length; soundfile reads to the end.
    signal, rate_in = sf.read(io.BytesIO(result.stdout), dtype="float32")
    return np.clip(resample(signal, rate_in, SAMPLE_RATE), -1.0, 1.0)


def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by FFT (exact length round(n * rate_out / rate_in)); deterministic.

    The signal is zero-padded to a length whose FFT sizes (in and out) have only small prime factors:
    FFTs of arbitrary (e.g. prime) lengths are orders of magnitude slower.
    """
    if rate_in == rate_out or len(signal) == 0:
        return signal.astype(np.float32)
    n = len(signal)
    n_out = int(round(n * rate_out / rate_in))
    step = rate_in // math.gcd(rate_in, rate_out)  # padded length: a multiple of step, so n_pad_out is whole
    block = step * 256
    n_pad = -(-n // block) * block
    n_pad_out = n_pad * rate_out // rate_in
    spectrum = np.fft.rfft(signal.astype(np.float64), n_pad)
    keep = min(len(spectrum), n_pad_out // 2 + 1)
    out_spectrum = np.zeros(n_pad_out // 2 + 1, dtype=np.complex128)
    out_spectrum[:keep] = spectrum[:keep]
    out = np.fft.irfft(out_spectrum, n_pad_out) * (n_pad_out / n_pad)
    return out[:n_out].astype(np.float32)


def fit(signal: np.ndarray, n: int) -> np.ndarray:
    """`signal` cut or zero-padded to exactly n samples."""
    if len(signal) >= n:
        return signal[:n]
    return np.concatenate([signal, np.zeros(n - len(signal), dtype=np.float32)])
