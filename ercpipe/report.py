"""Tables for the Snakemake report: feature coverage per split and the benchmark summary."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ercpipe.io import features, manifest
from ercpipe.io.atomic import atomic_path


def feature_coverage(manifest_path: str | Path, feature_paths: Sequence[str | Path], out_path: str | Path) -> pd.DataFrame:
    """One row per split (and a total): utterances, defect flags, and present/missing per feature file."""
    df = manifest.read(manifest_path)
    ids = df["utterance_id"].tolist()
    table = pd.DataFrame({"split": df["split"]})
    table["utterances"] = 1
    for flag in manifest.FLAG_NAMES:
        hit = df["flags"].map(lambda f, name=flag: manifest.has_flag(f, name))
        if hit.any():
            table[f"flag: {flag}"] = hit.astype(int)
    for path in feature_paths:
        fs = features.read(path, expected_ids=ids)
        name = f"{fs.attrs.get('modality', Path(path).parent.name)}/{Path(path).stem}"
        table[f"{name} missing"] = (~fs.present).astype(int)
    order = {s: i for i, s in enumerate(manifest.SPLITS)}
    per_split = table.groupby("split").sum().sort_index(key=lambda s: s.map(order))
    per_split.loc["all"] = per_split.sum()
    per_split = per_split.reset_index()
    with atomic_path(out_path) as tmp:
        per_split.to_csv(tmp, sep="\t", index=False)
    return per_split


def benchmark_summary(benchmark_paths: Sequence[str | Path], root: str | Path, out_path: str | Path) -> pd.DataFrame:
    """Collect Snakemake `benchmark:` files into one table (job, wall seconds, peak RSS, CPU time)."""
    rows = []
    root = Path(root)
    for path in sorted(Path(p) for p in benchmark_paths):
        bench = pd.read_csv(path, sep="\t")
        job = str(path.relative_to(root).with_suffix(""))
        rule = job.split("/", 1)[0]
        rows.append({"rule": rule, "job": job, "wall_s": round(float(bench["s"].mean()), 2),
                     "max_rss_mb": round(float(bench["max_rss"].max()), 1),
                     "cpu_time_s": round(float(bench["cpu_time"].mean()), 2)})
    table = pd.DataFrame(rows, columns=["rule", "job", "wall_s", "max_rss_mb", "cpu_time_s"])
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table
