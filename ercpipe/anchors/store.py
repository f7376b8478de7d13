"""Anchor files: the AnchorSet in memory, its HDF5 form, and the official `35_anchor.pt` format.

HDF5 layout (anchors/{set}/{clip_name}.h5):
    /class_names            UTF-8 strings [C], canonical emotion names in the dataset's label order
    /centers                float32 [C, k], class center = mean of the class's normalized image features
    /image_features/{i}     float32 [n_i, k], one L2-normalized CLIP embedding per image of class i
    /image_paths/{i}        UTF-8 strings [n_i], image paths relative to the set folder ([0] if unknown)
    attributes              kind, format_version, clip_model, clip_name, pretrained ("" = random init),
                            dim, setting_hash, settings (JSON), versions (JSON), source, counts (JSON),
                            dataset_labels (JSON), created

The official file (spec 3.1) is a torch-saved dict
    {"anchor_center": tensor [C, k], "anchor_img_dict": {label name: {"feature": tensor [n, k]}}}
whose label names are the spec table 1.3 strings, which are exactly ercpipe's canonical emotion names.
"""
from __future__ import annotations

import datetime as _dt
import difflib
import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from ercpipe import clip_setting
from ercpipe.errors import ErcpipeError
from ercpipe.io.atomic import atomic_hdf5
from ercpipe.io.digest import file_digest
from ercpipe.io.filekind import file_kind
from ercpipe.io.features import package_versions, settings_hash
from ercpipe.labels import canonical_emotion

logger = logging.getLogger(__name__)

KIND = "ercpipe-anchors"
FORMAT_VERSION = 1
UNIT_NORM_TOLERANCE = 1e-3  # float32 rows written by us are within 1e-6; imported files may be fp16
CENTER_TOLERANCE = 1e-4  # |center - mean of rows| allowed before an imported file is questioned
_STR = h5py.string_dtype(encoding="utf-8")


class AnchorFileError(ErcpipeError, ValueError):
    """An anchor file is missing, malformed or does not match the run; the message says what to do."""


@dataclass
class AnchorSet:
    """CLIP anchors of one image set, in the dataset's label order."""

    class_names: list[str]  # canonical emotion names, label order
    centers: np.ndarray  # float32 [C, k]
    image_features: dict[str, np.ndarray]  # class -> float32 [n_c, k], rows L2-normalized
    image_paths: dict[str, list[str]]  # class -> paths relative to the set folder; [] when unknown (imports)
    clip_model: str  # open_clip architecture name, e.g. "ViT-B-32"
    pretrained: str | None  # open_clip tag, checkpoint path, or None (random init)
    dim: int  # k
    clip_name: str = ""  # filesystem-safe name of the CLIP setting (file name of the HDF5)
    setting_hash: str = ""
    settings: dict = field(default_factory=dict)
    source: str = ""  # "images:<folder>" or "official:<file> sha256:<digest>"
    versions: dict = field(default_factory=dict)
    dataset_labels: list[str] = field(default_factory=list)  # the dataset's own spellings, when known

    def counts(self) -> dict[str, int]:
        return {name: int(self.image_features[name].shape[0]) for name in self.class_names}

    def for_classes(self, dataset_classes: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Centers [C, k] and per-class image features [n_c, k] in the order of `dataset_classes`.

        Dataset labels are matched through canonical_emotion ("hap", "joy" -> "happy"), so one
        anchor set serves every dataset whose classes it covers.
        """
        # Stored names are matched through canonical_emotion too: a set written by hand (AnchorSet(...).write)
        # may spell its classes as a dataset does ("angry" for "anger").
        index = {canonical_emotion(name): i for i, name in enumerate(self.class_names)}
        if len(index) < len(self.class_names):
            canonical = [canonical_emotion(n) for n in self.class_names]
            raise AnchorFileError(f"anchor set ({self.source or self.clip_name}) holds one emotion under two names "
                                  f"{self.class_names} (canonical: {canonical}); keep one folder per emotion and "
                                  "rebuild the anchors")
        wanted = [canonical_emotion(c) for c in dataset_classes]
        missing = [f"{label!r} (as {name!r})" for label, name in zip(dataset_classes, wanted) if name not in index]
        if missing:
            raise AnchorFileError(
                f"anchor set ({self.source or self.clip_name}) has no anchors for class(es) {', '.join(missing)}; "
                f"it holds {self.class_names}. Add an image folder for each missing class and rebuild the anchors.")
        centers = np.stack([self.centers[index[name]] for name in wanted]).astype(np.float32, copy=False)
        return centers, [self.image_features[self.class_names[index[name]]] for name in wanted]

    def check(self, where: str = "anchor set") -> None:
        """Raise AnchorFileError naming the first broken invariant (shapes, norms, names)."""
        names = list(self.class_names)
        if not names:
            raise AnchorFileError(f"{where}: no classes")
        if len(set(names)) != len(names):
            raise AnchorFileError(f"{where}: duplicate class names {names}")
        if self.centers.shape != (len(names), self.dim):
            raise AnchorFileError(f"{where}: centers have shape {self.centers.shape}, expected "
                                  f"({len(names)}, {self.dim}) for classes {names}")
        if not np.isfinite(self.centers).all():
            raise AnchorFileError(f"{where}: non-finite values in the class centers")
        for name in names:
            if name not in self.image_features:
                raise AnchorFileError(f"{where}: no image features for class {name!r}")
            feats = self.image_features[name]
            if feats.ndim != 2 or feats.shape[0] < 1 or feats.shape[1] != self.dim:
                raise AnchorFileError(f"{where}: image features of class {name!r} have shape {feats.shape}, "
                                      f"expected (n >= 1, {self.dim})")
            norms = np.linalg.norm(feats.astype(np.float64), axis=1)
            if not np.isfinite(norms).all() or np.abs(norms - 1).max() > UNIT_NORM_TOLERANCE:
                raise AnchorFileError(f"{where}: image features of class {name!r} are not L2-normalized "
                                      f"(norms {norms.min():.4f}..{norms.max():.4f})")
            paths = self.image_paths.get(name, [])
            if paths and len(paths) != feats.shape[0]:
                raise AnchorFileError(f"{where}: class {name!r} has {feats.shape[0]} feature rows but "
                                      f"{len(paths)} image paths")


# ----------------------------------------------------------------------------------------- HDF5

def _json_attr(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def write(path: str | Path, anchors: AnchorSet) -> None:
    """Write an anchor set atomically (layout in the module docstring)."""
    path = Path(path)
    anchors.check(str(path))
    with atomic_hdf5(path) as f:
        f.create_dataset("class_names", data=np.array(anchors.class_names, dtype=object), dtype=_STR)
        f.create_dataset("centers", data=np.asarray(anchors.centers, dtype=np.float32))
        feats_group, paths_group = f.create_group("image_features"), f.create_group("image_paths")
        for i, name in enumerate(anchors.class_names):
            feats_group.create_dataset(str(i), data=np.asarray(anchors.image_features[name], dtype=np.float32))
            paths_group.create_dataset(str(i), data=np.array(anchors.image_paths.get(name, []), dtype=object),
                                       dtype=_STR)
        attrs = {
            "kind": KIND, "format_version": FORMAT_VERSION, "clip_model": anchors.clip_model,
            "clip_name": anchors.clip_name or anchors.clip_model, "pretrained": anchors.pretrained or "",
            "dim": int(anchors.dim), "setting_hash": anchors.setting_hash or settings_hash(anchors.settings),
            "settings": _json_attr(anchors.settings), "versions": _json_attr(anchors.versions),
            "source": anchors.source, "counts": _json_attr(anchors.counts()),
            "dataset_labels": _json_attr(list(anchors.dataset_labels)),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        f.attrs.update(attrs)
    logger.info("wrote anchors %s: CLIP %s, dim %d, images per class %s", path, anchors.clip_name or anchors.clip_model,
                anchors.dim, anchors.counts())


def _strings(dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in dataset[()]]


def _same_clip_model(expected: str, anchors: AnchorSet) -> bool:
    # "ViT-B/32" (OpenAI / Hugging Face spelling) and "ViT-B-32" (open_clip) name the same model.
    def norm(s: str) -> str:
        return s.strip().replace("/", "-").lower()
    return norm(expected) in {norm(anchors.clip_model), norm(anchors.clip_name)}


def read(path: str | Path, expect_clip_model: str | None = None) -> AnchorSet:
    """Read and check an anchor file; with expect_clip_model, refuse anchors of another CLIP model (spec O16)."""
    path = Path(path)
    if not path.exists():
        raise AnchorFileError(f"anchor file {path} does not exist; build it with the anchors rule "
                              "(encode_image_set) or import an official file (import_official)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("kind") != KIND:
                raise AnchorFileError(f"{path} is an HDF5 file but not an ercpipe anchor file (attribute kind = "
                                      f"{f.attrs.get('kind')!r}); point the run at anchors/<set>/<clip>.h5")
            names = _strings(f["class_names"])
            centers = f["centers"][()].astype(np.float32, copy=False)
            feats = {n: f["image_features"][str(i)][()].astype(np.float32, copy=False) for i, n in enumerate(names)}
            paths = {n: _strings(f["image_paths"][str(i)]) for i, n in enumerate(names)}
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except (OSError, KeyError) as err:
        kind = file_kind(path)
        if kind != "an HDF5 file":
            hint = ("; an official 35_anchor.pt is converted first with `ercpipe import-anchors`"
                    if kind.startswith(("a zip archive", "a pickle")) else "")
            raise AnchorFileError(f"{path} is not an anchor file: it is {kind}, where an HDF5 anchor file "
                                  f"(anchors/SET/CLIP.h5) is expected{hint}") from err
        raise AnchorFileError(f"{path} is an HDF5 file but not a readable anchor file ({err}); if the pipeline "
                              "wrote it, delete it and re-run its rule") from err
    anchors = AnchorSet(
        class_names=names, centers=centers, image_features=feats, image_paths=paths,
        clip_model=str(attrs["clip_model"]), pretrained=str(attrs.get("pretrained", "")) or None,
        dim=int(attrs["dim"]), clip_name=str(attrs.get("clip_name", "")),
        setting_hash=str(attrs.get("setting_hash", "")),
        settings=json.loads(attrs.get("settings", "{}")), source=str(attrs.get("source", "")),
        versions=json.loads(attrs.get("versions", "{}")), dataset_labels=json.loads(attrs.get("dataset_labels", "[]")))
    anchors.check(str(path))
    if expect_clip_model is not None and not _same_clip_model(expect_clip_model, anchors):
        raise AnchorFileError(
            f"{path} holds anchors encoded with CLIP {anchors.clip_model} (pretrained {anchors.pretrained}, "
            f"dim {anchors.dim}), but this run expects {expect_clip_model}. Anchors from one CLIP variant must "
            f"not be used with another: rebuild the anchors with clip model {expect_clip_model} or point the "
            "run at the anchor file built with it.")
    return anchors


# ----------------------------------------------------------------------------------------- official format

# torch.save's legacy (non-zip) files start with a pickle of the magic number 0x1950a86a20f9469cfc6c
# (opcode LONG1, 10 bytes), after the protocol header (and a frame header from protocol 4 on).
_TORCH_LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
OFFICIAL_LAYOUT = "a torch-saved dict with anchor_center and anchor_img_dict, as the official 35_anchor.pt"


def _is_torch_file(path: Path) -> bool:
    """True for what torch.save writes: a zip archive holding */data.pkl, or the legacy pickle format."""
    import zipfile

    with open(path, "rb") as handle:
        head = handle.read(32)
    if head.startswith(b"\x80") and _TORCH_LEGACY_MAGIC in head:
        return True
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name == "data.pkl" or name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _unpickling_reason(err: BaseException) -> str:
    """The useful part of torch's weights_only refusal: the global it would have to import."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds an object of class {found.group(1)}"
    found = re.search(r"unsupported GLOBAL ([\w.]+) whose module ([\w.]+) is blocked", text)
    if found:  # torch refuses such modules (os, subprocess ...) outright: the file would run their code
        return f"it would call {found.group(1)} (module {found.group(2)}, which runs code or commands)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _load_torch_file(pt_path: Path, allow_pickle: bool, how_to_allow: str = "pass allow_pickle=True"):
    import torch

    if not pt_path.exists():
        raise AnchorFileError(f"official anchor file {pt_path} does not exist")
    if not pt_path.is_file():
        raise AnchorFileError(f"official anchor file {pt_path} is not a file")
    if not _is_torch_file(pt_path):
        raise AnchorFileError(f"{pt_path} is not a torch file of the expected layout ({OFFICIAL_LAYOUT}); "
                              "point at the official anchor file")
    try:
        return torch.load(pt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickling_reason(err)
        if not allow_pickle:
            raise AnchorFileError(
                f"refusing to unpickle {pt_path}: it cannot be loaded as plain tensors (torch.load "
                f"weights_only=True: {reason}) and needs full unpickling, which can run arbitrary code stored "
                f"in the file; only if you trust where it came from, {how_to_allow}") from err
        logger.warning("%s needs full unpickling (%s); loading it because allow_pickle=True", pt_path, reason)
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise AnchorFileError(f"{pt_path} is not a readable torch file ({_unpickling_reason(err)}); "
                              f"expected {OFFICIAL_LAYOUT}") from err
    try:
        return torch.load(pt_path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - anything an arbitrary pickle raises
        raise AnchorFileError(f"{pt_path} could not be unpickled ({type(err).__name__}: {err})") from err


def _as_matrix(value, what: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 2:
        raise AnchorFileError(f"{what} has shape {array.shape}; expected a 2-D [rows, dim] tensor")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise AnchorFileError(f"{what}: row {int(bad[0])} holds non-finite values (NaN or inf; {bad.size} row(s) in "
                              "all); the file is damaged: rebuild it from its images")
    return array


def _known_embed_dim(clip_model: str) -> int | None:
    try:
        import open_clip
    except ImportError:  # pragma: no cover - open_clip is pinned, but the check is only a courtesy
        return None
    config = open_clip.get_model_config(clip_model.replace("/", "-"))
    return int(config["embed_dim"]) if config else None


def _open_clip_architectures() -> list[str] | None:
    """The architectures open_clip registers (one JSON per name in its model_configs folder), read without importing
    open_clip: the import takes seconds, and the CLI checks the name before it reads anything."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    names = sorted(p.stem for p in folder.glob("*.json"))
    return names or None


def require_known_clip_model(clip_model: str) -> None:
    """Refuse a CLIP name open_clip does not know (a misspelt --clip-model would otherwise be recorded and refused
    only when training compares it with the experiment's CLIP)."""
    name = clip_model.strip().replace("/", "-")
    known = _open_clip_architectures()
    if known is None or ":" in name:  # a schema name (hf-hub:, local-dir:) is resolved by open_clip itself
        import open_clip

        found, known = bool(open_clip.get_model_config(name)), open_clip.list_models()
    else:
        found = name in known
    if not found:
        close = difflib.get_close_matches(name, known, n=3)
        raise AnchorFileError(f"CLIP {clip_model!r} is not a model open_clip knows" +
                              (f" (did you mean {', '.join(close)}?)" if close else "") +
                              "; give the open_clip name of the CLIP the file was built with (official config: "
                              "ViT-B-32)")



def import_official(pt_path: str | Path, out_path: str | Path, class_names: Sequence[str], clip_model: str,
                    allow_pickle: bool = False, how_to_allow: str = "pass allow_pickle=True",
                    clip_name: str | None = None, pretrained: str | None = "openai") -> AnchorSet:
    """Convert an official `35_anchor.pt` into an ercpipe anchor file.

    class_names: the dataset's labels in label-id order (the order of the file's anchor_center rows).
    clip_model: the open_clip name of the CLIP the file was built with (the official config: ViT-B-32
    with OpenAI weights); it is recorded so read(expect_clip_model=...) can refuse a mismatch.
    A file that needs full unpickling is refused unless allow_pickle; how_to_allow words the opt-in for
    the caller's user (the CLI: "add --allow-pickle"). A file torch.save did not write is refused.
    clip_name: the file-system name of the CLIP setting to record (the pipeline's anchors/{set}/{clip}.h5
    name, e.g. ViT-B-32_openai; default: the name of clip_model with the OpenAI weights recorded here,
    the same name the pipeline gives such a set).
    """
    pt_path = Path(pt_path)
    data = _load_torch_file(pt_path, allow_pickle, how_to_allow)
    if not isinstance(data, dict) or "anchor_center" not in data or "anchor_img_dict" not in data:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise AnchorFileError(f"{pt_path} is not an official anchor file: expected a dict with anchor_center and "
                              f"anchor_img_dict, found {keys}")
    canonical = [canonical_emotion(c) for c in class_names]
    if len(set(canonical)) != len(canonical):
        raise AnchorFileError(f"class names {list(class_names)} map to duplicate emotions {canonical}")
    centers = _as_matrix(data["anchor_center"], f"{pt_path}: anchor_center")
    if centers.shape[0] != len(canonical):
        raise AnchorFileError(f"{pt_path}: anchor_center has {centers.shape[0]} rows but {len(canonical)} classes "
                              f"were given ({list(class_names)}); pass the dataset's classes in label-id order")
    img_dict = data["anchor_img_dict"]
    if not isinstance(img_dict, dict):
        raise AnchorFileError(f"{pt_path}: anchor_img_dict is a {type(img_dict).__name__}, expected a dict")
    by_name = {}
    for key, entry in img_dict.items():
        name = canonical_emotion(str(key))
        if name in by_name:
            raise AnchorFileError(f"{pt_path}: anchor_img_dict has two entries for {name!r}")
        by_name[name] = (str(key), entry)
    missing = [c for c in canonical if c not in by_name]
    extra = sorted(k for k, _ in by_name.values() if canonical_emotion(k) not in canonical)
    if missing or extra:
        raise AnchorFileError(f"{pt_path}: anchor_img_dict classes {sorted(k for k, _ in by_name.values())} do not "
                              f"match the dataset's classes {canonical} (missing {missing}, extra {extra})")
    dim = centers.shape[1]
    feats: dict[str, np.ndarray] = {}
    for name in canonical:
        key, entry = by_name[name]
        if not isinstance(entry, dict) or "feature" not in entry:
            raise AnchorFileError(f"{pt_path}: anchor_img_dict[{key!r}] has no 'feature' entry")
        dropped = sorted(str(k) for k in entry if k != "feature")
        if dropped:  # the official loader strips these too (spec 3.1)
            logger.info("%s: ignoring extra key(s) %s of class %s", pt_path, dropped, key)
        rows = _as_matrix(entry["feature"], f"{pt_path}: anchor_img_dict[{key!r}]['feature']")
        if rows.shape[1] != dim or rows.shape[0] < 1:
            raise AnchorFileError(f"{pt_path}: class {key!r} features have shape {rows.shape}; "
                                  f"expected (n >= 1, {dim})")
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        if (norms < 1e-6).any():
            raise AnchorFileError(f"{pt_path}: anchor_img_dict[{key!r}]['feature'] row "
                                  f"{int(np.flatnonzero(norms < 1e-6)[0])} is all zeros, which is no direction to "
                                  "sample; the file is damaged: rebuild it from its images")
        if np.abs(norms - 1).max() > UNIT_NORM_TOLERANCE:
            # The official sampler renormalizes each anchor before use, so renormalizing rows changes nothing.
            logger.warning("%s: class %s image features are not unit length (%.4f..%.4f); renormalizing them",
                           pt_path, key, norms.min(), norms.max())
            rows = rows / np.maximum(norms, 1e-12)
        feats[name] = rows.astype(np.float32)
    _check_center_order(pt_path, canonical, centers, feats)
    known_dim = _known_embed_dim(clip_model)
    if known_dim is not None and known_dim != dim:
        raise AnchorFileError(f"{pt_path} holds {dim}-d anchors, but CLIP {clip_model} embeds in {known_dim} "
                              "dimensions; give the clip_model the file was built with (official config: ViT-B-32)")
    digest = file_digest(pt_path)
    settings = {"model": clip_model, "pretrained": pretrained, "imported_from": pt_path.name, "sha256": digest}
    anchors = AnchorSet(
        class_names=canonical, centers=centers, image_features=feats, image_paths={c: [] for c in canonical},
        clip_model=clip_model, pretrained=pretrained, dim=dim, settings=settings,
        clip_name=clip_name or clip_setting.clip_name({"model": clip_model, "pretrained": pretrained}),
        setting_hash=settings_hash(settings), source=f"official:{pt_path.name} sha256:{digest}",
        versions=package_versions(["torch", "h5py", "numpy", "ercpipe"]), dataset_labels=[str(c) for c in class_names])
    write(out_path, anchors)
    return anchors


def _check_center_order(pt_path: Path, names: list[str], centers: np.ndarray, feats: dict[str, np.ndarray]) -> None:
    """The official centers are the means of each class's rows; a permutation means the class order is wrong."""
    means = np.stack([feats[n].mean(axis=0) for n in names])
    dist = np.abs(centers[:, None, :] - means[None, :, :]).max(axis=2)  # [center row, class]
    for i, name in enumerate(names):
        if dist[i, i] <= CENTER_TOLERANCE:
            continue
        j = int(dist[i].argmin())
        if j != i and dist[i, j] <= CENTER_TOLERANCE:
            raise AnchorFileError(
                f"{pt_path}: anchor_center row {i} is the mean of class {names[j]!r}'s images, not of {name!r}; "
                f"the class order given ({names}) is not the file's label-id order")
        logger.warning("%s: anchor_center row %d differs from the mean of class %s's images by %.2e; keeping the "
                       "file's center", pt_path, i, name, dist[i, i])


def export_official(anchor_set_or_path: AnchorSet | str | Path, pt_path: str | Path,
                    classes: Sequence[str] | None = None) -> None:
    """Write anchors in the official `35_anchor.pt` layout (label names = canonical emotion names).

    `classes`: the dataset's classes in label-id order, which the official code indexes `anchor_center` by; the
    rows are written in that order and only for them (a set shared by datasets holds their union, in the order
    the experiments name it). None = every class of the set in its own order."""
    import torch

    from ercpipe.model.checkpoint import save_torch

    anchors = anchor_set_or_path if isinstance(anchor_set_or_path, AnchorSet) else read(anchor_set_or_path)
    anchors.check("anchor set to export")
    if classes is None:
        names, centers = list(anchors.class_names), anchors.centers
        features = [anchors.image_features[name] for name in names]
    else:
        names = [canonical_emotion(c) for c in classes]
        if len(set(names)) != len(names):
            raise AnchorFileError(f"classes {list(classes)} name one emotion twice (as {names}); the official file "
                                  "has one row and one entry per emotion: give each class once")
        centers, features = anchors.for_classes(classes)
    payload = {
        "anchor_center": torch.from_numpy(np.ascontiguousarray(centers, dtype=np.float32)),
        "anchor_img_dict": {name: {"feature": torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))}
                            for name, rows in zip(names, features)},
    }
    save_torch(payload, pt_path)
    logger.info("wrote official-format anchors %s (classes in label-id order: %s)", pt_path, names)
