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

import json
import logging
import pickle
import re
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
from ercpipe.labels import CLASSES_BY_FORMAT

logger = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("text", "audio", "visual")
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


# ----------------------------------------------------------------------------------------- loading

EXPECTED_LAYOUT = "a VEGA 7-tuple or an SDT 12/13-tuple, docs/features-text.md"


def _file_kind(path: Path) -> str:
    """Why a file is recognisably no pickle without unpickling it (HDF5, zip, empty), or '' if it may be one."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"\x89HDF"):
        return "; it is an HDF5 file (an ercpipe feature file is used as it is, not imported)"
    if head.startswith(b"PK\x03\x04"):
        return "; it is a zip archive (torch.save writes these: not a feature pickle)"
    if not head:
        return "; the file is empty"
    return ""


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
            obj = pickle.load(handle, encoding="latin1")  # latin1: the IEMOCAP releases were pickled by Python 2
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
    if isinstance(ids, (set, frozenset)):  # no stored order: numbers numerically, then names
        logger.info("%s: %s is a set; dialogues are ordered by id", source, what)
        ids = sorted(ids, key=lambda v: (0, int(v), "") if str(v).lstrip("-").isdigit() else (1, 0, str(v)))
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ids]


def _matrix(value, n: int, where: str) -> np.ndarray:
    """An [n, D] float32 array from an array / tensor / nested list (1 x n x D squeezed, as VEGA does)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 1 and n == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] != n:
        raise PickleFormatError(f"{where}: feature array of shape {array.shape} for {n} utterances; expected ({n}, D)")
    if not np.isfinite(array).all():
        row = int(np.where(~np.isfinite(array).all(axis=1))[0][0])
        raise PickleFormatError(f"{where}: utterance {row} has non-finite feature values")
    return array


def _guess_format(layout: str, speakers: dict[str, object]) -> str:
    if layout == "sdt13":
        return "meld"
    if layout == "sdt12":
        return "iemocap"
    for values in speakers.values():
        for value in values:
            return "iemocap" if isinstance(value, (str, bytes)) else "meld"
    raise PickleFormatError("cannot tell IEMOCAP from MELD: the pickle has no utterances; pass fmt=")


def parse_pickle(obj: Sequence, fmt: str | None = None, source: str = "pickle") -> PickleDataset:
    """Check a raw pickle tuple and turn it into a PickleDataset (errors name dialogue and utterance)."""
    layout = LAYOUT_BY_LENGTH.get(len(obj))
    if layout is None:
        raise PickleFormatError(f"{source}: a {len(obj)}-tuple is neither VEGA's 7-tuple nor SDT's 12/13-tuple")
    pos = FIELDS[layout]
    speakers = _str_keys(obj[pos["speakers"]], "speakers", source)
    labels = _str_keys(obj[pos["labels"]], "labels", source)
    raw_features = {m: _str_keys(obj[pos[m]], m, source) for m in MODALITIES}
    fmt = fmt or _guess_format(layout, speakers)
    if fmt not in CLASSES_BY_FORMAT:
        raise ValueError(f"fmt {fmt!r} is not one of {sorted(CLASSES_BY_FORMAT)}")
    n_classes = len(CLASSES_BY_FORMAT[fmt])

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

    ds = PickleDataset(layout, fmt, dialogues, {**{d: "train" for d in train}, **{d: "test" for d in test}},
                       {}, {}, {m: {} for m in MODALITIES}, source=source)
    names = _str_keys(obj[pos["utterances"]], "utterance ids", source) if "utterances" in pos else {}
    sentences = _str_keys(obj[pos["sentences"]], "sentences", source) if "sentences" in pos else {}
    for vid in dialogues:
        for what, mapping in [("labels", labels), ("speakers", speakers)] + list(raw_features.items()):
            if vid not in mapping:
                raise PickleFormatError(f"{source}: dialogue {vid} is in a split list but has no {what}")
        ids = [int(x) for x in np.asarray(labels[vid]).reshape(-1)]
        n = len(ids)
        for k, label in enumerate(ids):
            if not 0 <= label < n_classes:
                raise PickleFormatError(f"{source}: dialogue {vid} utterance {k}: label id {label} is not a "
                                        f"{fmt} class id (0..{n_classes - 1})")
        spk = list(speakers[vid])
        if len(spk) != n:
            raise PickleFormatError(f"{source}: dialogue {vid} has {len(spk)} speakers for {n} labels")
        ds.labels[vid] = ids
        ds.speakers[vid] = spk
        for m in MODALITIES:
            ds.features[m][vid] = _matrix(raw_features[m][vid], n, f"{source}: dialogue {vid} {m}")
        if vid in names and len(list(names[vid])) == n and all(isinstance(u, str) for u in names[vid]):
            ds.utterance_names[vid] = list(names[vid])
        if vid in sentences:
            text = [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in sentences[vid]]
            if len(text) != n:
                raise PickleFormatError(f"{source}: dialogue {vid} has {len(text)} sentences for {n} labels")
            ds.sentences[vid] = text
    for m in MODALITIES:
        dims = {a.shape[1] for a in ds.features[m].values()}
        if len(dims) > 1:
            raise PickleFormatError(f"{source}: {m} features have different widths across dialogues: {sorted(dims)}")
    return ds


# ----------------------------------------------------------------------------------------- -> project

def _speaker(fmt: str, value, vid: str, k: int, source: str) -> tuple[str, int]:
    """(speaker name, speaker_slot) of one utterance."""
    if fmt == "iemocap":
        gender = (value.decode() if isinstance(value, bytes) else str(value)).strip()
        if gender not in IEMOCAP_SPEAKERS:
            raise PickleFormatError(f"{source}: dialogue {vid} utterance {k}: IEMOCAP speaker {value!r} is not "
                                    "'M' or 'F'")
        session = re.match(r"Ses\d\d", vid)
        return (f"{session.group(0)}_{gender}" if session else gender), IEMOCAP_SPEAKERS[gender]
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    vector = np.asarray(value, dtype=np.float32).reshape(-1)
    hot = np.flatnonzero(vector == vector.max()) if vector.size else np.array([])
    if vector.size == 0 or len(hot) != 1 or vector.max() <= 0:
        raise PickleFormatError(f"{source}: dialogue {vid} utterance {k}: MELD speaker {vector.tolist()} is not a "
                                "one-hot vector")
    return f"speaker{int(hot[0])}", int(hot[0])


def to_project(ds: PickleDataset, dataset: str | None = None, valid_dialogues: Sequence[str] | None = None,
               ) -> tuple[pd.DataFrame, dict[str, feature_io.FeatureSet]]:
    """The manifest frame and one FeatureSet per modality (rows in manifest order)."""
    valid = [str(v) for v in (valid_dialogues or [])]
    not_train = [v for v in valid if ds.splits.get(v) != "train"]
    if not_train:
        raise ValueError(f"{ds.source}: valid dialogue(s) {not_train[:5]} are not train dialogues of the pickle; "
                         "valid can only be carved out of the train id list")
    splits = {**ds.splits, **{v: "valid" for v in valid}}
    classes = CLASSES_BY_FORMAT[ds.fmt]
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
    frame = manifest_io.normalise(pd.DataFrame(rows, columns=list(manifest_io.COLUMNS)))
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
        raise ValueError(f"feature_paths lacks {missing}; the VEGA tuple holds text, audio and visual")


def import_pickle(pickle_path: str | Path, manifest_path: str | Path, feature_paths: Mapping[str, str | Path], *,
                  allow_pickle: bool = False, fmt: str | None = None, dataset: str | None = None,
                  valid_dialogues: Sequence[str] | None = None, how_to_allow: str = "pass allow_pickle=True") -> dict:
    """Write a manifest and the requested modality files (keys of feature_paths) from a pickle; returns a summary.

    how_to_allow: the refusal's wording of how to opt in (see load_pickle)."""
    _check_modalities(feature_paths, require_all=False)
    pickle_path = Path(pickle_path)
    ds = parse_pickle(load_pickle(pickle_path, allow_pickle=allow_pickle, how_to_allow=how_to_allow), fmt=fmt,
                     source=str(pickle_path))
    frame, feature_sets = to_project(ds, dataset=dataset, valid_dialogues=valid_dialogues)
    digest = file_digest(pickle_path, length=64)
    for m, path in feature_paths.items():
        fs = feature_sets[m]
        fs.attrs.update({"source_file": str(pickle_path), "source_sha256": digest})
        feature_io.write(path, fs)
    manifest_io.write(frame, manifest_path)
    summary = {"layout": ds.layout, "format": ds.fmt, "dialogues": len(ds.dialogues), "utterances": len(frame),
               "splits": frame.groupby("split")["dialogue_id"].nunique().to_dict(),
               "dims": {m: feature_sets[m].dim for m in MODALITIES}, "source_sha256": digest}
    logger.info("imported %s (%s, %s): %s", pickle_path, ds.layout, ds.fmt, summary)
    return summary


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
            arrays[m][vid] = feature_sets[m].rows(ids)[0].astype(np.float32)
        (test if split == "test" else train).append(vid)
        if fmt == "iemocap" and len(ids) == 1:
            logger.warning("%s: dialogue %s has one utterance; VEGA's loader squeezes its 1 x D text array to 1-D "
                           "and the official code will fail on it", source, vid)
    return speakers, labels, arrays["text"], arrays["audio"], arrays["visual"], train, test


def export_vega(manifest_path: str | Path, feature_paths: Mapping[str, str | Path], out_path: str | Path, *,
                fmt: str | None = None, valid_as: str = "train") -> dict:
    """Write our manifest + text/audio/visual files as VEGA's 7-tuple pickle (atomically); returns a summary."""
    _check_modalities(feature_paths, require_all=True)
    frame = manifest_io.read(manifest_path)
    feature_sets = {m: feature_io.read(feature_paths[m]) for m in MODALITIES}
    vega = to_vega_tuple(frame, feature_sets, fmt=fmt, valid_as=valid_as, source=str(manifest_path))
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as handle:
            pickle.dump(vega, handle, protocol=4)
    summary = {"train_dialogues": len(vega[5]), "test_dialogues": len(vega[6]),
               "dims": {m: feature_sets[m].dim for m in MODALITIES}}
    logger.info("exported %s to %s: %s", manifest_path, out_path, summary)
    return summary
