"""The community feature pickles <-> this project's manifest + one HDF5 feature file per modality.

Layouts (spec section 1.1; dialogue id = "vid"):

* VEGA 7-tuple (`IEMOCAP.pkl`): speakers, labels, text, audio, visual, train ids, test ids.
* SDT 12-tuple (IEMOCAP, COSMIC/MMGCN release): utterance ids, speakers, labels, roberta1..roberta4,
  audio, visual, sentences, train ids, test ids. 13-tuple (MELD): the same plus one unused item.
  Only roberta1 is imported as text (the others are the further RoBERTa layers VEGA ignores).

Per dialogue, speakers are 'M'/'F' characters (IEMOCAP: speaker_slot 0 for M, 1 for F, as in the
model) or 9-dim one-hot vectors (MELD: speaker_slot = the hot index). Labels are class ids in the
order of ercpipe.labels (IEMOCAP_CLASSES / MELD_CLASSES); the manifest stores the class names.
Feature arrays may be numpy arrays, tensors or nested lists; a text array stored as 1 x N x D (the
leading axis VEGA's loader squeezes) is read as N x D.

Imported manifests: split train / test from the id lists (optionally some train dialogues moved
to valid by name), text = the pickle's sentences where the layout has them (SDT), else empty; no
media paths. A feature row that is all zeros in the pickle is kept as zeros with present=False
(reason "all_zero_in_pickle" in the file's `absent` attribute).

Unpickling can run arbitrary code, so loading requires an explicit allow_pickle=True.
"""
from __future__ import annotations

import io
import json
import logging
import math
import pickle
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ercpipe.errors import ErcpipeError
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.io.atomic import atomic_path
from ercpipe.io.digest import file_digest
from ercpipe.io.filekind import file_kind
from ercpipe.labels import CLASSES_BY_FORMAT, MODALITIES

logger = logging.getLogger(__name__)

MELD_SPEAKER_SLOTS = 9  # width of MELD's one-hot speaker vectors (the model's speaker table)
IEMOCAP_SPEAKERS = {"M": 0, "F": 1}

# Field positions per layout. The 13-tuple's last item is unused by every known reader.
FIELDS: dict[str, dict[str, int]] = {
    "vega7": {"speakers": 0, "labels": 1, "text": 2, "audio": 3, "visual": 4, "train": 5, "test": 6},
    "sdt12": {"utterances": 0, "speakers": 1, "labels": 2, "text": 3, "audio": 7, "visual": 8, "sentences": 9,
              "train": 10, "test": 11},
}
FIELDS["sdt13"] = dict(FIELDS["sdt12"])
LAYOUT_BY_LENGTH = {7: "vega7", 12: "sdt12", 13: "sdt13"}


class PickleNotAllowedError(ErcpipeError, PermissionError):
    """Raised when a pickle would be loaded without the caller's explicit consent."""


class PickleFormatError(ErcpipeError, ValueError):
    """The pickle's content does not follow the layout; the message names the dialogue and utterance."""


@dataclass
class PickleDataset:
    """A parsed pickle, keyed by dialogue id as a string, dialogues in pickle order (train, then test)."""

    layout: str
    fmt: str  # "iemocap" | "meld"
    dialogues: list[str]
    splits: dict[str, str]
    speakers: dict[str, list]
    labels: dict[str, list[int]]
    features: dict[str, dict[str, np.ndarray]]  # modality -> dialogue -> float32 [N, D]
    utterance_names: dict[str, list[str]] = field(default_factory=dict)
    sentences: dict[str, list[str]] = field(default_factory=dict)
    source: str = "pickle"
    unlisted: list[str] = field(default_factory=list)  # dialogues in no split list: not imported
    classes: tuple[str, ...] = ()  # class names in label-id order (default: those of fmt)

    def class_names(self) -> tuple[str, ...]:
        return tuple(self.classes) or CLASSES_BY_FORMAT[self.fmt]


# ----------------------------------------------------------------------------------------- loading

EXPECTED_LAYOUT = "a VEGA 7-tuple or an SDT 12/13-tuple, docs/features-text.md"


def _file_kind(path: Path) -> str:
    """Why a file is recognisably no pickle without unpickling it (HDF5, zip, empty), or '' if it may be one."""
    kind = file_kind(path)
    if kind == "an HDF5 file":
        return "; it is an HDF5 file (an ercpipe feature file is used as it is, not imported)"
    if kind.startswith("a zip archive"):
        return "; it is a zip archive (torch.save writes these: not a feature pickle)"
    if kind == "an empty file":
        return "; the file is empty"
    if kind == "a gzip-compressed file":
        return "; it is gzip-compressed: decompress it first (gunzip, or gzip -dc FILE > FILE.pkl)"
    return ""


def _storage_on_the_cpu(data: bytes):
    """torch.storage._load_from_bytes with the storage mapped to the CPU: a tensor pickled on a GPU names its device,
    and torch's own loader then needs CUDA. The bytes are torch.save's zip format of one storage."""
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _CpuTensorUnpickler(pickle.Unpickler):
    """pickle.Unpickler that rebuilds torch tensors on the CPU whatever device they were pickled from (features
    saved from a GPU session), as the importer converts them to NumPy anyway."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_on_the_cpu
        return super().find_class(module, name)


def load_pickle(path: str | Path, *, allow_pickle: bool = False,
                how_to_allow: str = "pass allow_pickle=True") -> tuple:
    """The raw tuple of a feature pickle; refuses unless allow_pickle=True (unpickling can run code).

    how_to_allow: how the caller's user opts in, for the refusal message (the CLI: "add --allow-pickle").
    A file that does not unpickle, or unpickles to something else than the expected tuple, is a
    PickleFormatError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature pickle {path} does not exist" if not path.exists()
                                else f"feature pickle {path} is not a file")
    kind = _file_kind(path)
    if kind:  # recognisable without unpickling it
        raise PickleFormatError(f"{path} is not a pickle of the expected layout ({EXPECTED_LAYOUT}){kind}")
    if allow_pickle is not True:
        raise PickleNotAllowedError(
            f"refusing to unpickle {path}: unpickling a file can run arbitrary code stored in it; only if you "
            f"trust where the file comes from, {how_to_allow}")
    try:
        with open(path, "rb") as handle:
            # latin1: the IEMOCAP releases were pickled by Python 2
            obj = _CpuTensorUnpickler(handle, encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - a file that is not a pickle raises almost anything
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PickleFormatError(
            f"{path} is not a pickle of the expected layout ({EXPECTED_LAYOUT}): it cannot be unpickled "
            f"({type(err).__name__}{': ' + reason if reason else ''})") from err
    if not isinstance(obj, (tuple, list)) or len(obj) not in LAYOUT_BY_LENGTH:
        size = f"a {len(obj)}-{type(obj).__name__}" if isinstance(obj, (tuple, list)) else f"a {type(obj).__name__}"
        raise PickleFormatError(f"{path} is not a pickle of the expected layout: expected a 7-tuple (VEGA) or a "
                                f"12/13-tuple (SDT), it holds {size}")
    return tuple(obj)


def _str_keys(mapping, what: str, source: str) -> dict[str, object]:
    if not isinstance(mapping, Mapping):
        raise PickleFormatError(f"{source}: {what} should be a dict keyed by dialogue id, got {type(mapping).__name__}")
    out: dict[str, object] = {}
    for key, value in mapping.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name in out:
            raise PickleFormatError(f"{source}: {what} has two dialogue ids that both read as {name!r}")
        out[name] = value
    return out


def _id_list(ids: Iterable, what: str, source: str) -> list[str]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise PickleFormatError(f"{source}: {what} is a {type(ids).__name__}; expected a list of dialogue ids")
    if isinstance(ids, (set, frozenset)):  # no stored order: numbers numerically, then names
        logger.info("%s: %s is a set; dialogues are ordered by id", source, what)
        ids = sorted(ids, key=lambda v: (0, int(v), "") if str(v).lstrip("-").isdigit() else (1, 0, str(v)))
    names = [v.decode() if isinstance(v, bytes) else str(v) for v in ids]
    repeated = sorted({v for v in names if names.count(v) > 1}) if len(set(names)) != len(names) else []
    if repeated:
        raise PickleFormatError(f"{source}: dialogue(s) {repeated[:5]} appear more than once in {what}")
    return names


def _numpy(value):
    """A torch tensor as a numpy array (pickles of the official code hold either); anything else as it is."""
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def _label_ids(value, where: str, class_names: Sequence[str]) -> list[int]:
    """One integer class id per utterance, from a list / array / tensor of integer-valued numbers."""
    value = _numpy(value)
    array = np.asarray(value)
    hint = f"labels are class ids 0..{len(class_names) - 1} of {list(class_names)}, one per utterance"
    if array.ndim > 1 and sum(n > 1 for n in array.shape) > 1:
        raise PickleFormatError(f"{where}: labels of shape {array.shape}; {hint} (not one-hot rows)")
    array = array.reshape(-1)
    if array.dtype.kind not in "iuf":
        raise PickleFormatError(f"{where}: labels {array[:5].tolist()} are not numbers; {hint} (for other class "
                                "names set the dataset's `classes`, in label-id order)")
    bad = [k for k, v in enumerate(array.tolist()) if not (math.isfinite(v) and float(v).is_integer())]
    if bad:
        raise PickleFormatError(f"{where} utterance {bad[0]}: label {array.tolist()[bad[0]]!r} is not a whole number; "
                                f"{hint}")
    return [int(v) for v in array]


def _matrix(value, n: int, where: str) -> np.ndarray:
    """An [n, D] float32 array from an array / tensor / nested list (1 x n x D squeezed, as VEGA does)."""
    value = _numpy(value)
    if isinstance(value, (list, tuple)) and value and all(np.ndim(_numpy(v)) == 1 for v in value):
        widths = [len(v) for v in value]  # one row per utterance: name the row whose width is not the first's
        odd = next((k for k, w in enumerate(widths) if w != widths[0]), None)
        if odd is not None:
            raise PickleFormatError(f"{where}: utterance {odd} has {widths[odd]} feature values, utterance 0 has "
                                    f"{widths[0]}; every utterance of a modality needs the same width")
    if np.iscomplexobj(value):
        raise PickleFormatError(f"{where}: complex feature values; expected real numbers")
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 1 and n == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] != n:
        raise PickleFormatError(f"{where}: feature array of shape {array.shape} for {n} utterances; expected ({n}, D)")
    if not np.isfinite(array).all():
        row = int(np.where(~np.isfinite(array).all(axis=1))[0][0])
        # Only on this failure: a finite float64 value that float32 cannot hold became inf in the cast.
        if np.isfinite(np.asarray(value, dtype=np.float64).reshape(array.shape)[row]).all():
            raise PickleFormatError(f"{where}: utterance {row} has feature values beyond float32's range (|x| > "
                                    "3.4e38); the features are stored as float32: scale them first")
        raise PickleFormatError(f"{where}: utterance {row} has non-finite feature values")
    return array


IEMOCAP_DIALOGUE = re.compile(r"Ses\d\d[FM]_")


def _guess_format(layout: str, speakers: dict[str, object]) -> str:
    if layout == "sdt13":
        return "meld"
    if layout == "sdt12":
        return "iemocap"
    if speakers and all(IEMOCAP_DIALOGUE.match(vid) for vid in speakers):
        return "iemocap"  # whatever its speakers look like ('M'/'F', or one-hot as some conversions store them)
    for values in speakers.values():
        if not isinstance(values, Iterable):
            continue  # named with its dialogue when that dialogue is read
        for value in values:
            if isinstance(value, (str, bytes)):
                return "iemocap"
            # One-hot speakers: two slots are IEMOCAP's actors ([1, 0] = M), MELD's vectors have nine.
            return "iemocap" if np.size(_numpy(value)) == 2 else "meld"
    raise PickleFormatError("cannot tell IEMOCAP from MELD: the pickle has no utterances; pass fmt=")


def parse_pickle(obj: Sequence, fmt: str | None = None, source: str = "pickle",
                 classes: Sequence[str] | None = None) -> PickleDataset:
    """Check a raw pickle tuple and turn it into a PickleDataset (errors name dialogue and utterance).

    fmt: "iemocap" ('M'/'F' speakers) or "meld" (one-hot speakers); None guesses it from the layout and
    the speakers. classes: the class names in label-id order when they are not fmt's (e.g. a 4-class
    IEMOCAP); every label id must index it."""
    layout = LAYOUT_BY_LENGTH.get(len(obj))
    if layout is None:
        raise PickleFormatError(f"{source}: a {len(obj)}-tuple is neither VEGA's 7-tuple nor SDT's 12/13-tuple")
    pos = FIELDS[layout]
    speakers = _str_keys(obj[pos["speakers"]], "speakers", source)
    labels = _str_keys(obj[pos["labels"]], "labels", source)
    raw_features = {m: _str_keys(obj[pos[m]], m, source) for m in MODALITIES}
    declared = fmt is not None
    fmt = fmt or _guess_format(layout, speakers)
    if fmt not in CLASSES_BY_FORMAT:
        raise ValueError(f"fmt {fmt!r} is not one of {sorted(CLASSES_BY_FORMAT)}")
    # NFC, as the CSV reader compares labels: "café" typed two ways is one name, not two classes.
    class_names = (tuple(unicodedata.normalize("NFC", str(c)) for c in classes) if classes
                   else CLASSES_BY_FORMAT[fmt])
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"classes {list(class_names)} has duplicate names (compared after Unicode NFC "
                         "normalization)")

    train = _id_list(obj[pos["train"]], "the train id list", source)
    test = _id_list(obj[pos["test"]], "the test id list", source)
    both = sorted(set(train) & set(test))
    if both:
        raise PickleFormatError(f"{source}: dialogue(s) {both[:5]} are in both the train and the test id list")
    dialogues = train + test
    unlisted = sorted(set(labels) - set(dialogues))
    if unlisted:  # the official loaders never see these either; say so instead of dropping silently
        logger.warning("%s: %d dialogue(s) are in no split list and are not imported, e.g. %s", source,
                       len(unlisted), unlisted[:5])
    empty = [d for d in dialogues if d in labels and np.size(_numpy(labels[d])) == 0]
    if empty:  # nothing to import; said, and listed with the dialogues not imported
        logger.warning("%s: %d dialogue(s) hold no utterances and are not imported: %s", source, len(empty),
                       empty[:10])
        train, test = [d for d in train if d not in empty], [d for d in test if d not in empty]
        dialogues, unlisted = train + test, sorted(unlisted + empty)

    ds = PickleDataset(layout, fmt, dialogues, {**{d: "train" for d in train}, **{d: "test" for d in test}},
                       {}, {}, {m: {} for m in MODALITIES}, source=source, classes=tuple(classes or ()),
                       unlisted=unlisted)
    names = _str_keys(obj[pos["utterances"]], "utterance ids", source) if "utterances" in pos else {}
    sentences = _str_keys(obj[pos["sentences"]], "sentences", source) if "sentences" in pos else {}
    for vid in dialogues:
        for what, mapping in [("labels", labels), ("speakers", speakers)] + list(raw_features.items()):
            if vid not in mapping:
                raise PickleFormatError(f"{source}: dialogue {vid} is in a split list but has no {what}")
        try:
            _parse_dialogue(ds, vid, source, class_names, labels, speakers, raw_features, names, sentences)
        except PickleFormatError:
            raise
        except (TypeError, ValueError) as err:  # None or strings where numbers belong, ragged nested lists
            raise PickleFormatError(f"{source}: dialogue {vid}: {type(err).__name__}: {err}; the pickle does not "
                                    f"follow {LAYOUT_NAMES[layout]}'s layout there") from err
    if declared and fmt == "meld" and not classes and dialogues and all(IEMOCAP_DIALOGUE.match(d) for d in dialogues):
        # Its speakers passed as MELD's (one-hot vectors, as some IEMOCAP conversions store them), so every label
        # would be named after MELD's classes: frustrated read as disgust.
        raise PickleFormatError(f"{source}: declared MELD (labels: meld, or --format meld), but every dialogue id is "
                                f"IEMOCAP's (e.g. {dialogues[0]}); its label ids would be named after MELD's classes. "
                                "Set the dataset's labels: iemocap (or ercpipe import-pickle --format iemocap), or "
                                "give its `classes:` in label-id order")
    used = {int(i) for ids in ds.labels.values() for i in ids}
    if not classes and used and max(used) + 1 < len(class_names):
        logger.warning("%s: the labels use class ids 0..%d only, but the class names are %s's %d (%s), %s; if the "
                       "dataset has other classes, give them in label-id order as the dataset's `classes:`", source,
                       max(used), fmt, len(class_names), ", ".join(class_names),
                       "as declared" if declared else "guessed from the pickle")
    for m in MODALITIES:
        width = {vid: a.shape[1] for vid, a in ds.features[m].items()}
        if len(set(width.values())) > 1:
            first = next(iter(width))
            other = next(vid for vid, w in width.items() if w != width[first])
            raise PickleFormatError(f"{source}: {m} features have different widths across dialogues "
                                    f"{sorted(set(width.values()))}: dialogue {other} has {width[other]}, dialogue "
                                    f"{first} {width[first]}; every dialogue of a modality needs the same width")
    return ds


def _parse_dialogue(ds: PickleDataset, vid: str, source: str, class_names: Sequence[str], labels: dict,
                    speakers: dict, raw_features: dict, names: dict, sentences: dict) -> None:
    """One dialogue's labels, speakers, features, utterance names and sentences into `ds`."""
    n_classes = len(class_names)
    ids = _label_ids(labels[vid], f"{source}: dialogue {vid}", class_names)
    n = len(ids)
    for k, label in enumerate(ids):
        if not 0 <= label < n_classes:
            raise PickleFormatError(f"{source}: dialogue {vid} utterance {k}: label id {label} is not a "
                                    f"class id of {list(class_names)} (0..{n_classes - 1})")
    spk = list(speakers[vid])
    if len(spk) != n:
        raise PickleFormatError(f"{source}: dialogue {vid} has {len(spk)} speakers for {n} labels")
    ds.labels[vid] = ids
    ds.speakers[vid] = spk
    for m in MODALITIES:
        ds.features[m][vid] = _matrix(raw_features[m][vid], n, f"{source}: dialogue {vid} {m}")
    if vid in names and len(list(names[vid])) == n and all(isinstance(u, str) for u in names[vid]):
        ds.utterance_names[vid] = list(names[vid])
    elif vid in names and not (len(list(names[vid])) == n and all(isinstance(u, (int, np.integer))
                                                                   for u in names[vid])):
        # (SDT's MELD pickle numbers the utterances 0, 1, ...: the default names say the same, no warning.)
        logger.warning("%s: dialogue %s: its utterance id list (%d entries) does not name its %d utterances; they "
                       "are called %s_u0, %s_u1, ...", source, vid, len(list(names[vid])), n, vid, vid)
    if vid in sentences:
        text = [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in sentences[vid]]
        if len(text) != n:
            raise PickleFormatError(f"{source}: dialogue {vid} has {len(text)} sentences for {n} labels")
        ds.sentences[vid] = text


# ----------------------------------------------------------------------------------------- -> project

def _speaker(fmt: str, value, vid: str, k: int, source: str) -> tuple[str, int]:
    """(speaker name, speaker_slot) of one utterance."""
    if fmt == "iemocap":
        if isinstance(value, (str, bytes)):
            gender = (value.decode() if isinstance(value, bytes) else value).strip()
        else:  # a one-hot [1, 0] (M) / [0, 1] (F), the order of IEMOCAP's slots
            hot = _one_hot(value)
            gender = {0: "M", 1: "F"}.get(hot) if hot is not None and np.size(_numpy(value)) == 2 else None
        if gender not in IEMOCAP_SPEAKERS:
            raise PickleFormatError(f"{source}: dialogue {vid} utterance {k}: IEMOCAP speaker {value!r} is not "
                                    "'M' or 'F' (or a one-hot [1, 0] / [0, 1])")
        session = re.match(r"Ses\d\d", vid)
        return (f"{session.group(0)}_{gender}" if session else gender), IEMOCAP_SPEAKERS[gender]
    if isinstance(value, (str, bytes)):
        raise PickleFormatError(f"{source}: dialogue {vid} utterance {k}: MELD speaker {value!r} is not a one-hot "
                                "vector ('M'/'F' speakers are IEMOCAP's: set the dataset's labels: iemocap, or "
                                "ercpipe import-pickle --format iemocap)")
    hot = _one_hot(value)
    if hot is None:
        raise PickleFormatError(f"{source}: dialogue {vid} utterance {k}: MELD speaker {value!r} is not a "
                                "one-hot vector")
    return f"speaker{hot}", hot


def _one_hot(value) -> int | None:
    """The index of a one-hot vector's 1, or None when `value` is not one."""
    try:
        vector = np.asarray(_numpy(value), dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        return None
    hot = np.flatnonzero(vector == vector.max()) if vector.size else np.array([])
    if vector.size == 0 or len(hot) != 1 or vector.max() <= 0:
        return None
    return int(hot[0])


def to_project(ds: PickleDataset, dataset: str | None = None, valid_dialogues: Sequence[str] | None = None,
               ) -> tuple[pd.DataFrame, dict[str, feature_io.FeatureSet]]:
    """The manifest frame and one FeatureSet per modality (rows in manifest order)."""
    valid = [str(v) for v in (valid_dialogues or [])]
    not_train = [v for v in valid if ds.splits.get(v) != "train"]
    if not_train:
        raise ValueError(f"{ds.source}: valid dialogue(s) {not_train[:5]} are not train dialogues of the pickle; "
                         "valid can only be carved out of the train id list")
    splits = {**ds.splits, **{v: "valid" for v in valid}}
    classes = ds.class_names()
    rows = []
    for vid in ds.dialogues:
        names = ds.utterance_names.get(vid)
        for k, label in enumerate(ds.labels[vid]):
            speaker, slot = _speaker(ds.fmt, ds.speakers[vid][k], vid, k, ds.source)
            rows.append({"dataset": dataset or ds.fmt, "split": splits[vid], "dialogue_id": vid, "utterance_index": k,
                         "utterance_id": names[k] if names else f"{vid}_u{k}", "speaker": speaker,
                         "speaker_slot": slot, "label": classes[label],
                         "text": ds.sentences[vid][k] if vid in ds.sentences else "",
                         "audio_path": "", "audio_start": np.nan, "audio_end": np.nan, "video_path": "",
                         "video_start": np.nan, "video_end": np.nan, "flags": ""})
    frame = manifest_io.normalize(pd.DataFrame(rows, columns=list(manifest_io.COLUMNS)))
    if frame["utterance_id"].duplicated().any():  # utterance names from the pickle collide: fall back to positions
        logger.warning("%s: the pickle's utterance ids are not unique; using {dialogue}_u{index}", ds.source)
        frame["utterance_id"] = frame["dialogue_id"] + "_u" + frame["utterance_index"].astype(str)
    manifest_io.validate(frame, classes, source=ds.source)
    ids = frame["utterance_id"].tolist()
    feature_sets = {}
    for m in MODALITIES:
        stacked = np.concatenate([ds.features[m][vid] for vid in ds.dialogues]) if ds.dialogues \
            else np.zeros((0, 0), np.float32)
        present = np.abs(stacked).sum(axis=1) > 0
        absent = {ids[i]: "all_zero_in_pickle" for i in np.flatnonzero(~present)}
        if absent:
            logger.warning("%s: %d %s rows are all zeros in the pickle (present=False), e.g. %s", ds.source,
                           len(absent), m, list(absent)[:3])
        feature_sets[m] = feature_io.FeatureSet(ids, stacked, present, {
            "modality": m, "extractor": "pickle", "model": f"{ds.layout}:{m}",
            "settings": {"source": "pickle", "layout": ds.layout, "modality": m},
            "versions": feature_io.package_versions(["numpy", "ercpipe"]),
            "absent": json.dumps(absent, sort_keys=True)})
    return frame, feature_sets


def _check_modalities(feature_paths: Mapping[str, object], require_all: bool) -> None:
    unknown = sorted(set(feature_paths) - set(MODALITIES))
    if unknown:
        raise ValueError(f"feature_paths has unknown modality key(s) {unknown}; use {list(MODALITIES)}")
    missing = [m for m in MODALITIES if m not in feature_paths]
    if require_all and missing:
        raise ValueError(f"no {' or '.join(missing)} feature file was given (--features on the command line, "
                         "feature_paths in Python); the VEGA tuple holds text, audio and visual features, so a "
                         "text-only dataset cannot be exported to it (the VEGA code needs all three)")


# ----------------------------------------------------------------------------------------- validation split

# `valid_split` of a pickle dataset (the pickles have train and test id lists only):
#   {standard: iemocap}        the 12 validation dialogues of workflow/resources/iemocap_standard_split.json
#   {fraction: f, seed: s}     round(f x train dialogues) train dialogues drawn with numpy's default_rng(s)
#   {dialogues: [ids]}         these train dialogues
#   none                       no validation split (only train.paper_compat experiments can train on it)
# Default: {standard: iemocap} for IEMOCAP labels, else {fraction: 0.1, seed: 0}.
DEFAULT_FRACTION = {"fraction": 0.1, "seed": 0}


def default_valid_split(fmt: str) -> dict:
    return {"standard": "iemocap"} if fmt == "iemocap" else dict(DEFAULT_FRACTION)


# = ercpipe.datasets.iemocap.DEFAULT_SPLIT_FILE (not imported: the raw readers reach the media libraries,
# which the import rules' env does not install)
STANDARD_SPLIT_FILE = Path(__file__).resolve().parents[2] / "workflow" / "resources" / "iemocap_standard_split.json"


def _standard_valid() -> tuple[list[str], list[str]]:
    split = json.loads(STANDARD_SPLIT_FILE.read_text())
    return [str(v) for v in split["valid"]], [str(v) for v in split["test"]]


def choose_valid(ds: PickleDataset, valid_split: Mapping | str | None = None,
                 valid_dialogues: Sequence[str] | None = None) -> tuple[list[str], dict, list[dict]]:
    """The train dialogues that become `valid`, how they were chosen (for summary.json) and dataset checks.

    valid_dialogues (an explicit list) wins over valid_split; valid_split None or "none": no valid split,
    "default": default_valid_split(ds.fmt) (what a pipeline dataset without `valid_split` gets).
    A standard valid dialogue missing from the pickle's train list is a PickleFormatError naming it.
    """
    train = [d for d in ds.dialogues if ds.splits[d] == "train"]
    checks: list[dict] = []
    if valid_dialogues is not None:
        spec: Mapping | str | None = {"dialogues": [str(v) for v in valid_dialogues]}
    else:
        spec = default_valid_split(ds.fmt) if valid_split == "default" else valid_split
    if spec is None or spec == "none":
        return [], {"protocol": "none", "note": "no validation split: only train.paper_compat experiments train "
                    "on this dataset (they select on test)"}, checks
    if not isinstance(spec, Mapping) or len(spec) == 0:
        raise ValueError(f"valid_split {spec!r}: use {{standard: iemocap}}, {{fraction: F, seed: S}}, "
                         "{dialogues: [...]} or none")
    if "standard" in spec:
        if spec["standard"] != "iemocap":
            raise ValueError(f"valid_split.standard {spec['standard']!r}: only iemocap has a standard validation split")
        valid, test = _standard_valid()
        absent = [v for v in valid if ds.splits.get(v) != "train"]
        if absent:
            raise PickleFormatError(
                f"{ds.source}: the standard IEMOCAP validation dialogue(s) {absent[:5]} are not train dialogues of "
                "the pickle, so this file does not follow the standard split; hold out a seeded fraction instead "
                "(config: valid_split: {fraction: 0.1, seed: 0}; ercpipe import-pickle: --valid-fraction 0.1)")
        extra_test, missing_test = sorted(set(ds.splits) - set(train) - set(test)), sorted(set(test) - set(ds.splits))
        checks.append({"check": "test dialogues are the standard IEMOCAP test split",
                       "ok": not extra_test and not missing_test, "expected": len(test),
                       "found": sum(1 for d in ds.dialogues if ds.splits[d] == "test"),
                       "extra": extra_test, "missing": missing_test})
        # A standard test dialogue in the pickle's train list would be trained on: said, never silent.
        trained_on = sorted(set(test) & set(train))
        checks.append({"check": "no standard IEMOCAP test dialogue in the pickle's train list", "ok": not trained_on,
                       "expected": 0, "found": len(trained_on), "extra": trained_on})
        if trained_on:
            logger.warning("%s: %d standard IEMOCAP test dialogue(s) are in the pickle's train list and will be "
                           "trained on: %s; results are then not comparable with the standard split", ds.source,
                           len(trained_on), ", ".join(trained_on[:10]) + (" ..." if len(trained_on) > 10 else ""))
        return valid, {"protocol": "standard", "standard": "iemocap", "dialogues": valid,
                       "note": "the 12 validation dialogues of the standard IEMOCAP split (taken out of the "
                               "pickle's train list)"}, checks
    if "fraction" in spec:
        fraction, seed = float(spec["fraction"]), int(spec.get("seed", 0))
        try:
            record = manifest_io.held_out_record(train, fraction, seed, "the pickle's")
        except ValueError as err:
            raise PickleFormatError(f"{ds.source}: {err}") from None
        return record["dialogues"], record, checks
    if "dialogues" in spec:
        valid = [str(v) for v in spec["dialogues"]]
        return valid, {"protocol": "dialogues", "dialogues": valid,
                       "note": "train dialogues listed in the configuration"}, checks
    raise ValueError(f"valid_split {dict(spec)!r}: use {{standard: iemocap}}, {{fraction: F, seed: S}}, "
                     "{dialogues: [...]} or none")


def import_pickle(pickle_path: str | Path, manifest_path: str | Path | None, feature_paths: Mapping[str, str | Path],
                  *, allow_pickle: bool = False, fmt: str | None = None, dataset: str | None = None,
                  valid_dialogues: Sequence[str] | None = None, valid_split: Mapping | str | None = None,
                  classes: Sequence[str] | None = None, layouts: Sequence[str] | None = None,
                  dataset_format: str | None = None, how_to_allow: str = "pass allow_pickle=True") -> dict:
    """Write a manifest (+ issues.tsv and summary.json beside it) and the requested modality files (keys of
    feature_paths) from a pickle; returns a summary.

    manifest_path None writes only the feature files. valid_split / valid_dialogues: how `valid` is
    formed (choose_valid; None: no valid split, "default": the standard IEMOCAP validation dialogues, or
    a seeded 10 % of MELD's train dialogues). classes: class names in label-id order when not fmt's. layouts: the layouts the
    caller accepts (the config's format: vega_pickle -> vega7, sdt_pickle -> sdt12/sdt13).
    dataset_format: summary.json's "format" (default vega_pickle / sdt_pickle from the layout).
    how_to_allow: the refusal's wording of how to opt in (see load_pickle)."""
    from ercpipe.datasets import ReadResult
    from ercpipe.datasets.summary import write_manifest
    from ercpipe.io.manifest import IssueLog

    _check_modalities(feature_paths, require_all=False)
    pickle_path = Path(pickle_path)
    ds = parse_pickle(load_pickle(pickle_path, allow_pickle=allow_pickle, how_to_allow=how_to_allow), fmt=fmt,
                      source=str(pickle_path), classes=classes)
    check_layout(ds, layouts, dataset_format)
    valid, split_record, checks = choose_valid(ds, valid_split, valid_dialogues)
    frame, feature_sets = to_project(ds, dataset=dataset, valid_dialogues=valid)
    digest = file_digest(pickle_path, length=64)
    if manifest_path is not None:
        if Path(manifest_path).name != "manifest.tsv":  # beside issues.tsv and summary.json, as every route writes it
            raise ValueError(f"{manifest_path}: the manifest is written as manifest.tsv; give a path of that name")
        # The manifest is written last and means that the folder's files are one import. A re-import killed
        # between its feature files would otherwise leave the previous manifest beside a mix of both pickles.
        Path(manifest_path).unlink(missing_ok=True)
    for m, path in feature_paths.items():
        fs = feature_sets[m]
        fs.attrs.update({"source_file": str(pickle_path), "source_sha256": digest})
        feature_io.write(path, fs)
    dims = {m: feature_sets[m].dim for m in MODALITIES}
    absent = {m: int((~feature_sets[m].present).sum()) for m in MODALITIES}
    summary = {"layout": ds.layout, "format": ds.fmt, "dialogues": len(ds.dialogues), "utterances": len(frame),
               "splits": frame.groupby("split")["dialogue_id"].nunique().to_dict(),
               "dims": dims, "source_sha256": digest, "valid_split": split_record}
    if manifest_path is not None:
        info = {"source": {"kind": "pickle", "path": str(pickle_path), "sha256": digest, "layout": ds.layout,
                           "labels": ds.fmt},
                "valid_split": split_record,
                "modalities": {m: {"dim": dims[m], "all_zero_rows": absent[m]} for m in MODALITIES},
                "pickle_splits": {"train": sum(1 for d in ds.dialogues if ds.splits[d] == "train"),
                                  "test": sum(1 for d in ds.dialogues if ds.splits[d] == "test")},
                "not_imported": {"dialogues": len(ds.unlisted), "first": ds.unlisted[:20],
                                 "why": "in neither the train nor the test id list (the official loaders skip "
                                        "them too), or holding no utterances"}}
        result = ReadResult(frame, IssueLog(), ds.class_names(), checks=checks, info=info)
        name = dataset or ds.fmt
        write_manifest(name, dataset_format or PICKLE_FORMAT_OF_LAYOUT[ds.layout], frame, result,
                       Path(manifest_path).parent)
    logger.info("imported %s (%s, %s): %s", pickle_path, ds.layout, ds.fmt,
                {k: v for k, v in summary.items() if k != "valid_split"})
    return summary


# ----------------------------------------------------------------------------------------- pipeline datasets

PICKLE_FORMATS: dict[str, tuple[str, ...]] = {"vega_pickle": ("vega7",), "sdt_pickle": ("sdt12", "sdt13")}
PICKLE_FORMAT_OF_LAYOUT = {layout: fmt for fmt, layouts in PICKLE_FORMATS.items() for layout in layouts}
LAYOUT_NAMES = {"vega7": "a VEGA 7-tuple", "sdt12": "an SDT 12-tuple", "sdt13": "an SDT 13-tuple"}


def check_layout(ds: PickleDataset, layouts: Sequence[str] | None, dataset_format: str | None) -> None:
    if layouts and ds.layout not in layouts:
        fix = PICKLE_FORMAT_OF_LAYOUT[ds.layout]
        raise PickleFormatError(f"{ds.source} holds {LAYOUT_NAMES[ds.layout]}, not what format "
                                f"{dataset_format or '?'} reads ({', '.join(LAYOUT_NAMES[x] for x in layouts)}); "
                                f"set format: {fix}")


def dataset_import_args(name: str, cfg: Mapping) -> dict:
    """import_pickle's keyword arguments for the config's dataset `name` (format vega_pickle / sdt_pickle)."""
    return {"allow_pickle": cfg.get("allow_pickle") is True, "fmt": cfg.get("labels"), "dataset": name,
            "valid_split": cfg.get("valid_split", "default"), "classes": cfg.get("classes"),
            "layouts": PICKLE_FORMATS[cfg["format"]], "dataset_format": cfg["format"],
            "how_to_allow": f"set datasets.{name}.allow_pickle: true"}


def import_dataset(name: str, cfg: Mapping, out_dir: str | Path) -> dict:
    """Rule import_pickle: out_dir/manifest.tsv, issues.tsv, summary.json of a configured pickle dataset."""
    return import_pickle(cfg["path"], Path(out_dir) / "manifest.tsv", {}, **dataset_import_args(name, cfg))


def import_dataset_features(name: str, cfg: Mapping, modality: str, out_path: str | Path,
                            expected_layout: str | None = None) -> dict:
    """Rule import_pickle_features: one modality's feature file of a configured pickle dataset.

    expected_layout: the layout the feature setting names (features.{modality}.{setting}.layout), if any."""
    args = dataset_import_args(name, cfg)
    if expected_layout is not None:
        args["layouts"] = [x for x in args["layouts"] if x == expected_layout] or [expected_layout]
    args["valid_split"] = None  # the feature file does not depend on the split
    return import_pickle(cfg["path"], None, {modality: out_path}, **args)


_INSPECTED: dict[tuple, dict] = {}
# inspect_dataset's results on disk, so a cluster job's re-parse of the Snakefile (and the next snakemake call)
# does not unpickle a large release again: keyed by the file's path, size, mtime and the dataset's settings.
INSPECTION_CACHE = Path(".snakemake") / "ercpipe" / "pickle_checks"
_INSPECTION_VERSION = 2  # 2: with the file's sha256


def inspect_dataset(name: str, cfg: Mapping, workdir: str | Path = ".") -> dict:
    """What a configured pickle dataset holds, checked as the import will check it (layout, labels, speakers,
    widths, the validation split): {layout, labels, classes, dims, dialogues, utterances, valid_split, sha256}.

    Run while the DAG is built, so a pickle of the wrong shape stops `snakemake` (also -n) before any job,
    naming the file. Unpickles the file (only with allow_pickle: true; without it, PickleNotAllowedError
    naming datasets.NAME.allow_pickle). A passed check is cached by path, size, mtime and the dataset's
    settings, in this process and in workdir/.snakemake/ercpipe/pickle_checks/ (a failed one is not).
    """
    path = Path(cfg["path"])
    path = path if path.is_absolute() else Path(workdir) / path
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns,
           json.dumps({k: cfg.get(k) for k in ("format", "labels", "classes", "valid_split", "allow_pickle")},
                      sort_keys=True, default=str), _INSPECTION_VERSION)
    import hashlib

    cache_file = Path(workdir) / INSPECTION_CACHE / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:32]}.json"
    if key not in _INSPECTED and cfg.get("allow_pickle") is True and cache_file.is_file():
        try:
            _INSPECTED[key] = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            pass
    if key not in _INSPECTED:
        args = dataset_import_args(name, cfg)
        ds = parse_pickle(load_pickle(path, allow_pickle=args["allow_pickle"], how_to_allow=args["how_to_allow"]),
                          fmt=args["fmt"], source=str(cfg["path"]), classes=args["classes"])
        check_layout(ds, args["layouts"], args["dataset_format"])
        valid, record, _ = choose_valid(ds, args["valid_split"])
        for vid in ds.dialogues:  # speakers as the import reads them
            for k, value in enumerate(ds.speakers[vid]):
                _speaker(ds.fmt, value, vid, k, ds.source)
        not_train = [v for v in valid if ds.splits.get(v) != "train"]
        if not_train:
            raise PickleFormatError(f"{cfg['path']}: valid dialogue(s) {not_train[:5]} are not train dialogues of "
                                    f"the pickle (datasets.{name}.valid_split)")
        _INSPECTED[key] = {
            "layout": ds.layout, "labels": ds.fmt, "classes": list(ds.class_names()),
            "dims": {m: int(next(iter(ds.features[m].values())).shape[1]) if ds.dialogues else 0 for m in MODALITIES},
            "dialogues": {"train": sum(1 for d in ds.dialogues if ds.splits[d] == "train") - len(valid),
                          "valid": len(valid), "test": sum(1 for d in ds.dialogues if ds.splits[d] == "test")},
            "utterances": sum(len(v) for v in ds.labels.values()), "valid_split": record["protocol"],
            # The import rules re-run on this, not on the path or mtime (a byte-identical copy re-imports nothing).
            "sha256": file_digest(path, length=64)}
        try:
            from ercpipe.io.atomic import write_json

            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_json(cache_file, _INSPECTED[key])
        except OSError as err:  # a read-only working directory: check again next time
            logger.debug("cannot cache the pickle check in %s: %s", cache_file, err)
    return _INSPECTED[key]


# ----------------------------------------------------------------------------------------- project ->

def _format_of(labels: Iterable[str], source: str) -> str:
    seen = set(labels)
    for fmt, classes in CLASSES_BY_FORMAT.items():
        if seen <= set(classes):
            return fmt
    raise ValueError(f"{source}: labels {sorted(seen)[:8]} are neither IEMOCAP's {list(CLASSES_BY_FORMAT['iemocap'])} "
                     f"nor MELD's {list(CLASSES_BY_FORMAT['meld'])}; the pickle stores class ids of one of them")


def _speaker_value(fmt: str, slot: int, utterance_id: str):
    if fmt == "iemocap":
        if slot not in (0, 1):
            raise ValueError(f"utterance {utterance_id}: IEMOCAP speaker_slot {slot} is not 0 (M) or 1 (F)")
        return "M" if slot == 0 else "F"
    if not 0 <= slot < MELD_SPEAKER_SLOTS:
        raise ValueError(f"utterance {utterance_id}: speaker_slot {slot} does not fit MELD's "
                         f"{MELD_SPEAKER_SLOTS}-slot one-hot speaker vector")
    vector = [0] * MELD_SPEAKER_SLOTS
    vector[slot] = 1
    return vector


def to_vega_tuple(frame: pd.DataFrame, feature_sets: Mapping[str, feature_io.FeatureSet], fmt: str | None = None,
                  valid_as: str = "train", source: str = "manifest") -> tuple:
    """The VEGA 7-tuple of a manifest frame and its three feature sets (dialogues in manifest order)."""
    if valid_as not in ("train", "drop"):
        raise ValueError(f"valid_as must be 'train' (valid dialogues join the train ids) or 'drop', got {valid_as!r}")
    fmt = fmt or _format_of(frame["label"], source)
    class_id = {c: i for i, c in enumerate(CLASSES_BY_FORMAT[fmt])}
    speakers, labels, train, test = {}, {}, [], []
    arrays: dict[str, dict[str, np.ndarray]] = {m: {} for m in MODALITIES}
    for vid, group in frame.groupby("dialogue_id", sort=False):
        split = group["split"].iat[0]
        if split == "valid" and valid_as == "drop":
            continue
        ids = group["utterance_id"].tolist()
        unknown = sorted(set(group["label"]) - set(class_id))
        if unknown:
            raise ValueError(f"{source}: dialogue {vid} has label(s) {unknown} that are not {fmt} classes")
        labels[vid] = [class_id[x] for x in group["label"]]
        speakers[vid] = [_speaker_value(fmt, int(s), u) for s, u in zip(group["speaker_slot"], ids)]
        for m in MODALITIES:
            values, present = feature_sets[m].rows(ids)
            # Absent rows are zeros in the official layout (the file may hold anything there).
            arrays[m][vid] = np.where(present[:, None], values, 0.0).astype(np.float32)
        (test if split == "test" else train).append(vid)
        if fmt == "iemocap" and len(ids) == 1:
            logger.warning("%s: dialogue %s has one utterance; VEGA's loader squeezes its 1 x D text array to 1-D "
                           "and the official code will fail on it", source, vid)
    return speakers, labels, arrays["text"], arrays["audio"], arrays["visual"], train, test


def remove_stale_anchor_export(pickle_path: str | Path) -> None:
    """Delete the 35_anchor.pt an earlier export with anchors left beside `pickle_path`: the official code would
    read it with the new features as if it belonged to them."""
    stale = Path(pickle_path).with_name("35_anchor.pt")
    if stale.exists():
        stale.unlink()
        logger.info("removed %s: this export names no anchors now", stale)


def export_vega(manifest_path: str | Path, feature_paths: Mapping[str, str | Path], out_path: str | Path, *,
                fmt: str | None = None, valid_as: str = "train") -> dict:
    """Write our manifest + text/audio/visual files as VEGA's 7-tuple pickle (atomically); returns a summary."""
    _check_modalities(feature_paths, require_all=True)
    frame = manifest_io.read(manifest_path)
    feature_sets = {m: feature_io.read(feature_paths[m]) for m in MODALITIES}
    for m, fs in feature_sets.items():
        held = fs.attrs.get("modality")
        if held not in (None, m):
            raise ValueError(f"{feature_paths[m]} holds {held!r} features but was given as the {m!r} file")
        missing = sorted(set(frame["utterance_id"]) - set(fs.utterance_ids))
        if missing:
            raise ValueError(f"{feature_paths[m]} lacks {len(missing)} of the manifest's utterances (e.g. "
                             f"{missing[:3]}); extract it for this manifest")
    vega = to_vega_tuple(frame, feature_sets, fmt=fmt, valid_as=valid_as, source=str(manifest_path))
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as handle:
            pickle.dump(vega, handle, protocol=4)
    summary = {"train_dialogues": len(vega[5]), "test_dialogues": len(vega[6]),
               "dims": {m: feature_sets[m].dim for m in MODALITIES}}
    logger.info("exported %s to %s: %s", manifest_path, out_path, summary)
    return summary
