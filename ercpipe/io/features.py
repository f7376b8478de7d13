"""HDF5 feature files: one per (dataset, modality, extractor setting).

Layout:
    /utterance_id   variable-length UTF-8 strings [N], manifest order
    /features       float32 [N, D], chunked, gzip-compressed
    /present        bool [N]; False where the modality was missing (row of zeros)
    attributes      modality, extractor, model, dim, setting_hash, settings (JSON), versions (JSON), created

Files are written under a temporary name and renamed, so a killed job leaves nothing that looks complete.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from ercpipe.io.atomic import atomic_path

FORMAT_VERSION = 1
_STR = h5py.string_dtype(encoding="utf-8")


class FeatureFileError(ValueError):
    """A feature file does not match what the caller expects; the message says what and what to do."""


def settings_hash(settings: dict) -> str:
    """Stable short hash of an extractor setting (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def package_versions(names: Iterable[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


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
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
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


def read(path: str | Path, *, expected_ids: Sequence[str] | None = None, expected_hash: str | None = None,
         expected_dim: int | None = None) -> FeatureSet:
    """Read a feature file and check it against what the caller expects, naming every mismatch."""
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
        raise FeatureFileError(f"{path} is not a readable feature file ({err}); delete it and re-run its rule") from err
    for key in ("settings", "versions"):
        if isinstance(attrs.get(key), str):
            attrs[key] = json.loads(attrs[key])
    problems = []
    if expected_hash is not None and attrs.get("setting_hash") != expected_hash:
        problems.append(f"settings hash {attrs.get('setting_hash')} != expected {expected_hash} "
                        f"(the file was made with settings {attrs.get('settings')}; the config asks for others)")
    if expected_dim is not None and feats.shape[1] != expected_dim:
        problems.append(f"dimension {feats.shape[1]} != expected {expected_dim}")
    if expected_ids is not None and list(expected_ids) != ids:
        missing = [u for u in expected_ids if u not in set(ids)]
        extra = [u for u in ids if u not in set(expected_ids)]
        if missing or extra:
            problems.append(f"utterance ids differ from the manifest: {len(missing)} missing "
                            f"(e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})")
        else:
            problems.append("utterance ids are in a different order from the manifest")
    if problems:
        raise FeatureFileError(f"{path}: " + "; ".join(problems) + ". Re-run the extraction rule for this file.")
    return FeatureSet(ids, feats, present, attrs)


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
    attrs["settings"] = attrs.get("settings", {})
    attrs.pop("created", None)
    attrs.pop("format_version", None)
    attrs.pop("dim", None)
    out = FeatureSet(list(manifest_ids), feats, present, attrs)
    write(out_path, out)
    return out
