"""summary.json, and the manifest, issues and summary written together: shared by every route that writes a
manifest (the raw readers via ercpipe.datasets.build, the feature pickles via ercpipe.features.pickles).

Light on purpose (pandas and the manifest module only): the pickle import rules run in an env without the
media libraries the raw readers reach.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd

from ercpipe.datasets import ReadResult
from ercpipe.io import manifest as manifest_io
from ercpipe.io.atomic import write_json
from ercpipe.io.manifest import FLAG_NAMES, SPLITS

logger = logging.getLogger(__name__)


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


def write_manifest(name: str, fmt: str, frame: pd.DataFrame, result: ReadResult, out_dir: Path) -> None:
    """Write out_dir/manifest.tsv, issues.tsv and summary.json (the manifest last: it means all is done)."""
    write_issues_and_summary(name, fmt, frame, result, out_dir)
    manifest_io.write(frame, Path(out_dir) / "manifest.tsv")


def write_issues_and_summary(name: str, fmt: str, frame: pd.DataFrame, result: ReadResult, out_dir: Path) -> None:
    """Write out_dir/issues.tsv and summary.json for the manifest `frame` and the reader's `result`."""
    out_dir = Path(out_dir)
    summary = summarise(name, fmt, frame, result)
    manifest_io.write_issues(result.issues, out_dir / "issues.tsv")
    write_json(out_dir / "summary.json", summary)
    logger.info("dataset %s: %d utterances (%s), %d flagged row(s), %d rejected row(s); wrote %s", name, len(frame),
                ", ".join(f"{s} {n}" for s, n in summary["counts_per_split"].items()),
                int((frame["flags"] != "").sum()), sum(summary["rejected_counts"].values()), out_dir)
    per_split = summary["counts_per_split_label"]
    for split, consequence in (("train", "no model can learn them"), ("valid", "model selection does not see them")):
        absent = [c for c in result.classes if summary["counts_per_split"].get(split) and not per_split[split][c]]
        if absent:
            logger.warning("dataset %s: class(es) %s have no %s utterance: %s", name, absent, split, consequence)
    for split, consequence in (("train", "no experiment can train on it"),
                               ("test", "experiments on it get no test scores (valid only)")):
        if not summary["counts_per_split"].get(split):
            logger.warning("dataset %s has no %s utterances: %s; check its raw files (e.g. an empty split file)",
                           name, split, consequence)
