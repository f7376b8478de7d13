"""The embedded synthetic raw corpus: IEMOCAP- and MELD-shaped trees, so the pipeline runs with no dataset.

Every modality carries the label, so a model can learn it:

* text: filler sentences plus, for `hint_probability` of the utterances, a sentence from a small
  emotion lexicon (learnable, not trivially perfect);
* speech: espeak-ng (Debian package `espeak-ng`) with emotion-dependent pitch, rate and amplitude
  around each speaker's own voice, resampled to 16 kHz;
* video: drawn faces (ercpipe.datasets.drawing) whose expression shows the emotion, found by the real
  MTCNN.

Generation is deterministic: the same settings give byte-identical files (text, wav, avi, mp4 with
this PyAV/FFmpeg build); every random choice comes from numpy generators seeded by `seed` and the
item's position, never from the order of work.

IEMOCAP layout (`generate_iemocap`), as IEMOCAP_full_release ships it::

    Session{N}/dialog/wav/{dialog}.wav                   the conversation, 16 kHz mono PCM16
    Session{N}/dialog/avi/DivX/{dialog}.avi              MPEG-4 part 2 (DX50) .avi, 720x480, both actors
    Session{N}/dialog/transcriptions/{dialog}.txt        `Ses01F_impro01_F000 [006.2901-008.2357]: text`
    Session{N}/dialog/EmoEvaluation/{dialog}.txt         header, blank-line separated blocks
    Session{N}/sentences/wav/{dialog}/{utt}.wav          each utterance, 16 kHz mono PCM16

Dialogue names come from the standard split file (sessions 1-4: train + valid, session 5: test), so the
standard split applies. Each session has one female and one male actor; utterance ids carry the speaker's
gender and a per-speaker counter (F000, M000, F001 ...). Each sentence wav is exactly the
[start, end] slice of the dialogue wav. In the video each actor sits on the half given by `sides`; during an
utterance the speaker's face shows its emotion, the listener's is neutral.
As in the real data, some utterances are labelled with a class outside the 6 (`dropped_labels`, one
utterance each, added to the first dialogues in split order) and `unevaluated_turns` transcript lines
(`..._MXX0` style) have no EmoEvaluation block; the reader must drop and record them.

MELD layout (`generate_meld`), as MELD.Raw ships it::

    {train,dev,test}_sent_emo.csv        real header and columns, CRLF lines, curly quotes and ellipses,
                                         times in both formats ("00:16:16,059" and "0:13:42,477")
    train_splits/dia{D}_utt{U}.mp4       H.264 640x360 + AAC; the speaker's face large and central,
    dev_splits_complete/...              sometimes a smaller neutral listener off-centre
    output_repeated_splits_test/...

Deliberate MELD defects (settings key `defects`, listed by `meld_defects`; no sidecar file in the tree):
`missing_clip` (CSV row present, file absent), `corrupt_clip` (file truncated to a third: no moov atom,
cannot be opened), `no_audio_stream` (video track only). Defaults: train/dia1_utt2, dev/dia0_utt1,
test/dia1_utt0. A value null disables that defect.

Settings: DEFAULT_SETTINGS[format] lists every key with its default, SETTINGS_DOC[format] says what each
means, LARGE_SETTINGS[format] is a ~20x larger preset for benchmarks (`preset(fmt, "large")`).
Unknown keys raise ValueError naming the key.
"""
from __future__ import annotations

import copy
import csv
import fractions
import io
import json
import logging
import math
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ercpipe.datasets import drawing
from ercpipe.io.atomic import atomic_dir
from ercpipe.io.media import SAMPLE_RATE, write_wav
from ercpipe.labels import IEMOCAP_CLASSES, MELD_CLASSES, canonical_emotion

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- settings

DEFAULT_SETTINGS: dict[str, dict] = {
    "iemocap": {
        "seed": 0,
        "dialogues": {"train": 4, "valid": 2, "test": 2},
        "utterances_per_dialogue": [3, 8],
        "dropped_labels": ["xxx", "oth", "sur"],
        "unevaluated_turns": 1,
        "hint_probability": 0.8,
        "lead_in_seconds": [1.0, 3.0],
        "gap_seconds": [0.2, 1.0],
        "fps": 12,
        "frame_size": [720, 480],
        "face_height": 170,
        "sides": {"F": "left", "M": "right"},
    },
    "meld": {
        "seed": 0,
        "dialogues": {"train": 4, "dev": 2, "test": 2},
        "utterances_per_dialogue": [3, 8],
        "speakers_per_dialogue": [2, 4],
        "hint_probability": 0.8,
        "gap_seconds": [0.1, 0.8],
        "one_digit_hour_fraction": 0.3,
        "fps": 15,
        "frame_size": [640, 360],
        "face_height": 170,
        "second_face_probability": 0.5,
        "audio_rate": 48000,
        "defects": {"missing_clip": "train/dia1_utt2", "corrupt_clip": "dev/dia0_utt1",
                    "no_audio_stream": "test/dia1_utt0"},
    },
}

SETTINGS_DOC: dict[str, dict[str, str]] = {
    "iemocap": {
        "seed": "integer; every random choice derives from it",
        "dialogues": "{train, valid, test}: dialogues per split, names drawn from the standard split file "
                     "(at most 108 / 12 / 31)",
        "utterances_per_dialogue": "[min, max] 6-class utterances per dialogue (inclusive)",
        "dropped_labels": "labels outside the 6 classes (xxx, oth, sur, fea, dis), one extra utterance each",
        "unevaluated_turns": "extra transcript lines (..._MXX0) with no EmoEvaluation block",
        "hint_probability": "share of utterances whose text carries an emotion hint sentence",
        "lead_in_seconds": "[min, max] silence before the first utterance of a dialogue",
        "gap_seconds": "[min, max] silence between utterances",
        "fps": "dialogue video frame rate",
        "frame_size": "[width, height] of the dialogue video",
        "face_height": "drawn head height in pixels",
        "sides": "{F: left|right, M: left|right}: which half of the video shows each actor",
    },
    "meld": {
        "seed": "integer; every random choice derives from it",
        "dialogues": "{train, dev, test}: dialogues per split",
        "utterances_per_dialogue": "[min, max] utterances per dialogue (inclusive)",
        "speakers_per_dialogue": "[min, max] distinct speakers per dialogue (inclusive)",
        "hint_probability": "share of utterances whose text carries an emotion hint sentence",
        "gap_seconds": "[min, max] episode time between utterances",
        "one_digit_hour_fraction": "share of CSV rows with times like 0:13:42,477 (the rest 00:13:42,477); "
                                   "each CSV gets at least one of each when it has two rows or more",
        "fps": "clip frame rate",
        "frame_size": "[width, height] of the clips",
        "face_height": "the speaker's drawn head height in pixels",
        "second_face_probability": "share of clips with a smaller neutral listener off-centre",
        "audio_rate": "AAC sample rate of the clips (stereo)",
        "defects": "{missing_clip, corrupt_clip, no_audio_stream}: 'split/dia{D}_utt{U}' or null; "
                   "U must be below utterances_per_dialogue[0] so the row always exists",
    },
}

LARGE_SETTINGS: dict[str, dict] = {  # ~20x the demo corpus, for benchmarks
    "iemocap": {"dialogues": {"train": 100, "valid": 12, "test": 31}},
    "meld": {"dialogues": {"train": 100, "dev": 20, "test": 40}},
}

IEMOCAP_SPLITS = ("train", "valid", "test")
MELD_SPLITS = ("train", "dev", "test")
MELD_CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
MELD_CSV_HEADER = ("Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
                   "Season", "Episode", "StartTime", "EndTime")
MELD_DEFECTS = ("missing_clip", "corrupt_clip", "no_audio_stream")
IEMOCAP_EXTRA_LABELS = ("xxx", "oth", "sur", "fea", "dis")

_RANGE_KEYS = ("utterances_per_dialogue", "speakers_per_dialogue", "lead_in_seconds", "gap_seconds")
_DEFECT_TARGET = re.compile(r"^(train|dev|test)/dia(\d+)_utt(\d+)$")


def preset(fmt: str, name: str = "demo") -> dict:
    """Full settings of a named preset: 'demo' (the defaults) or 'large' (~20x more dialogues)."""
    if name == "demo":
        return resolve_settings(fmt, {})
    if name == "large":
        return resolve_settings(fmt, LARGE_SETTINGS[_check_format(fmt)])
    raise ValueError(f"unknown synthetic corpus preset {name!r}; use 'demo' or 'large'")


def _check_format(fmt: str) -> str:
    if fmt not in DEFAULT_SETTINGS:
        raise ValueError(f"unknown synthetic corpus format {fmt!r}; use one of {sorted(DEFAULT_SETTINGS)}")
    return fmt


def resolve_settings(fmt: str, settings: dict | None) -> dict:
    """Defaults overlaid with `settings` (nested dicts merged key by key), validated.

    ValueError names the first unknown or invalid key (e.g. 'synthetic.meld.defects.missing').
    """
    defaults = DEFAULT_SETTINGS[_check_format(fmt)]
    settings = dict(settings or {})
    out = copy.deepcopy(defaults)
    for key, value in settings.items():
        where = f"synthetic.{fmt}.{key}"
        if key not in defaults:
            raise ValueError(f"unknown setting {where!r}; known keys: {sorted(defaults)}")
        if isinstance(defaults[key], dict):
            if value is None and key == "defects":
                out[key] = {name: None for name in MELD_DEFECTS}
                continue
            if not isinstance(value, dict):
                raise ValueError(f"{where} must be a mapping with keys {sorted(defaults[key])}, got {value!r}")
            for sub in value:
                if sub not in defaults[key]:
                    raise ValueError(f"unknown setting '{where}.{sub}'; known keys: {sorted(defaults[key])}")
            out[key].update(value)
        else:
            out[key] = value
    _validate(fmt, out)
    return out


def _fail(fmt: str, key: str, message: str) -> None:
    raise ValueError(f"synthetic.{fmt}.{key}: {message}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _validate(fmt: str, s: dict) -> None:
    if not _is_int(s["seed"]) or s["seed"] < 0:
        _fail(fmt, "seed", f"must be a non-negative integer, got {s['seed']!r}")
    for split, count in s["dialogues"].items():
        if not _is_int(count) or count < 0:
            _fail(fmt, f"dialogues.{split}", f"must be a non-negative integer, got {count!r}")
    for key in _RANGE_KEYS:
        if key not in s:
            continue
        value = s[key]
        integer = key in ("utterances_per_dialogue", "speakers_per_dialogue")
        ok = (isinstance(value, (list, tuple)) and len(value) == 2
              and all(_is_int(v) if integer else _is_number(v) for v in value) and 0 <= value[0] <= value[1])
        if not ok or (integer and value[0] < 1):
            kind = "integers >= 1" if integer else "numbers >= 0"
            _fail(fmt, key, f"must be [min, max] with min <= max, {kind}; got {value!r}")
    if "speakers_per_dialogue" in s and s["speakers_per_dialogue"][0] < 2:
        _fail(fmt, "speakers_per_dialogue", "a dialogue needs at least 2 speakers")
    for key in ("hint_probability", "second_face_probability", "one_digit_hour_fraction"):
        if key in s and (not _is_number(s[key]) or not 0 <= s[key] <= 1):
            _fail(fmt, key, f"must be a number in [0, 1], got {s[key]!r}")
    if not _is_number(s["fps"]) or not 1 <= s["fps"] <= 60:
        _fail(fmt, "fps", f"must be a number in [1, 60], got {s['fps']!r}")
    size = s["frame_size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v >= 64 and v % 2 == 0
                                                                       for v in size)):
        _fail(fmt, "frame_size", f"must be [width, height], even integers >= 64, got {size!r}")
    if not _is_int(s["face_height"]) or not 40 <= s["face_height"] <= size[1]:
        _fail(fmt, "face_height", f"must be an integer from 40 to the frame height {size[1]}, got {s['face_height']!r}")
    if fmt == "iemocap":
        _validate_iemocap(s)
    else:
        _validate_meld(s)


def _validate_iemocap(s: dict) -> None:
    bad = [label for label in s["dropped_labels"] if label not in IEMOCAP_EXTRA_LABELS] \
        if isinstance(s["dropped_labels"], (list, tuple)) else [s["dropped_labels"]]
    if bad:
        _fail("iemocap", "dropped_labels", f"{bad} are not IEMOCAP labels outside the 6 classes "
                                           f"{list(IEMOCAP_EXTRA_LABELS)}")
    if not _is_int(s["unevaluated_turns"]) or s["unevaluated_turns"] < 0:
        _fail("iemocap", "unevaluated_turns", f"must be a non-negative integer, got {s['unevaluated_turns']!r}")
    sides = s["sides"]
    if sorted(sides.values()) != ["left", "right"]:
        _fail("iemocap", "sides", f"must put one actor left and one right, e.g. {{F: left, M: right}}; got {sides!r}")
    if s["face_height"] * 0.8 > s["frame_size"][0] / 2:
        _fail("iemocap", "face_height", "two faces side by side must fit in the frame width")


def _validate_meld(s: dict) -> None:
    if not _is_int(s["audio_rate"]) or s["audio_rate"] not in (16000, 22050, 24000, 32000, 44100, 48000):
        _fail("meld", "audio_rate", f"must be one of 16000, 22050, 24000, 32000, 44100, 48000; got {s['audio_rate']!r}")
    targets: dict[str, str] = {}
    for defect, target in s["defects"].items():
        if target is None:
            continue
        match = _DEFECT_TARGET.match(str(target))
        if not match:
            _fail("meld", f"defects.{defect}", f"must look like 'train/dia1_utt2' (split train|dev|test) or be "
                                               f"null; got {target!r}")
        split, dia, utt = match.group(1), int(match.group(2)), int(match.group(3))
        if dia >= s["dialogues"][split]:
            _fail("meld", f"defects.{defect}", f"{target!r}: split {split} has only {s['dialogues'][split]} "
                                               "dialogue(s); pick a smaller dialogue number or null")
        if utt >= s["utterances_per_dialogue"][0]:
            _fail("meld", f"defects.{defect}", f"{target!r}: utterance {utt} may not exist; pick one below "
                                               f"utterances_per_dialogue[0] = {s['utterances_per_dialogue'][0]}")
        if target in targets.values():
            _fail("meld", f"defects.{defect}", f"{target!r} is already used by another defect")
        targets[defect] = target


def meld_defects(settings: dict | None) -> dict[str, str]:
    """{defect: clip path relative to the MELD root} for the enabled defects, e.g.
    {'missing_clip': 'train_splits/dia1_utt2.mp4', ...}."""
    s = resolve_settings("meld", settings)
    out: dict[str, str] = {}
    for defect in MELD_DEFECTS:
        target = s["defects"][defect]
        if target is not None:
            split, name = target.split("/")
            out[defect] = f"{MELD_CLIP_DIRS[split]}/{name}.mp4"
    return out


# --------------------------------------------------------------------------------------------- language

FILLERS: tuple[str, ...] = (
    "I went by the post office on the way here.",
    "We should look at the schedule for tomorrow.",
    "The meeting got moved to four o'clock.",
    "My brother called me this morning.",
    "There's a new place on the corner of the street.",
    "I left my keys on the kitchen table.",
    "She said the train was running late again.",
    "Can you tell me what time it is?",
    "We need to talk about the apartment.",
    "I've been thinking about the trip.",
    "He told me about the job interview.",
    "The car is parked across the street.",
    "I didn't expect to see you here today.",
    "Let's go over the plan one more time.",
    "They're coming over for dinner on Friday.",
    "You know what I mean about the letter.",
    "I have to finish the report by Monday.",
    "We watched the game at Joe's place.",
    "It's the same thing every single week.",
    "The phone rang twice before I picked up.",
    "I was reading the paper in the lobby.",
    "Did you get the message I sent you?",
    "We could take the bus instead.",
    "The coffee machine is on the second floor.",
)

HINTS: dict[str, tuple[str, ...]] = {
    "neutral": ("Okay, that's fine.", "Sure, I can do that.", "Alright, I see.", "Yes, that works for me.",
                "I understand.", "Fair enough."),
    "happy": ("I'm really glad about that.", "That makes me so happy.", "What a lovely thing to hear.",
              "I'm pleased, honestly.", "That's so sweet of you.", "I feel good about this."),
    "excited": ("This is amazing, I can't wait!", "Oh wow, that's fantastic!", "I'm so thrilled!",
                "That's incredible news!", "This is the best day ever!", "Yes! We did it!"),
    "sad": ("I miss her so much.", "I feel so lonely now.", "It breaks my heart.", "I'm just so sad about it.",
            "Nothing will ever be the same.", "I can't stop crying."),
    "anger": ("I'm absolutely furious with you!", "Don't you dare talk to me like that!", "I hate this so much!",
              "Get out of my face!", "This is outrageous!", "How dare you!"),
    "frustration": ("This is so annoying.", "Why does this always happen to me?", "I'm sick of waiting.",
                    "Nothing ever works here.", "I've told you this a hundred times.", "This is useless."),
    "surprise": ("What? Really?", "No way, are you serious?", "I can't believe it!", "Wait, what just happened?",
                 "You're kidding me!", "Whoa, I didn't see that coming!"),
    "fear": ("I'm really scared.", "Please, I'm so afraid.", "Something terrible is going to happen.",
             "I'm terrified of it.", "Did you hear that noise?", "I don't want to be alone here."),
    "disgust": ("Ew, that's disgusting.", "That's so gross.", "Yuck, get it away from me.",
                "That's revolting.", "I think I'm going to be sick.", "That smells awful."),
}

_MELD_OPENERS = ("Oh, ", "Well, ", "Hey, ", "Okay, ", "Y’know, ", "Look, ")


def make_text(rng: np.random.Generator, emotion: str | None, hint_probability: float) -> str:
    """One or two filler sentences, plus (with `hint_probability`) a hint sentence for `emotion`."""
    parts = [FILLERS[int(rng.integers(len(FILLERS)))]]
    if rng.random() < 0.3:
        parts.append(FILLERS[int(rng.integers(len(FILLERS)))])
    if emotion is not None and rng.random() < hint_probability:
        hints = HINTS[canonical_emotion(emotion)]
        parts.insert(int(rng.integers(len(parts) + 1)), hints[int(rng.integers(len(hints)))])
    return " ".join(parts)


def meld_style_text(text: str, rng: np.random.Generator) -> str:
    """The real MELD CSVs' typography: curly apostrophes, an opener or a false start, trailing ellipses."""
    text = text.replace("'", "’")
    roll = rng.random()
    if roll < 0.25:
        opener = _MELD_OPENERS[int(rng.integers(len(_MELD_OPENERS)))]
        keep_case = text.startswith(("I ", "I’"))
        text = opener + (text if keep_case else text[0].lower() + text[1:])
    elif roll < 0.35:
        first = text.partition(" ")[0]
        text = f"{first}— {text}"  # a false start: "I— I went ..."
    if text.endswith(".") and rng.random() < 0.2:
        text = text[:-1] + "…"
    return text


# ------------------------------------------------------------------------------------------------ speech

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


# ------------------------------------------------------------------------------------------------- video

def _video_frame(image: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuv420p")


def _write_video(path: Path, frames: list[av.VideoFrame], codec: str, fps: float, size: tuple[int, int],
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


def _wall_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A muted wall colour (rooms of the corpus videos)."""
    base = rng.integers(120, 200, 3)
    return tuple(int(v) for v in base)


def _actor_style(rng: np.random.Generator, gender: str) -> drawing.FaceStyle:
    style = drawing.random_style(rng, palette="corpus")
    styles = ("long", "bun", "short") if gender == "F" else ("short", "bald", "short")
    return replace(style, hair_style=styles[int(rng.integers(len(styles)))])


# ------------------------------------------------------------------------------------------------ labels

def _label_sequence(rng: np.random.Generator, classes: tuple[str, ...], n: int) -> list[str]:
    """n labels cycling through shuffled copies of `classes`: balanced, every class once per len(classes)."""
    out: list[str] = []
    while len(out) < n:
        out.extend(classes[i] for i in rng.permutation(len(classes)))
    return out[:n]


def _warn_missing_train_classes(corpus: str, classes: tuple[str, ...], train_labels: set) -> None:
    missing = [c for c in classes if c not in train_labels]
    if missing:
        logger.warning("synthetic %s: class(es) %s do not occur in train (too few train utterances); raise "
                       "dialogues.train or utterances_per_dialogue", corpus, missing)


def _iemocap_drawn_emotion(label: str, rng: np.random.Generator) -> str:
    """The emotion the face and voice show for a raw IEMOCAP label (xxx: annotators disagreed -> any)."""
    if label == "xxx":
        return IEMOCAP_CLASSES[int(rng.integers(len(IEMOCAP_CLASSES)))]
    if label == "oth":
        return "neu"
    return label


# ------------------------------------------------------------------------------------------------ IEMOCAP

_IEMOCAP_NAMES = {"neu": "Neutral", "hap": "Happiness", "sad": "Sadness", "ang": "Anger", "exc": "Excited",
                  "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other"}
# Labels annotators confuse, for the minority votes.
_IEMOCAP_NEIGHBOURS = {"neu": "fru", "hap": "exc", "exc": "hap", "sad": "neu", "ang": "fru", "fru": "ang",
                       "sur": "exc", "fea": "sad", "dis": "ang", "oth": "neu"}
# (valence, activation, dominance) centres on IEMOCAP's 1-5 scales.
_IEMOCAP_VAD = {"neu": (3, 2, 3), "hap": (4, 3, 3), "exc": (4, 4, 3), "sad": (2, 2, 2), "ang": (1, 4, 4),
                "fru": (2, 3, 3), "sur": (3, 4, 3), "fea": (2, 4, 2), "dis": (2, 3, 3), "oth": (3, 3, 3)}
_ANNOTATOR_NOTES = ("", "", "", "curious", "mildly annoyed", "sarcastic", "tired", "polite")


@dataclass
class _Turn:
    utterance_id: str
    gender: str
    label: str | None  # None: a transcript line without evaluation
    emotion: str  # what the face and voice show (an IEMOCAP code)
    text: str
    start: float = 0.0
    end: float = 0.0


def _pick_dialogues(split_file: Path, counts: dict[str, int], rng: np.random.Generator) -> dict[str, list[str]]:
    try:
        data = json.loads(Path(split_file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"IEMOCAP split file {split_file} cannot be read ({err}); it must be JSON with 'train', "
                         "'valid', 'test' dialogue lists (workflow/resources/iemocap_standard_split.json)") from err
    picked: dict[str, list[str]] = {}
    for split in IEMOCAP_SPLITS:
        names = data.get(split)
        if not isinstance(names, list) or not names:
            raise ValueError(f"IEMOCAP split file {split_file} has no '{split}' dialogue list")
        if counts[split] > len(names):
            raise ValueError(f"synthetic.iemocap.dialogues.{split} = {counts[split]} but the split file "
                             f"{split_file} lists only {len(names)} {split} dialogues; lower the count")
        bad = [n for n in names if not re.match(r"^Ses0[1-5][FM]_", n)]
        if bad:
            raise ValueError(f"IEMOCAP split file {split_file}: {split} dialogue names {bad[:3]} do not look like "
                             "'Ses01F_impro01'")
        chosen = rng.choice(len(names), size=counts[split], replace=False)
        picked[split] = sorted(names[i] for i in chosen)
    return picked


def _plan_iemocap(s: dict, picked: dict[str, list[str]]) -> list[tuple[str, str, list[_Turn]]]:
    """(split, dialogue, turns) for every dialogue: speakers, labels, texts; no timing or audio yet."""
    lo, hi = s["utterances_per_dialogue"]
    extras = [("label", label) for label in s["dropped_labels"]] + [("unevaluated", None)] * s["unevaluated_turns"]
    dialogues = [(split, name) for split in IEMOCAP_SPLITS for name in picked[split]]
    extras_by_dialogue: dict[int, list] = {}
    for k, extra in enumerate(extras):
        if dialogues:
            extras_by_dialogue.setdefault(k % len(dialogues), []).append(extra)
    plans = []
    for split in IEMOCAP_SPLITS:
        split_rng = np.random.default_rng([s["seed"], 1, IEMOCAP_SPLITS.index(split)])
        sizes = [int(split_rng.integers(lo, hi + 1)) for _ in picked[split]]
        labels = _label_sequence(split_rng, IEMOCAP_CLASSES, sum(sizes))
        for name, size in zip(picked[split], sizes):
            d_index = dialogues.index((split, name))
            rng = np.random.default_rng([s["seed"], 2, d_index])
            own = labels[:size]
            labels = labels[size:]
            slots: list[tuple[str, str | None]] = [("label", label) for label in own]
            for extra in extras_by_dialogue.get(d_index, []):
                slots.insert(int(rng.integers(1, len(slots) + 1)), extra)
            plans.append((split, name, _iemocap_turns(name, slots, rng, s["hint_probability"])))
    return plans


def _iemocap_turns(dialogue: str, slots: list[tuple[str, str | None]], rng: np.random.Generator,
                   hint_probability: float) -> list[_Turn]:
    turns: list[_Turn] = []
    counters = {"F": 0, "M": 0}
    unevaluated = {"F": 0, "M": 0}
    gender = "F" if rng.random() < 0.5 else "M"
    for kind, label in slots:
        # Mostly alternating turns, now and then the same speaker goes on.
        if turns and rng.random() < 0.8:
            gender = "M" if gender == "F" else "F"
        if kind == "unevaluated":
            uid = f"{dialogue}_{gender}XX{unevaluated[gender]}"
            unevaluated[gender] += 1
            emotion = "neu"
            turns.append(_Turn(uid, gender, None, emotion, make_text(rng, None, 0.0)))
            continue
        uid = f"{dialogue}_{gender}{counters[gender]:03d}"
        counters[gender] += 1
        emotion = _iemocap_drawn_emotion(label, rng)
        text_emotion = None if label == "oth" else emotion
        turns.append(_Turn(uid, gender, label, emotion, make_text(rng, text_emotion, hint_probability)))
    return turns


def _emo_evaluation_block(turn: _Turn, rng: np.random.Generator) -> list[str]:
    """The header line and annotator lines of one EmoEvaluation block (as the release writes them)."""
    label = turn.label
    assert label is not None
    evaluators = ["C-E1", "C-E2", "C-E3"]
    if label == "xxx":  # no majority: three different categories
        votes = [IEMOCAP_CLASSES[i] for i in rng.choice(len(IEMOCAP_CLASSES), size=3, replace=False)]
    else:
        minority = _IEMOCAP_NEIGHBOURS[label] if rng.random() < 0.4 else label
        votes = [label, label, minority]
        rng.shuffle(votes)
    self_vote = votes[int(rng.integers(3))]
    lines = []
    vads = []
    for who, vote in [*zip(evaluators, votes), (f"C-{turn.gender}1", self_vote)]:
        name = _IEMOCAP_NAMES[vote]
        note = _ANNOTATOR_NOTES[int(rng.integers(len(_ANNOTATOR_NOTES)))]
        if vote == "oth":
            note = note or "amused"
        lines.append(f"{who}:\t{name};\t({note})")
    centre = _IEMOCAP_VAD["neu" if label == "xxx" else label]
    for who in ("A-E1", "A-E2", f"A-{turn.gender}1"):
        v, a, d = (int(np.clip(c + rng.integers(-1, 2), 1, 5)) for c in centre)
        vads.append((v, a, d))
        note = _ANNOTATOR_NOTES[int(rng.integers(len(_ANNOTATOR_NOTES)))]
        lines.append(f"{who}:\tval {v}; act {a}; dom  {d};\t({note})")
    mean = np.mean(np.array(vads[:2], dtype=np.float64), axis=0)  # the summary averages the evaluators
    header = (f"[{turn.start:.4f} - {turn.end:.4f}]\t{turn.utterance_id}\t{label}\t"
              f"[{mean[0]:.4f}, {mean[1]:.4f}, {mean[2]:.4f}]")
    return [header, *lines]


def generate_iemocap(root: Path, settings: dict | None, split_file: Path) -> None:
    """Write an IEMOCAP_full_release-like tree at `root` (built in a temporary folder, then swapped in)."""
    s = resolve_settings("iemocap", settings)
    espeak_binary()
    picked = _pick_dialogues(split_file, s["dialogues"], np.random.default_rng([s["seed"], 0]))
    plans = _plan_iemocap(s, picked)
    _warn_missing_train_classes("IEMOCAP", IEMOCAP_CLASSES,
                                {t.label for split, _, turns in plans if split == "train" for t in turns})
    logger.info("synthetic IEMOCAP: %d dialogues (%s), seed %d -> %s", len(plans),
                ", ".join(f"{k} {len(v)}" for k, v in picked.items()), s["seed"], root)
    counts: dict[str, int] = {}
    with atomic_dir(root) as tmp:
        for d_index, (split, name, turns) in enumerate(tqdm(plans, desc="synthetic IEMOCAP", unit="dialogue")):
            _render_iemocap_dialogue(tmp, name, turns, s, d_index)
            for turn in turns:
                key = turn.label or "(unevaluated)"
                counts[key] = counts.get(key, 0) + 1
            logger.info("%s (%s): %d turns, %.1f s", name, split, len(turns), turns[-1].end if turns else 0.0)
    logger.info("synthetic IEMOCAP written to %s; turns per label: %s", root, dict(sorted(counts.items())))


def _render_iemocap_dialogue(tree: Path, name: str, turns: list[_Turn], s: dict, d_index: int) -> None:
    session = int(name[3:5])
    rng = np.random.default_rng([s["seed"], 3, d_index])
    actor_rng = np.random.default_rng([s["seed"], 4, session])
    actors = {g: (random_voice(actor_rng, g), _actor_style(actor_rng, g)) for g in ("F", "M")}
    # Speech first: the utterance lengths set the times.
    cursor = float(rng.uniform(*s["lead_in_seconds"]))
    speech: list[np.ndarray] = []
    for turn in turns:
        signal = speak(turn.text, actors[turn.gender][0], turn.emotion, rng)
        turn.start = round(cursor, 4)
        turn.end = round(turn.start + len(signal) / SAMPLE_RATE, 4)
        speech.append(signal)
        cursor = turn.end + float(rng.uniform(*s["gap_seconds"]))
    total = (turns[-1].end if turns else 0.0) + 1.0
    conversation = np.zeros(int(round(total * SAMPLE_RATE)), dtype=np.float32)
    for turn, signal in zip(turns, speech):
        i0, i1 = int(round(turn.start * SAMPLE_RATE)), int(round(turn.end * SAMPLE_RATE))
        conversation[i0:i1] = _fit(signal, i1 - i0)

    dialog = tree / f"Session{session}" / "dialog"
    sentences = tree / f"Session{session}" / "sentences" / "wav" / name
    for sub in ("wav", "avi/DivX", "transcriptions", "EmoEvaluation"):
        (dialog / sub).mkdir(parents=True, exist_ok=True)
    sentences.mkdir(parents=True, exist_ok=True)
    write_wav(dialog / "wav" / f"{name}.wav", conversation)
    for turn in turns:
        i0, i1 = int(round(turn.start * SAMPLE_RATE)), int(round(turn.end * SAMPLE_RATE))
        write_wav(sentences / f"{turn.utterance_id}.wav", conversation[i0:i1])
    transcript = [f"{t.utterance_id} [{t.start:08.4f}-{t.end:08.4f}]: {t.text}" for t in turns]
    (dialog / "transcriptions" / f"{name}.txt").write_text("\n".join(transcript) + "\n", encoding="utf-8")
    evaluation = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for turn in turns:
        if turn.label is not None:
            evaluation.extend([*_emo_evaluation_block(turn, rng), ""])
    (dialog / "EmoEvaluation" / f"{name}.txt").write_text("\n".join(evaluation) + "\n", encoding="utf-8")
    _render_iemocap_video(dialog / "avi" / "DivX" / f"{name}.avi", turns, total, actors, s, rng)


def _fit(signal: np.ndarray, n: int) -> np.ndarray:
    """`signal` cut or zero-padded to exactly n samples."""
    if len(signal) >= n:
        return signal[:n]
    return np.concatenate([signal, np.zeros(n - len(signal), dtype=np.float32)])


def _render_iemocap_video(path: Path, turns: list[_Turn], total: float, actors: dict, s: dict,
                          rng: np.random.Generator) -> None:
    width, height = s["frame_size"]
    fps = s["fps"]
    face_h = s["face_height"]
    centres = {g: ((0.25 if s["sides"][g] == "left" else 0.75) * width, 0.45 * height) for g in ("F", "M")}
    base = drawing.room_background(width, height, _wall_colour(rng), rng)
    for g in ("F", "M"):
        drawing.draw_body(base, centres[g], face_h, actors[g][1])
    cache: dict[tuple[str, str] | None, av.VideoFrame] = {}

    def frame_for(state: tuple[str, str] | None) -> av.VideoFrame:
        # The picture changes only when the speaker or emotion changes: draw each state once.
        if state not in cache:
            image = base.copy()
            for g in ("F", "M"):
                emotion = state[1] if state is not None and state[0] == g else "neu"
                drawing.draw_face(image, centres[g], face_h, emotion, actors[g][1])
            cache[state] = _video_frame(image)
        return cache[state]

    n_frames = int(math.ceil(total * fps))
    frames = []
    for i in range(n_frames):
        t = i / fps
        active = next((turn for turn in turns if turn.start <= t < turn.end), None)
        frames.append(frame_for((active.gender, active.emotion) if active is not None else None))
    _write_video(path, frames, "mpeg4", fps, (width, height))


# --------------------------------------------------------------------------------------------------- MELD

MELD_CAST: dict[str, str] = {"Joey": "M", "Ross": "M", "Chandler": "M", "Rachel": "F", "Monica": "F", "Phoebe": "F"}
MELD_GUESTS: dict[str, str] = {"Janice": "F", "Gunther": "M", "Mike": "M", "Carol": "F", "Emily": "F",
                               "Richard": "M", "Mr. Geller": "M", "Mrs. Geller": "F", "The Interviewer": "M",
                               "Susan": "F"}
_MELD_SENTIMENT = {"neutral": "neutral", "joy": "positive", "sadness": "negative", "anger": "negative",
                   "fear": "negative", "disgust": "negative"}


@dataclass
class _MeldRow:
    dialogue: int
    utterance: int
    speaker: str
    emotion: str
    sentiment: str
    text: str
    season: int
    episode: int
    start_ms: int = 0
    end_ms: int = 0
    one_digit_hour: bool = False


def _meld_speaker(seed: int, name: str) -> tuple[str, Voice, drawing.FaceStyle]:
    """A speaker's gender, voice and face: the same in every dialogue of the corpus."""
    gender = {**MELD_CAST, **MELD_GUESTS}.get(name, "F")
    rng = np.random.default_rng([seed, 10, zlib.crc32(name.encode("utf-8"))])
    return gender, random_voice(rng, gender), _actor_style(rng, gender)


def _plan_meld_split(s: dict, split: str) -> list[list[_MeldRow]]:
    split_index = MELD_SPLITS.index(split)
    split_rng = np.random.default_rng([s["seed"], 11, split_index])
    lo, hi = s["utterances_per_dialogue"]
    sizes = [int(split_rng.integers(lo, hi + 1)) for _ in range(s["dialogues"][split])]
    labels = _label_sequence(split_rng, MELD_CLASSES, sum(sizes))
    dialogues = []
    for dia, size in enumerate(sizes):
        rng = np.random.default_rng([s["seed"], 12, split_index, dia])
        own, labels = labels[:size], labels[size:]
        k_lo, k_hi = s["speakers_per_dialogue"]
        k = min(int(rng.integers(k_lo, k_hi + 1)), size)
        pool = list(MELD_CAST) + ([list(MELD_GUESTS)[int(rng.integers(len(MELD_GUESTS)))]] if rng.random() < 0.3
                                  else [])
        speakers = [pool[i] for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]
        order = list(speakers) + [speakers[int(rng.integers(len(speakers)))] for _ in range(size - len(speakers))]
        # Everyone speaks at least once; avoid one speaker twice in a row where a swap allows it.
        order = [order[i] for i in rng.permutation(len(order))]
        for i in range(1, len(order)):
            if order[i] == order[i - 1]:
                swap = next((j for j in range(i + 1, len(order)) if order[j] != order[i - 1]), None)
                if swap is not None:
                    order[i], order[swap] = order[swap], order[i]
        season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
        rows = []
        for utt, (speaker, emotion) in enumerate(zip(order, own)):
            sentiment = _MELD_SENTIMENT.get(emotion) or ("positive" if rng.random() < 0.5 else "negative")
            text = meld_style_text(make_text(rng, emotion, s["hint_probability"]), rng)
            rows.append(_MeldRow(dia, utt, speaker, emotion, sentiment, text, season, episode,
                                 one_digit_hour=bool(rng.random() < s["one_digit_hour_fraction"])))
        dialogues.append(rows)
    flat = [row for rows in dialogues for row in rows]
    if len(flat) >= 2:  # the real CSVs mix both time formats; make sure each file does
        if all(r.one_digit_hour for r in flat):
            flat[0].one_digit_hour = False
        if not any(r.one_digit_hour for r in flat):
            flat[-1].one_digit_hour = True
    return dialogues


def _format_time(ms: int, one_digit_hour: bool) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    hour = f"{hours:d}" if one_digit_hour else f"{hours:02d}"
    return f"{hour}:{minutes:02d}:{seconds:02d},{millis:03d}"


def generate_meld(root: Path, settings: dict | None) -> None:
    """Write a MELD.Raw-like tree at `root` (built in a temporary folder, then swapped in)."""
    s = resolve_settings("meld", settings)
    espeak_binary()
    defects = {target: defect for defect, target in s["defects"].items() if target is not None}
    plans = {split: _plan_meld_split(s, split) for split in MELD_SPLITS}
    _warn_missing_train_classes("MELD", MELD_CLASSES, {r.emotion for rows in plans["train"] for r in rows})
    jobs = [(split, rows) for split in MELD_SPLITS for rows in plans[split]]
    logger.info("synthetic MELD: %s dialogues, seed %d -> %s",
                ", ".join(f"{k} {len(v)}" for k, v in plans.items()), s["seed"], root)
    with atomic_dir(root) as tmp:
        for split in MELD_SPLITS:
            (tmp / MELD_CLIP_DIRS[split]).mkdir()
        for split, rows in tqdm(jobs, desc="synthetic MELD", unit="dialogue"):
            _render_meld_dialogue(tmp, split, rows, s, defects)
        for split in MELD_SPLITS:
            _write_meld_csv(tmp / f"{split}_sent_emo.csv", [r for rows in plans[split] for r in rows])
    for target, defect in sorted(defects.items()):
        logger.info("synthetic MELD defect %s: %s", defect, target)
    logger.info("synthetic MELD written to %s", root)


def _write_meld_csv(path: Path, rows: list[_MeldRow]) -> None:
    # csv's defaults match the release: CRLF line ends, quotes only where a field has a comma or quote.
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(MELD_CSV_HEADER)
        for number, r in enumerate(rows, start=1):
            writer.writerow([number, r.text, r.speaker, r.emotion, r.sentiment, r.dialogue, r.utterance, r.season,
                             r.episode, _format_time(r.start_ms, r.one_digit_hour),
                             _format_time(r.end_ms, r.one_digit_hour)])


def _render_meld_dialogue(tree: Path, split: str, rows: list[_MeldRow], s: dict, defects: dict[str, str]) -> None:
    split_index = MELD_SPLITS.index(split)
    dia = rows[0].dialogue
    rng = np.random.default_rng([s["seed"], 13, split_index, dia])
    width, height = s["frame_size"]
    wall = _wall_colour(rng)
    cursor_ms = int(rng.integers(60_000, 2_400_000))  # the dialogue's place in its episode
    people = {name: _meld_speaker(s["seed"], name) for name in dict.fromkeys(r.speaker for r in rows)}
    for row in rows:
        _, voice, style = people[row.speaker]
        signal = speak(row.text, voice, row.emotion, rng)
        row.start_ms = cursor_ms
        row.end_ms = cursor_ms + int(math.ceil(len(signal) / SAMPLE_RATE * 1000))
        cursor_ms = row.end_ms + int(rng.uniform(*s["gap_seconds"]) * 1000)
        duration = (row.end_ms - row.start_ms) / 1000.0
        image = drawing.room_background(width, height, wall, rng)
        listeners = [name for name in people if name != row.speaker]
        if listeners and rng.random() < s["second_face_probability"]:
            listener = people[listeners[int(rng.integers(len(listeners)))]][2]
            x = width * (0.13 if rng.random() < 0.5 else 0.87)
            small = 0.62 * s["face_height"]
            drawing.draw_body(image, (x, 0.42 * height), small, listener)
            drawing.draw_face(image, (x, 0.42 * height), small, "neutral", listener)
        centre = (width * float(rng.uniform(0.45, 0.55)), height * 0.46)
        drawing.draw_body(image, centre, s["face_height"], style)
        drawing.draw_face(image, centre, s["face_height"], row.emotion, style)

        target = f"{split}/dia{row.dialogue}_utt{row.utterance}"
        defect = defects.get(target)
        path = tree / MELD_CLIP_DIRS[split] / f"dia{row.dialogue}_utt{row.utterance}.mp4"
        if defect == "missing_clip":
            continue
        audio = _fit(resample(signal, SAMPLE_RATE, s["audio_rate"]), int(round(duration * s["audio_rate"])))
        frame = _video_frame(image)
        n_frames = max(1, int(math.ceil(duration * s["fps"])))
        _write_video(path, [frame] * n_frames, "libx264", s["fps"], (width, height),
                     audio=None if defect == "no_audio_stream" else audio, audio_rate=s["audio_rate"])
        if defect == "corrupt_clip":
            # Truncation drops the moov atom (written last): the file exists but cannot be opened.
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
