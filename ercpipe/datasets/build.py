"""Build a dataset's manifest: run its reader, validate, write manifest.tsv, issues.tsv, summary.json.

`dataset_cfg["format"]` picks the reader (iemocap, meld, csv); the other keys are the reader's settings
(documented, with defaults, in ercpipe.datasets.iemocap / .meld / .csv_manifest). An unknown key is a
ValueError naming it; a raw folder or file that cannot be used is a ManifestError saying where and why.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Callable

import pandas as pd

from ercpipe.datasets import ReadResult, csv_manifest, iemocap, meld
from ercpipe.io import manifest as manifest_io
from ercpipe.io.atomic import write_json
from ercpipe.io.manifest import FLAG_NAMES, SPLITS

logger = logging.getLogger(__name__)

READERS: dict[str, Callable[[str, dict], ReadResult]] = {
    "iemocap": iemocap.read,
    "meld": meld.read,
    "csv": csv_manifest.read,
}


def read_dataset(name: str, dataset_cfg: dict) -> tuple[pd.DataFrame, ReadResult]:
    """Run the configured reader; returns the normalised, validated manifest frame and the reader's result."""
    fmt = dataset_cfg.get("format")
    if fmt not in READERS:
        raise ValueError(f"dataset {name}: format {fmt!r} is not one of {sorted(READERS)}")
    result = READERS[fmt](name, dict(dataset_cfg))
    frame = manifest_io.normalise(result.frame)
    manifest_io.validate(frame, result.classes, source=f"dataset {name} ({fmt})")
    return frame, result


def summarise(name: str, fmt: str, frame: pd.DataFrame, result: ReadResult) -> dict:
    """The summary.json content: what was read, how much of each, and what was flagged or dropped."""
    flags = Counter(f for value in frame["flags"] for f in value.split(";") if f)
    issues = result.issues.frame()
    rejected = Counter(issues.loc[issues["action"] == "rejected", "reason"])
    per_split_label = {s: {c: int(((frame["split"] == s) & (frame["label"] == c)).sum()) for c in result.classes}
                       for s in SPLITS}
    return {
        "dataset": name,
        "format": fmt,
        "classes": list(result.classes),
        "utterances": len(frame),
        "counts_per_split": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "counts_per_label": {c: int((frame["label"] == c).sum()) for c in result.classes},
        "counts_per_split_label": per_split_label,
        "dialogues_per_split": {s: int(frame.loc[frame["split"] == s, "dialogue_id"].nunique()) for s in SPLITS},
        "max_speakers_per_dialogue": int(frame.groupby("dialogue_id")["speaker"].nunique().max()) if len(frame) else 0,
        "flag_counts": {f: flags[f] for f in FLAG_NAMES if flags[f]},
        "rejected_counts": dict(sorted(rejected.items())),
        "checks": result.checks,
        "checks_ok": all(c["ok"] for c in result.checks),
        **{k: v for k, v in result.info.items() if k not in ("checks",)},
    }


def build_manifest(name: str, dataset_cfg: dict, out_dir: Path) -> None:
    """Write out_dir/manifest.tsv, issues.tsv and summary.json for one configured dataset."""
    out_dir = Path(out_dir)
    frame, result = read_dataset(name, dataset_cfg)
    summary = summarise(name, dataset_cfg["format"], frame, result)
    # Issues and summary first: a manifest on disk means the whole step finished.
    manifest_io.write_issues(result.issues, out_dir / "issues.tsv")
    write_json(out_dir / "summary.json", summary)
    manifest_io.write(frame, out_dir / "manifest.tsv")
    logger.info("dataset %s: %d utterances (%s), %d flagged row(s), %d rejected row(s); wrote %s", name, len(frame),
                ", ".join(f"{s} {n}" for s, n in summary["counts_per_split"].items()),
                int((frame["flags"] != "").sum()), sum(summary["rejected_counts"].values()), out_dir)
