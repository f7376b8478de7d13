"""HDF5 feature files: one per (dataset, modality, extractor setting).

Layout:
    /utterance_id   variable-length UTF-8 strings [N], manifest order
    /features       float32 [N, D], chunked, gzip-compressed
    /present        bool [N]; False where the modality was missing (row of zeros)
    attributes      modality, extractor, model, dim, setting_hash, settings (JSON), versions (JSON), created

Files are written under a temporary name and renamed, so a killed job leaves nothing that looks complete.

Checks: `expect(modality, setting)` gives what a file made from a config setting must be (the settings
the extractor records and their hash, the width where the setting tells it) without importing any
extractor; `read(..., expected=...)` / `check` / `mismatch_message` compare a file with an Expectation
and name the file, the differing keys ("pooling: cls instead of pooling: mean") and the fix. Training
(ercpipe.train.run_training) and prediction (ercpipe.infer) check every file they read this way.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from ercpipe.errors import ErcpipeError
from ercpipe.features import settings as extractor_settings
from ercpipe.features.settings import IMPORTED, is_imported_setting
from ercpipe.io.atomic import atomic_hdf5
from ercpipe.io.filekind import file_kind

FORMAT_VERSION = 1
_STR = h5py.string_dtype(encoding="utf-8")
logger = logging.getLogger(__name__)


class FeatureFileError(ErcpipeError, ValueError):
    """A feature file does not match what the caller expects; the message says what and what to do."""


def settings_hash(settings: dict) -> str:
    """Stable short hash of an extractor setting (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- expected settings
#
# What an extractor records as a file's `settings` (and hashes) for a config setting, computed with the
# extractors' own settings functions (ercpipe.features.settings) without importing the extractors (torch,
# transformers, openSMILE, OpenCV), so that any job -- training in its own environment, inference -- can
# tell whether a file was made with the setting it asks for.

def expected_settings(modality: str, setting: dict | None, *, face_selection: dict | None = None) -> dict:
    """The `settings` attribute a feature file made from this config setting holds.

    setting: the config's dict (features.{modality}.{name}). face_selection: the dataset's rule (visual
    only; ercpipe.config.face_selection); None leaves it out, so the result is incomplete (see
    `setting_is_complete`). An imported setting ({source: pickle}) gives the attributes
    ercpipe.features.pickles writes ({source, layout, modality}; layout only when the setting names it).
    Raises ValueError for a key the extractor does not know or a value it does not take.
    """
    setting = dict(setting or {})
    if is_imported_setting(setting):
        unknown = sorted(set(setting) - {"source", "layout"})
        if unknown:
            raise ValueError(f"imported {modality} feature setting: unknown key(s) {unknown}; known: layout, source")
        out = {"source": IMPORTED, "modality": modality}
        if setting.get("layout") is not None:
            out["layout"] = setting["layout"]
        return out
    if modality == "text":
        return extractor_settings.stored_text_settings(setting)
    if modality == "audio":
        return extractor_settings.audio_settings(setting)
    if modality == "visual":
        if face_selection is None:
            return extractor_settings.visual_settings(setting)
        return extractor_settings.stored_visual_settings(setting, face_selection)
    raise ValueError(f"unknown modality {modality!r}; use text, audio or visual")


def setting_is_complete(modality: str, setting: dict | None, *, face_selection: dict | None = None) -> bool:
    """Whether `expected_settings` gives every key the file records (so its hash can be compared)."""
    if is_imported_setting(setting):
        return setting.get("layout") is not None
    return modality != "visual" or face_selection is not None


def expected_hash(modality: str, setting: dict | None, *, face_selection: dict | None = None) -> str | None:
    """The `setting_hash` of a feature file made from this config setting (None when it cannot be known:
    a visual setting without its dataset's face_selection, an import without its layout)."""
    if not setting_is_complete(modality, setting, face_selection=face_selection):
        return None
    return settings_hash(expected_settings(modality, setting, face_selection=face_selection))


def expected_dim(modality: str, setting: dict | None) -> int | None:
    """The width of a file made from this setting, when it is known without loading a model (audio and
    visual always; text when the model is a local directory or the packaged MiniLM); else None."""
    if is_imported_setting(setting):
        return None
    resolved = expected_settings(modality, setting)
    if modality == "audio":
        return extractor_settings.AUDIO_FEATURE_SETS[resolved["feature_set"]]
    if modality == "visual":
        return extractor_settings.VISUAL_BACKBONES[resolved["backbone"]][0]
    try:
        path = extractor_settings.text_model_dir(resolved["model"])
        config = json.loads((path / "config.json").read_text()) if path is not None else {}
    except (OSError, ValueError):
        return None
    size = config.get("hidden_size") or config.get("dim")
    return int(size) if isinstance(size, int) else None


@dataclass
class Expectation:
    """What a feature file must be (None = not checked); `mismatches` compares a file with it.

    settings: the settings the file must record (all of them, or with `partial` only those given);
    setting_hash: their hash, when complete. source: who expects it, as a noun phrase for messages
    ("the config's text setting 'minilm'"); fix: what to do when the file does not match (None = the
    pipeline's fix: delete the file and re-run its rules). made_with: what the file must have been made with
    (feature_identity: a checkpoint's record of its training features); a key the file does not record is not
    compared.
    """
    modality: str | None = None
    settings: dict | None = None
    setting_hash: str | None = None
    partial: bool = False
    dim: int | None = None
    ids: Sequence[str] | None = None
    ids_from: str = "the manifest"
    source: str = "what is expected"
    fix: str | None = None
    made_with: dict | None = None


# What a feature file records of the model files that made it (for files a setting names by path, whose setting
# stays the same when another file is saved there): the face embedder's weights file, the text model's files, the
# hub commit a text model's name resolved to.
IDENTITY_KEYS = {"weights_sha256": ("face-embedding weights file", "sha256"),
                 "model_sha256": ("text model", "files' digest"), "model_commit": ("text model", "hub commit")}


def feature_identity(attrs: dict) -> dict[str, str]:
    """The IDENTITY_KEYS a feature file's (or a checkpoint source's) attributes record; weights_source is
    "{path} (sha256 {digest})", of which only the digest is compared (the path may be spelled otherwise)."""
    identity = {key: str(attrs[key]) for key in ("model_sha256", "model_commit") if attrs.get(key)}
    weights = re.search(r"\(sha256 ([0-9a-f]+)\)$", str(attrs.get("weights_source") or ""))
    if weights:
        identity["weights_sha256"] = weights.group(1)
    return identity


def expect(modality: str, setting: dict | None, *, face_selection: dict | None = None, name: str | None = None,
           ids: Sequence[str] | None = None) -> Expectation:
    """The Expectation for a file made from a config setting (`name` = its key under features.{modality})."""
    complete = setting_is_complete(modality, setting, face_selection=face_selection)
    settings = expected_settings(modality, setting, face_selection=face_selection)
    label = f"the config's {modality} setting" + (f" {name!r}" if name else "")
    fix = None
    if is_imported_setting(setting):
        fix = (f"import it again with `ercpipe import-pickle PICKLE --allow-pickle --out-dir features/DATASET "
               f"--modalities {modality}" + (f" --setting {name}`" if name else "`"))
    return Expectation(modality=modality, settings=settings, setting_hash=settings_hash(settings) if complete else None,
                       partial=not complete, dim=expected_dim(modality, setting), ids=ids, source=label, fix=fix)


def flat_keys(settings: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested settings as dotted keys (an empty dict stays a value)."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_ABSENT = object()


def _show(value) -> str:
    if value is _ABSENT:
        return "(not set)"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def describe_settings(settings: dict | None, limit: int | None = None) -> str:
    """A compact one-line form of a settings dict: {key: value, nested.key: value} (at most `limit` keys)."""
    items = sorted(flat_keys(settings or {}).items())
    more = len(items) - limit if limit is not None and len(items) > limit else 0
    shown = items[:limit] if more else items
    return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in shown) + (f", ... {more} more" if more else "") + "}"


def settings_difference(made: dict | None, expected: dict, partial: bool = False, limit: int = 8) -> str:
    """'pooling: cls instead of pooling: mean' for the keys whose values differ ('' if none): keys set on
    both sides first. With partial, keys that `expected` does not give are not compared. An imported
    file against an extractor setting (or the reverse) shows both settings whole."""
    made = made or {}
    if (made.get("source") == IMPORTED) != (expected.get("source") == IMPORTED):
        return f"{describe_settings(made, limit)} instead of {describe_settings(expected, limit)}"
    made_flat, expected_flat = flat_keys(made), flat_keys(expected)
    keys = sorted(expected_flat) if partial else sorted(set(made_flat) | set(expected_flat))
    differ = [k for k in keys if made_flat.get(k, _ABSENT) != expected_flat.get(k, _ABSENT)]
    differ.sort(key=lambda k: (k not in made_flat or k not in expected_flat, k))
    if not differ:
        return ""
    shown, more = differ[:limit], len(differ) - limit
    tail = f" (and {more} more key(s))" if more > 0 else ""
    return (", ".join(f"{k}: {_show(made_flat.get(k, _ABSENT))}" for k in shown) + " instead of "
            + ", ".join(f"{k}: {_show(expected_flat.get(k, _ABSENT))}" for k in shown) + tail)


def pipeline_fix(path: str | Path, modality: str | None = None) -> str:
    """How to re-make a feature file the pipeline made (features/{dataset}/{modality}/{setting}.h5)."""
    path = Path(path)
    modality = modality or path.parent.name
    if path.parent.name != modality or modality not in ("text", "audio", "visual"):
        return ("delete it and make it again with the expected setting (in the pipeline: re-run its extraction "
                "and merge_features rules)")
    return (f"delete it and its shards (rm -rf {path} {path.with_suffix('')}) and run snakemake again: rules "
            f"{modality}_features_shard and merge_features make it with the configured setting")


def mismatches(fs: "FeatureSet", expected: Expectation) -> list[str]:
    """What about a feature set differs from `expected`, one phrase per problem ([] if it matches)."""
    problems = []
    attrs = fs.attrs
    found = attrs.get("modality")
    if expected.modality and found and found != expected.modality:
        problems.append(f"it holds {found} features, not {expected.modality}")
    made = attrs.get("settings") if isinstance(attrs.get("settings"), dict) else None
    if expected.settings is not None and (expected.partial or expected.setting_hash is None):
        difference = settings_difference(made, expected.settings, partial=True)
        if difference:
            problems.append(f"made with {difference}")
    elif expected.setting_hash is not None and attrs.get("setting_hash") != expected.setting_hash:
        difference = settings_difference(made, expected.settings) if expected.settings is not None else ""
        problems.append(f"made with {difference}" if difference else
                        f"settings hash {attrs.get('setting_hash')} instead of {expected.setting_hash} "
                        f"(made with {describe_settings(made)})")
    if expected.dim is not None and fs.dim != expected.dim:
        problems.append(f"width {fs.dim} instead of {expected.dim}")
    made_with = feature_identity(attrs)
    for key, value in (expected.made_with or {}).items():
        if made_with.get(key) and made_with[key] != value:
            noun, label = IDENTITY_KEYS[key]
            problems.append(f"made with another {noun} ({label} {made_with[key]} instead of {value})")
    if expected.ids is not None and list(expected.ids) != fs.utterance_ids:
        wanted, have = set(expected.ids), set(fs.utterance_ids)
        missing = [u for u in expected.ids if u not in have]
        extra = [u for u in fs.utterance_ids if u not in wanted]
        if missing or extra:
            problems.append(f"its utterance ids differ from those of {expected.ids_from}: {len(missing)} missing "
                            f"(e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})")
        else:
            problems.append(f"its utterance ids are in another order than in {expected.ids_from}")
    return problems


def mismatch_message(path: str | Path, fs: "FeatureSet", expected: Expectation) -> str | None:
    """One line naming the file, what differs from `expected.source` and the fix; None if the file matches."""
    problems = mismatches(fs, expected)
    if not problems:
        return None
    fix = expected.fix or pipeline_fix(path, expected.modality or fs.attrs.get("modality"))
    return f"{path} does not match {expected.source}: {'; '.join(problems)}. Fix: {fix}."


def check(path: str | Path, fs: "FeatureSet", expected: Expectation) -> None:
    """Raise FeatureFileError with `mismatch_message` when the file does not match."""
    message = mismatch_message(path, fs, expected)
    if message:
        raise FeatureFileError(message)


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions; ercpipe's own comes from the code that runs (jobs import it from the checkout), with
    that checkout's commit where it is a git clone ("0.1.0+g1a2b3c4d5e6f", ".modified" after it: a PEP 440 local
    version)."""
    import ercpipe

    out = {}
    for name in names:
        try:
            if name == "ercpipe":
                revision = code_revision()
                out[name] = ercpipe.__version__ + (f"+g{revision}" if revision else "")
            else:
                out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.lru_cache(maxsize=1)
def code_revision() -> str | None:
    """The last commit of the git checkout ercpipe runs from that changed the pipeline's code (ercpipe, workflow,
    scripts, envs, the Snakefile; not config.yaml, docs or data), with ".modified" where that code differs from the
    checkout's commit (new files there included); None outside a git checkout or without git. ercpipe's version
    number alone is the same for every commit; a commit of one's config changes no code, so runs before and after
    it record the same code (aggregation compares the seeds' records)."""
    code = ["ercpipe", "workflow", "scripts", "envs", "Snakefile"]
    import ercpipe

    root = Path(ercpipe.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "log", "-1", "--format=%H", "HEAD", "--", *code], capture_output=True,
                                text=True, timeout=30, check=True).stdout.strip()[:12]
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=normal", "--", *code],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (".modified" if changed else "") if commit else None


def absent_reason_counts(absent: dict[str, str]) -> Counter:
    """An `absent` attribute's reasons counted by kind ("no_face (no speaker face in 2 ...)" -> no_face)."""
    return Counter(str(reason).split(" ")[0].split(":")[0] for reason in absent.values())


def log_absent_summary(modality: str, absent: dict[str, str], total: int, log: logging.Logger) -> None:
    """One warning per shard: how many rows have no features, counted by reason, with examples."""
    if not absent:
        return
    counts = absent_reason_counts(absent)
    examples = ", ".join(list(absent)[:3])
    log.warning("%s: %d of %d utterances have no features (zeros, present=False): %s; e.g. %s",
                modality, len(absent), total, dict(counts), examples)


@dataclass
class FeatureSet:
    utterance_ids: list[str]
    features: np.ndarray  # float32 [N, D]
    present: np.ndarray  # bool [N]
    attrs: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def rows(self, utterance_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Features and present mask for the given ids, in that order (KeyError names a missing id)."""
        index = {u: i for i, u in enumerate(self.utterance_ids)}
        try:
            pos = np.fromiter((index[u] for u in utterance_ids), dtype=np.int64, count=len(utterance_ids))
        except KeyError as err:
            raise FeatureFileError(f"utterance {err.args[0]} is not in the feature file "
                                   f"({self.attrs.get('modality')}/{self.attrs.get('extractor')})") from None
        return self.features[pos], self.present[pos]


def write(path: str | Path, fs: FeatureSet) -> None:
    """Write a feature set atomically. attrs must hold modality, extractor, model and settings."""
    feats = np.asarray(fs.features, dtype=np.float32)
    present = np.asarray(fs.present, dtype=bool)
    n = len(fs.utterance_ids)
    if feats.ndim != 2 or feats.shape[0] != n or present.shape != (n,):
        raise FeatureFileError(f"{path}: features {feats.shape} / present {present.shape} do not match {n} ids")
    if len(set(fs.utterance_ids)) != n:
        raise FeatureFileError(f"{path}: duplicate utterance ids")
    if not np.isfinite(feats).all():
        bad = [fs.utterance_ids[i] for i in np.where(~np.isfinite(feats).all(axis=1))[0][:5]]
        raise FeatureFileError(f"{path}: non-finite feature values for utterance(s) {bad}")
    attrs = dict(fs.attrs)
    settings = attrs.pop("settings", {})
    attrs.setdefault("setting_hash", settings_hash(settings))
    with atomic_hdf5(path) as f:
        f.create_dataset("utterance_id", data=np.array(fs.utterance_ids, dtype=object), dtype=_STR)
        chunk_rows = max(1, min(n, max(1, (1 << 20) // max(1, feats.shape[1] * 4))))
        f.create_dataset("features", data=feats, chunks=(chunk_rows, feats.shape[1]) if n else None,
                         compression="gzip" if n else None, compression_opts=4 if n else None,
                         shuffle=bool(n))
        f.create_dataset("present", data=present)
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["dim"] = int(feats.shape[1])
        f.attrs["settings"] = json.dumps(settings, sort_keys=True, default=str)
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _unreadable(path: Path, err: Exception) -> str:
    """Why `path` cannot be read as a feature file, and what to do: a file the pipeline wrote is rebuilt; any
    other file (a user's feature pickle, a manifest given by mistake) is named by kind and left alone."""
    kind = file_kind(path)
    if kind != "an HDF5 file":
        hint = "; a feature pickle is imported first with `ercpipe import-pickle`" if kind == "a pickle" else ""
        return (f"{path} is not a feature file: it is {kind}, where an HDF5 file written by an extraction rule "
                f"(features/DATASET/MODALITY/SETTING.h5) is expected{hint}")
    return (f"{path} is an HDF5 file but not a readable feature file ({err}); if the pipeline wrote it, delete it "
            "and re-run its rule")


def read(path: str | Path, *, expected_ids: Sequence[str] | None = None, expected_hash: str | None = None,
         expected_dim: int | None = None, expected: Expectation | None = None) -> FeatureSet:
    """Read a feature file and check it against what the caller expects (`expected`, or the single
    expected_* values), raising one FeatureFileError that names the file, every mismatch and the fix."""
    path = Path(path)
    if not path.exists():
        raise FeatureFileError(f"feature file {path} does not exist; run its extraction rule first")
    try:
        with h5py.File(path, "r") as f:
            ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["utterance_id"][()]]
            feats = f["features"][()].astype(np.float32, copy=False)
            present = f["present"][()].astype(bool)
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except (OSError, KeyError) as err:
        raise FeatureFileError(_unreadable(path, err)) from err
    for key in ("settings", "versions"):
        if isinstance(attrs.get(key), str):
            attrs[key] = json.loads(attrs[key])
    fs = FeatureSet(ids, feats, present, attrs)
    if expected is None and (expected_ids is not None or expected_hash is not None or expected_dim is not None):
        expected = Expectation(setting_hash=expected_hash, dim=expected_dim, ids=expected_ids,
                               source="what the caller expects")
    if expected is not None:
        check(path, fs, expected)
    return fs


# Attributes that say something per utterance (JSON: {utterance_id: reason} or [utterance_id, ...]): each shard
# holds its own utterances', so the merged file holds the union of all shards' entries.
PER_UTTERANCE_ATTRS = ("absent", "truncated", "unknown_only")


def _merged_utterance_attrs(parts: Sequence[FeatureSet], manifest_ids: list[str]) -> dict:
    order = {uid: i for i, uid in enumerate(manifest_ids)}
    out = {}
    for key in PER_UTTERANCE_ATTRS:
        values = [json.loads(p.attrs[key]) for p in parts if p.attrs.get(key)]
        if not values:
            continue
        if all(isinstance(v, dict) for v in values):
            out[key] = json.dumps({k: v for value in values for k, v in value.items()}, sort_keys=True)
        elif all(isinstance(v, list) for v in values):
            out[key] = json.dumps(sorted({u for value in values for u in value}, key=lambda u: order.get(u, len(order))))
        else:
            raise FeatureFileError(f"shards disagree on the form of their {key!r} attribute: "
                                   f"{sorted({type(v).__name__ for v in values})}")
    return out


def device_kind(description: str) -> str:
    """A device description (ercpipe.device.device_description: feature files' `computed_on`, a run's `devices`)
    without the GPU's index: cuda:0 and cuda:1 of one model compute alike."""
    return re.sub(r"^cuda:\d+ ", "cuda ", description)


def same_kind(first: str, second: str) -> bool:
    """Whether two device descriptions name the same kind of device and precision (device_kind)."""
    return device_kind(first) == device_kind(second)


def remove_merged_file(shard_path: str | Path, modality: str) -> None:
    """Remove the merged file a pipeline shard file feeds (features/{dataset}/{modality}/{setting}/shard{k}.h5 feeds
    features/{dataset}/{modality}/{setting}.h5) as its shard job starts; a path of another layout (predict's
    working files, a library user's own) is left alone. A shard job runs when its setting, model files or inputs
    changed, so the merged file is then out of date. If the job failed, Snakemake removed the shard, and the merged
    file stayed (rule merge_features has no params): the next run planned neither the shard nor the merge (Snakemake
    does not remake a missing input of an output that is there), so training stopped on the old features, and a
    target of the features alone said "Nothing to be done"."""
    shard_path = Path(shard_path)
    parents = shard_path.parents
    if not re.fullmatch(r"shard\d+\.h5", shard_path.name) or len(parents) < 4 or parents[1].name != modality \
            or parents[3].name != "features":
        return
    merged = shard_path.parent.with_name(shard_path.parent.name + ".h5")
    try:
        merged.unlink()  # (the dataset's other shard jobs may be removing it too)
    except FileNotFoundError:
        return
    logger.info("removed %s: it is made again from this shard and the others", merged)


def merge(shard_paths: Sequence[str | Path], out_path: str | Path, manifest_ids: Sequence[str]) -> FeatureSet:
    """Concatenate shard files and reorder them to manifest order; every id must appear exactly once."""
    parts = [read(p) for p in shard_paths]
    non_empty = [p for p in parts if p.utterance_ids]
    if not non_empty:
        raise FeatureFileError(f"{out_path}: all shards are empty")
    hashes = {p.attrs.get("setting_hash") for p in non_empty}
    if len(hashes) != 1:
        raise FeatureFileError(f"{out_path}: shards were made with different settings {sorted(hashes)}")
    ids = [u for p in parts for u in p.utterance_ids]
    merged = FeatureSet(ids, np.concatenate([p.features for p in non_empty]),
                        np.concatenate([p.present for p in non_empty]), dict(non_empty[0].attrs))
    feats, present = merged.rows(list(manifest_ids))
    if len(ids) != len(manifest_ids):
        extra = sorted(set(ids) - set(manifest_ids))[:5]
        raise FeatureFileError(f"{out_path}: shards hold {len(ids)} rows for {len(manifest_ids)} manifest "
                               f"utterances (unexpected ids {extra})")
    attrs = dict(merged.attrs)
    attrs.update(_merged_utterance_attrs(parts, list(manifest_ids)))
    # Shards written before files recorded it say nothing: "not recorded" keeps the merged file from claiming one.
    devices = sorted({p.attrs.get("computed_on") or "not recorded" for p in non_empty})
    if len(devices) > 1:
        attrs["computed_on"] = "; ".join(devices)
        known = [d for d in devices if d != "not recorded"]
        if any(not same_kind(known[0], other) for other in known[1:]):
            # e.g. a shard re-run on a CPU node: fp32 rows beside fp16-autocast ones
            logger.warning("%s: its shards were computed on %s; the rows differ by that precision (re-run the shards "
                           "on one kind of device for uniform features)", out_path, " and ".join(known))
    elif devices == ["not recorded"]:
        attrs.pop("computed_on", None)
    attrs["settings"] = attrs.get("settings", {})
    attrs.pop("created", None)
    attrs.pop("format_version", None)
    attrs.pop("dim", None)
    out = FeatureSet(list(manifest_ids), feats, present, attrs)
    write(out_path, out)
    return out
