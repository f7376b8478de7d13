"""Settings of the synthetic corpus: defaults, what each key means, presets, validation, the MELD defects.

DEFAULT_SETTINGS[format] lists every key with its default, SETTINGS_DOC[format] says what each
means, LARGE_SETTINGS[format] is a ~20x larger preset for benchmarks (`preset(fmt, "large")`).
Unknown keys raise ValueError naming the key.

Deliberate MELD defects (settings key `defects`, listed by `meld_defects`; no sidecar file in the tree):
`missing_clip` (CSV row present, file absent), `corrupt_clip` (file truncated to a third: no moov atom,
cannot be opened), `no_audio_stream` (video track only). Defaults: train/dia1_utt2, dev/dia0_utt1,
test/dia1_utt0. A value null disables that defect.
"""
from __future__ import annotations

import copy
import re

import numpy as np

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
        "second_face_probability": "share of clips with a smaller neutral listener off-center",
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
