"""Running the whole Snakemake DAG in a temporary working directory, for the end-to-end tests.

`small_config()` is the demo configuration (config.yaml) with a smaller corpus, fewer frames and a few
training epochs: the same rules, datasets, extractors, anchors and experiments, in a few minutes.
Every run uses `--max-threads 1`, so a local run and a SLURM run compute with the same thread count
and their outputs can be compared exactly.
"""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
DAG_TIMEOUT = 900


def small_config() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["synthetic"]["iemocap"]["dialogues"] = {"train": 6, "valid": 2, "test": 2}
    config["synthetic"]["meld"]["dialogues"] = {"train": 6, "dev": 2, "test": 2}
    config["features"]["visual"]["densenet121"].update(fps=1, max_frames=2)
    config["anchors"]["demo_faces"]["synthetic"]["per_class"] = 2
    for experiment in config["experiments"].values():
        experiment.setdefault("train", {}).update(epochs=3, patience=None)
    config["experiments"]["iemocap_demo_sdt"]["seeds"] = [0]
    return config


def write_config(workdir: Path, config: dict, name: str = "config.yaml") -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / name
    path.write_text(yaml.safe_dump(copy.deepcopy(config), sort_keys=False))
    return path


def command(workdir: Path, configfile: Path, *args: str) -> list[str]:
    """The Snakemake command line for the repository's Snakefile in `workdir`."""
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(configfile),
            "--max-threads", "1", *args]


def snakemake(workdir: Path, configfile: Path, *args: str, timeout: int = DAG_TIMEOUT,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake on the repository's Snakefile in `workdir` (stdout and stderr together)."""
    cmd = ["timeout", "-k", "20", str(timeout), *command(workdir, configfile, *args)]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed with exit status {result.returncode}:\n{result.stdout[-6000:]}")
    return result


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of `snakemake -n` ({} when nothing is to be done)."""
    jobs: dict[str, int] = {}
    table = dry_run_output.split("Job stats:", 1)
    if len(table) < 2:
        return jobs
    for line in table[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match or match.group(1) == "total":
            if jobs:
                break
            continue
        jobs[match.group(1)] = int(match.group(2))
    return jobs
