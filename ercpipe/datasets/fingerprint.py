"""What the manifest steps read of a raw dataset, as short digests the workflow compares between runs.

The manifest is built in shards (the dialogue chunks the extractors use, ercpipe.io.manifest.
dialogue_shards): one job per shard reads the raw dataset and opens only its own shard's media, then
one job joins the shards. A shard job must re-run when its part of the raw data changed, and only
then. The workflow cannot list the media as file inputs (MELD has 13,708 clips, and which clip is in
which shard is only known after reading the CSVs), so, while the DAG is built, the dataset's reader
runs without opening any media (`probe=False`: text files are parsed, media files only stat-ed), and
this module digests the result:

    shards[k]   the rows of shard k (every column), the size and mtime of each media file they name,
                and the dataset's settings but those no shard depends on (NOT_SHARD_KEYS):
                the `params` of the manifest job of shard k
    dataset     the same for the whole dataset, but for the face keys (FACE_KEYS): the `params` of the job
                that joins the shards
    issues      what the reader found without opening media (the rejected rows and the flags, with their
                files and lines), its checks against the release and the dataset's settings: the `params` of
                the job that writes issues.tsv and summary.json (a rejected row belongs to no shard, and the
                manifest does not change when one is added or fixed)
    modality_shards[m][k]
                what modality m's extraction reads of shard k (MODALITY_VIEWS: some columns, its flags, its
                media files' size and mtime, whether media are opened): the `params`
                of the job that writes that modality's copy of the shard's rows
    finetune    what text fine-tuning reads (FINETUNE_VIEW: the train and valid rows' text, labels, speakers and
                order, after the validation split, and the class list): the `params` of rule finetune_manifest

So fixing one clip re-runs that shard's manifest job and its audio and face extraction, one CSV row's
text that shard's text extraction, a label no extraction; never the other shards.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from ercpipe.datasets import FACE_KEYS, FINETUNE_VIEW, MODALITY_VIEWS, NOT_SHARD_KEYS
from ercpipe.io.manifest import dialogue_shards


@dataclass(frozen=True)
class RawFingerprint:
    """Digests of one dataset's raw data (see the module docstring); `sources` are the text files read."""

    dataset: str
    shards: tuple[str, ...]
    sources: tuple[str, ...]
    # {modality: digest per shard} of what that modality's extraction reads of the shard (MODALITY_VIEWS)
    modality_shards: dict = field(default_factory=dict)
    issues: str = ""
    finetune: str = ""
    classes: tuple[str, ...] = ()  # the reader's class list, in label-id order
    no_valid: str = ""  # why the dataset has no valid rows (a CSV without them and without valid_split), else ""
    warnings: tuple[str, ...] = ()  # what the reader warned of (not digested: the manifest job's log has them too)


def _digest(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _media_stats(frame: pd.DataFrame) -> dict[str, list[int] | None]:
    """[size, mtime_ns] of every media file the rows name; None for a file that is not there."""
    stats: dict[str, list[int] | None] = {}
    for path in pd.unique(pd.concat([frame["audio_path"], frame["video_path"]])):
        if path:
            try:
                st = os.stat(path)
                stats[path] = [st.st_size, st.st_mtime_ns]
            except OSError:
                stats[path] = None
    return stats


def fingerprint(frame: pd.DataFrame, settings: dict, n_shards: int, sources=(), result=None) -> RawFingerprint:
    """Digests of a manifest frame read without probing media (ercpipe.datasets.build.read_dataset) and of the
    reader's `result` (its issues, checks and info)."""
    stats = _media_stats(frame)
    shard_settings = {k: v for k, v in settings.items() if k not in NOT_SHARD_KEYS}
    by_dialogue = frame.groupby("dialogue_id", sort=False).indices
    parts = [frame.iloc[[i for d in dialogues for i in by_dialogue[d]]]
             for dialogues in dialogue_shards(frame, n_shards)]
    shards = []
    for part in parts:
        files = sorted((set(part["audio_path"]) | set(part["video_path"])) - {""})
        shards.append(_digest(part.astype(str).values.tolist(), [[f, stats[f]] for f in files], shard_settings))
    everything = _digest(frame.astype(str).values.tolist(), sorted(stats.items()),
                         {k: v for k, v in settings.items() if k not in FACE_KEYS})
    modality_shards = {}
    for modality, view in MODALITY_VIEWS.items():
        digests = []
        for part in parts:
            flags = [";".join(f for f in str(row).split(";") if f in view["flags"]) for row in part["flags"]]
            files = sorted(set().union(*(set(part[c]) for c in view["media"])) - {""}) if view["media"] else []
            digests.append(_digest(part[list(view["columns"])].astype(str).values.tolist(), flags,
                                   [[f, stats[f]] for f in files], {k: settings.get(k) for k in view["settings"]}))
        modality_shards[modality] = tuple(digests)
    issues = "" if result is None else _digest(result.issues.frame().astype(str).values.tolist(), result.checks,
                                                 result.info, settings)
    finetune, classes, no_valid = "", (), ""
    if result is not None:
        record = result.info.get("valid_split") or {}
        no_valid = record.get("note", "") if record.get("protocol") == "none" else ""
        from ercpipe.datasets.build import finetune_rows  # the readers: imported only when a dataset is read

        read = finetune_rows(frame, result)
        classes = tuple(str(c) for c in result.classes)
        finetune = _digest(read[list(FINETUNE_VIEW["columns"])].astype(str).values.tolist(),
                           [[f for f in str(row).split(";") if f in FINETUNE_VIEW["flags"]] for row in read["flags"]],
                           classes)
    return RawFingerprint(everything, tuple(shards), tuple(sorted(str(s) for s in sources)), modality_shards, issues,
                          finetune, classes, no_valid)


class _Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _warnings_collected(name: str = "ercpipe"):
    """The readers' warnings (a relabel key that matches no label, a class no row has, a failed check against
    the release), collected for the workflow to say once per `snakemake` call: shown only in the manifest
    job's log, they were never seen. Their INFO lines belong in that log alone."""
    logger = logging.getLogger(name)
    collected = _Collected()
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(collected)
    try:
        yield collected.messages
    finally:
        logger.removeHandler(collected)
        logger.setLevel(level)
        logger.propagate = propagate


def dataset_fingerprint(name: str, dataset_cfg: dict, n_shards: int) -> RawFingerprint:
    """Read the raw dataset without opening media and digest it (ManifestError / ValueError if unreadable)."""
    from ercpipe.datasets.build import read_dataset

    with _warnings_collected() as warnings:
        frame, result = read_dataset(name, dataset_cfg, probe=False)
    empty = sum(1 for shard in dialogue_shards(frame, n_shards) if not shard)
    if empty:
        warnings.append(f"`shards: {n_shards}` is more than its {frame['dialogue_id'].nunique()} dialogue(s): "
                        f"{empty} shard(s) get no rows, and each still runs one job per step (which starts its "
                        "extractor); give fewer shards")
    sources = [s for s in result.sources if Path(s).is_file()]
    return replace(fingerprint(frame, dataset_cfg, n_shards, sources, result), warnings=tuple(warnings))
