"""How long `snakemake -n` takes on a complete MELD-sized run (13,708 clips), and what of it is ours.

    .venv/bin/python bench/bench_dag.py                       # real MELD CSVs from ../shared/data/meld
    .venv/bin/python bench/bench_dag.py --csv-dir DIR --shards 8 --repeats 3

Builds a MELD.Raw tree in a temporary folder: the three real CSVs and one tiny placeholder file per
clip (only the DAG is timed, so no clip is ever opened). The config declares it as a plain
`format: meld` dataset with text, audio and face features and an SDT experiment, like
workflow/configs/meld.yaml. Printed: the time of `snakemake -n` (a fresh process each time, the
Snakefile parsed and the raw data read and digested as in every real call), and of the raw-data
digest alone (ercpipe.datasets.fingerprint), which is the part this project adds to the DAG.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ercpipe.datasets.fingerprint import dataset_fingerprint  # noqa: E402
from ercpipe.datasets.meld import SPLIT_FILES  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def make_tree(csv_dir: Path, root: Path) -> int:
    """MELD.Raw layout under root: the CSVs and a placeholder per row; returns the number of clips."""
    clips = 0
    for _, _, csv_name, clip_dir in SPLIT_FILES:
        shutil.copyfile(csv_dir / csv_name, root / csv_name)
        (root / clip_dir).mkdir(parents=True, exist_ok=True)
        table = pd.read_csv(root / csv_name, dtype=str, keep_default_na=False)
        for dialogue, utterance in zip(table["Dialogue_ID"], table["Utterance_ID"]):
            (root / clip_dir / f"dia{dialogue.strip()}_utt{utterance.strip()}.mp4").write_bytes(b"placeholder")
            clips += 1
    return clips


def config(shards: int) -> dict:
    return {
        "datasets": {"meld": {"format": "meld", "root": "raw/MELD.Raw", "shards": shards}},
        "features": {"text": {"minilm": {"model": "packaged:minilm", "pooling": "mean"}},
                     "audio": {"is10": {"feature_set": "IS10"}},
                     "visual": {"densenet121": {"fps": 1, "backbone": "densenet121", "weights": "random"}}},
        "anchors": {},
        "experiments": {"meld_sdt": {"dataset": "meld", "features": {"text": "minilm", "audio": "is10",
                                                                     "visual": "densenet121"},
                                     "anchors": None, "preset": "sdt", "seeds": [0, 1, 2]}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv-dir", type=Path, default=REPO.parent / "shared" / "data" / "meld")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.csv_dir / SPLIT_FILES[0][2]).is_file():
        sys.exit(f"no MELD CSVs in {args.csv_dir}; give --csv-dir")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "raw" / "MELD.Raw"
        root.mkdir(parents=True)
        clips = make_tree(args.csv_dir, root)
        (work / "config.yaml").write_text(yaml.safe_dump(config(args.shards)))
        digest_s, dry_s, jobs = [], [], ""
        for _ in range(args.repeats):
            start = time.perf_counter()
            dataset_fingerprint("meld", {"format": "meld", "root": str(root)}, args.shards)
            digest_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
                                     str(work / "config.yaml"), "-n", "--quiet", "rules"], cwd=work,
                                    capture_output=True, text=True)
            dry_s.append(time.perf_counter() - start)
            if result.returncode != 0:
                sys.exit(f"snakemake -n failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            jobs = next((line.split()[-1] for line in result.stdout.splitlines() if line.startswith("total")), "?")
    print(f"MELD-sized tree: {clips} clips, {args.shards} shards, {jobs} jobs planned")
    print("| what | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, values in (("snakemake -n (whole call)", dry_s), ("raw-data digest alone", digest_s)):
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
