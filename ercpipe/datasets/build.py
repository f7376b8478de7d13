"""Build a dataset's manifest: run its reader, validate, write manifest.tsv, issues.tsv, summary.json.

`dataset_cfg["format"]` picks the reader (iemocap, meld, csv); the other keys are the reader's settings
(documented, with defaults, in ercpipe.datasets.iemocap / .meld / .csv_manifest). An unknown key is a
ValueError naming it; a raw folder or file that cannot be used is a ManifestError saying where and why.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Collection

import pandas as pd

from ercpipe.datasets import FINETUNE_VIEW, MODALITY_VIEWS, ReadResult, csv_manifest, iemocap, meld
from ercpipe.datasets.summary import write_issues_and_summary, write_manifest
from ercpipe.io import manifest as manifest_io
from ercpipe.io.manifest import SPLITS, IssueLog, ManifestError
from ercpipe.labels import MODALITIES

logger = logging.getLogger(__name__)

# read(name, settings, probe=True): probe=False reads the text files and only checks that media files
# exist, without opening them (ercpipe.datasets.fingerprint runs it while the workflow's DAG is built);
# probe=a set of paths opens only those (one manifest shard's media).
# Each reader's settings and their defaults (a default written out in the config is the same setting).
READER_DEFAULTS: dict[str, dict] = {"iemocap": iemocap.DEFAULTS, "meld": meld.DEFAULTS, "csv": csv_manifest.DEFAULTS}
# A reader's settings with defaults spelled another way (IEMOCAP's six classes listed, its split file named) set
# back to how its DEFAULTS spell them.
READER_CANONICAL: dict[str, Callable[[dict], dict]] = {"iemocap": iemocap.canonical_settings}
# A reader's check of its settings alone (no raw file read): the config check runs it before any job.
READER_SETTINGS_CHECKS: dict[str, Callable[[dict], None]] = {"iemocap": iemocap.check_settings}
READERS: dict[str, Callable[..., ReadResult]] = {
    "iemocap": iemocap.read,
    "meld": meld.read,
    "csv": csv_manifest.read,
}


def read_dataset(name: str, dataset_cfg: dict, probe: bool | Collection[str] = True, media_required: bool = True
                 ) -> tuple[pd.DataFrame, ReadResult]:
    """Run the configured reader; returns the normalized, validated manifest frame and the reader's result.
    media_required: a declared modality of which not one file exists is an error (a dataset); False keeps
    flags (a conversation to predict, which goes on without that modality and says so)."""
    fmt = dataset_cfg.get("format")
    if fmt not in READERS:
        raise ValueError(f"dataset {name}: format {fmt!r} is not one of {sorted(READERS)}")
    modalities = list(dataset_cfg.get("modalities") or MODALITIES)
    if "audio" not in modalities and "visual" not in modalities:
        probe = False  # no media to look at
    result = READERS[fmt](name, dict(dataset_cfg), probe=probe)
    _drop_undeclared_media(result, modalities)
    if media_required:
        _refuse_media_missing_everywhere(name, result, modalities)
    frame = manifest_io.normalize(result.frame)
    manifest_io.validate(frame, result.classes, source=f"dataset {name} ({fmt})")
    return frame, result


# The flags that belong to each media modality: a dataset that declares it has none has nothing to flag.
MEDIA_FLAGS: dict[str, frozenset[str]] = {
    "audio": frozenset({"missing_audio", "corrupt_audio", "no_audio_stream", "silent_audio"}),
    "visual": frozenset({"missing_video", "corrupt_video", "no_video"}),
}
MEDIA_COLUMNS: dict[str, tuple[str, ...]] = {"audio": ("audio_path", "audio_start", "audio_end"),
                                            "visual": ("video_path", "video_start", "video_end")}


MISSING_FLAGS: dict[str, str] = {"audio": "missing_audio", "visual": "missing_video"}


def _refuse_media_missing_everywhere(name: str, result: ReadResult, modalities: list[str]) -> None:
    """A ManifestError when not one of the media files (two or more) a declared modality's rows of a split name
    exists: a release whose clip folders are there but empty (archives not unpacked into them) or a wrong
    `root` flagged every row, and the whole pipeline then ran on zeros for that modality, saying so only in the
    extraction logs. A real release misses a few files, which stay flags."""
    frame = result.frame
    missing = {flag: frame["flags"].astype(str).str.split(";").map(lambda f, flag=flag: flag in f)
               for flag in MISSING_FLAGS.values()}
    for modality, flag in MISSING_FLAGS.items():
        if modality not in modalities:
            continue
        column = MEDIA_COLUMNS[modality][0]
        named = frame[column].astype(str) != ""
        for split in SPLITS:  # per split: one split's archive left unpacked (MELD ships one per split)
            rows = named & (frame["split"] == split)
            files = frame.loc[rows, column].nunique()
            # (one file missing is a missing file, even if it is a split's only one: a flag)
            if files < 2 or not missing[flag][rows].all():
                continue
            ids = set(frame.loc[rows, "utterance_id"])
            example = next((i.detail for i in result.issues.issues
                            if i.reason == flag and i.detail and i.utterance_id in ids), "")
            raise ManifestError(
                f"dataset {name}: not one of the {files} {modality} files its {split} utterances name exists"
                + (f" (e.g. {example.split(' does not exist')[0]} does not exist)" if example else "")
                + f". Check datasets.{name}.root and that the media are unpacked there; for a run without them, "
                f"declare the modalities the dataset has (datasets.{name}.modalities, e.g. [text])")


def _drop_undeclared_media(result: ReadResult, modalities: list[str]) -> None:
    """Without a modality in `datasets.{name}.modalities`, its media columns are empty and its flags and
    issues are not recorded: a text-only dataset's issues list only real problems (e.g. empty text)."""
    result.info["modalities"] = [m for m in MODALITIES if m in modalities]
    absent = [m for m in MEDIA_FLAGS if m not in modalities]
    if not absent:
        return
    dropped = frozenset().union(*(MEDIA_FLAGS[m] for m in absent))
    if not set(MEDIA_FLAGS) & set(modalities):  # times only say where media are cut: without media, nothing is
        dropped |= {"bad_time"}
    frame = result.frame.copy()
    for modality in absent:
        path, start, end = MEDIA_COLUMNS[modality]
        frame[path], frame[start], frame[end] = "", float("nan"), float("nan")
    frame["flags"] = [";".join(f for f in str(value).split(";") if f and f not in dropped) for value in frame["flags"]]
    result.frame = frame
    result.issues = IssueLog([i for i in result.issues.issues if i.reason not in dropped])


def apply_valid_split(frame: pd.DataFrame, result: ReadResult) -> pd.DataFrame:
    """The manifest with the dialogues that the reader's `valid_split` record names moved from train to valid.

    Done on the joined manifest only: the shards keep the raw split, so the extraction jobs (which read the
    shards) do not re-run when only the validation split changes (SPLIT_KEYS)."""
    record = result.info.get("valid_split") or {}
    if record.get("protocol") == "none":
        logger.warning("datasets.%s: %s", ", ".join(sorted(set(frame["dataset"]))) or "?", record["note"])
    moved = set(record.get("dialogues") or ())
    if not moved:
        return frame
    frame = frame.copy()
    frame.loc[frame["dialogue_id"].isin(moved) & (frame["split"] == "train"), "split"] = "valid"
    return frame


def build_manifest(name: str, dataset_cfg: dict, out_dir: Path) -> None:
    """Write out_dir/manifest.tsv, issues.tsv and summary.json for one configured dataset, in one step."""
    frame, result = read_dataset(name, dataset_cfg)
    write_manifest(name, dataset_cfg["format"], apply_valid_split(frame, result), result, out_dir)


def build_manifest_shard(name: str, dataset_cfg: dict, shard: int, n_shards: int, manifest_out: Path,
                         issues_out: Path) -> None:
    """The manifest rows and flagged issues of one shard (ercpipe.io.manifest.dialogue_shards).

    Reads the dataset's text files whole but opens only this shard's media, so a fixed clip re-runs
    one shard's job. Rejected rows belong to no shard: join_manifest_shards records them.
    """
    frame, _ = read_dataset(name, dataset_cfg, probe=False)
    rows = manifest_io.shard_rows(frame, shard, n_shards)
    media = (set(rows["audio_path"]) | set(rows["video_path"])) - {""}
    frame, result = read_dataset(name, dataset_cfg, probe=media)
    rows = manifest_io.shard_rows(frame, shard, n_shards)
    ids = set(rows["utterance_id"])
    issues = IssueLog([i for i in result.issues.issues if i.action == "flagged" and i.utterance_id in ids])
    manifest_io.write_issues(issues, issues_out)
    manifest_io.write(rows, manifest_out)
    logger.info("dataset %s, shard %d of %d: %d utterances in %d dialogue(s), %d of %d media file(s) "
                "there, %d flag(s)", name, shard, n_shards, len(rows), rows["dialogue_id"].nunique(),
                _existing(media), len(media), len(issues.issues))


def build_modality_shard(name: str, dataset_cfg: dict, shard: int, n_shards: int, modality: str,
                         manifest_out: Path) -> None:
    """The manifest rows of one shard as one modality's extraction reads them: the shard's rows, with the flags
    of opening only that modality's media (text: none). Its own job, re-run only when what that extraction reads
    changed (ercpipe.datasets.MODALITY_VIEWS): a fixed transcript line re-runs the text extraction of
    its shard, not the face and audio extraction, and a relabelling re-runs no extraction."""
    frame, _ = read_dataset(name, dataset_cfg, probe=False)
    rows = manifest_io.shard_rows(frame, shard, n_shards)
    media = set().union(*(set(rows[c]) for c in MODALITY_VIEWS[modality]["media"])) - {""}
    if media:
        frame, _ = read_dataset(name, dataset_cfg, probe=media)
        rows = manifest_io.shard_rows(frame, shard, n_shards)
    manifest_io.write(rows, manifest_out)
    logger.info("dataset %s, shard %d of %d, %s: %d utterances in %d dialogue(s), %d of %d media file(s) "
                "there", name, shard, n_shards, modality, len(rows), rows["dialogue_id"].nunique(), _existing(media),
                len(media))


def _existing(paths) -> int:
    """How many of the media files exist (the others were flagged missing, not opened)."""
    return sum(1 for path in paths if Path(path).is_file())


def finetune_rows(frame: pd.DataFrame, result: ReadResult) -> pd.DataFrame:
    """The manifest rows text fine-tuning reads (FINETUNE_VIEW's splits, after the validation split)."""
    frame = apply_valid_split(frame, result)
    return frame[frame["split"].isin(FINETUNE_VIEW["splits"])].reset_index(drop=True)


def build_finetune_rows(name: str, dataset_cfg: dict, out_path: Path) -> None:
    """Rule finetune_manifest: the train and valid rows of the dataset, read from the raw data (media not opened).
    Its own job, re-run on the digest of those rows only, so a fixed test label re-runs no fine-tuning."""
    frame, result = read_dataset(name, dataset_cfg, probe=False)
    rows = finetune_rows(frame, result)
    manifest_io.write(rows, out_path)
    logger.info("dataset %s: %d %s utterances in %d dialogue(s) for text fine-tuning", name, len(rows),
                "+".join(FINETUNE_VIEW["splits"]), rows["dialogue_id"].nunique())


def join_manifest_shards(name: str, dataset_cfg: dict, shard_manifests: list[Path], out_path: Path) -> None:
    """manifest.tsv from the shards' rows, in the reader's order (issues.tsv and summary.json:
    write_dataset_issues, a job of its own, so that a rejected row added or fixed re-runs no training)."""
    frame, result = read_dataset(name, dataset_cfg, probe=False)
    parts = [manifest_io.read(p) for p in shard_manifests]
    joined = pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0]
    if joined["utterance_id"].tolist() != frame["utterance_id"].tolist():
        raise ManifestError(f"dataset {name}: the manifest shards {[str(p) for p in shard_manifests]} hold other "
                            "utterances than the raw data has now (they were built from an older version of it); "
                            "delete them and re-run")
    manifest = apply_valid_split(manifest_io.normalize(joined), result)
    manifest_io.write(manifest, out_path)
    logger.info("dataset %s: %d utterances in %d dialogue(s) from %d shard(s); wrote %s", name, len(manifest),
                manifest["dialogue_id"].nunique(), len(parts), out_path)


def write_dataset_issues(name: str, dataset_cfg: dict, manifest_path: Path, shard_issues: list[Path],
                         out_dir: Path) -> None:
    """issues.tsv and summary.json of a dataset built in shards.

    The rejected rows and the flags found without opening media come from reading the raw text files now
    (so their files and lines are current), the flags found by opening media from the shards' issue files.
    """
    frame = manifest_io.read(manifest_path)
    _, result = read_dataset(name, dataset_cfg, probe=False)
    current = {(i.action, i.reason, i.utterance_id): i for i in result.issues.issues}
    rejected = [i for i in result.issues.issues if i.action == "rejected"]
    flagged, seen = [], set()
    for path in shard_issues:
        for issue in manifest_io.read_issues(path).issues:
            key = (issue.action, issue.reason, issue.utterance_id)
            flagged.append(current.get(key, issue))
            seen.add(key)
    flagged += [i for key, i in current.items() if i.action == "flagged" and key not in seen]
    result.issues = IssueLog(rejected + flagged)
    write_issues_and_summary(name, dataset_cfg["format"], frame, result, out_dir)
