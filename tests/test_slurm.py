"""The demo DAG through a real one-node SLURM on localhost (started by the test), equal to a local run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

import slurm_cluster
from workflow_run import REPO, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slurm


def _feature_files(workdir: Path) -> list[Path]:
    return sorted(p.relative_to(workdir) for p in (workdir / "features").glob("*/*/*.h5"))


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file, by its path inside the file."""
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return out


def test_the_demo_dag_runs_through_slurm_and_equals_the_local_run(pipeline_run, tmp_path):
    reason = slurm_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    local, configfile, local_output = pipeline_run
    workdir = tmp_path / "slurm"
    # One dataset's whole chain (manifest shards, the three extractors, anchors, training, aggregation, coverage
    # and issues), named as targets: the other dataset's jobs are the same rules again and would double the time.
    dataset, experiment = "meld_demo", "meld_demo_sdt_vega"
    config = write_config(workdir, yaml.safe_load(configfile.read_text()))
    targets = [f"results/{dataset}/{experiment}/summary.json", f"results/{dataset}/coverage.tsv",
               f"features/{dataset}/issues.tsv"]
    with slurm_cluster.local_slurm(tmp_path / "slurm-state", memory_mb=20000):
        # The profile a user types, plus what this accounting-free one-node cluster needs (issue #6):
        # squeue instead of sacct, and short waits.
        result = snakemake(workdir, config, "--profile", str(REPO / "profiles" / "slurm"),
                           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
                           "--slurm-keep-successful-logs", "--latency-wait", "5", "--jobs", "4", "--retries", "0",
                           *targets)
    output = result.stdout
    # Every job but the target rule `all` went through sbatch.
    planned = planned_jobs(output)
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert planned and len(submitted) == sum(planned.values()) - planned.get("all", 0), output[-3000:]
    assert len(set(submitted)) == len(submitted)
    log_root = workdir / ".snakemake" / "slurm_logs"  # slurm_logs/rule_{rule}/{wildcards}/{jobid}.log
    slurm_logs = {p.relative_to(log_root).parts[0] for p in log_root.rglob("*.log")}
    assert {f"rule_{r}" for r in planned if r != "all"} <= slurm_logs

    # Same manifest, features, anchors, predictions and metrics as the local run.
    rel = Path("features") / dataset / "manifest.tsv"
    assert (workdir / rel).read_text() == (local / rel).read_text(), rel
    files = [f for f in _feature_files(local) if f.parts[1] == dataset]
    assert files == _feature_files(workdir) and len(files) == 3
    for rel in files + [Path("anchors/demo_faces/ViT-B-32.h5")]:
        mine, theirs = _arrays(workdir / rel), _arrays(local / rel)
        assert mine.keys() == theirs.keys() and mine, rel
        for key in mine:
            assert np.array_equal(mine[key], theirs[key]), (rel, key)
    runs = sorted(p.parent.relative_to(local) for p in (local / "results" / dataset).glob("*/seed*/metrics.json"))
    assert len(runs) == 1
    # Training read its job's time limit from squeue (the profile gives train_model 720 minutes), so it would
    # write its state after every epoch near the end.
    train_logs = sorted((workdir / "logs" / "train_model").rglob("*.log"))
    assert len(train_logs) == len(runs)
    for log in train_logs:
        assert re.search(r"the job's time limit ends in 11:5\d:\d\d \(at ", log.read_text()), log
    for rel in runs:
        mine, theirs = (json.loads((root / rel / "metrics.json").read_text()) for root in (workdir, local))
        for key in ("protocol", "valid", "test", "temperatures", "class_weights"):
            assert mine[key] == theirs[key], (rel, key)
        pd.testing.assert_frame_equal(pd.read_csv(workdir / rel / "predictions.tsv", sep="\t"),
                                      pd.read_csv(local / rel / "predictions.tsv", sep="\t"))


def test_the_cluster_profile_keeps_its_settings_over_the_workflow_profile(monkeypatch):
    """Snakemake applies profiles/default (the workflow profile) after --profile and lets it win: it used to
    turn the SLURM profile's 60 s latency wait into 5 s, rerun-incomplete off and its default resources down."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)
    _, args = parse_args(["--profile", "profiles/slurm", "-n"])
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert args.latency_wait == slurm["latency-wait"] == 60 and args.rerun_incomplete is True
    assert args.default_resources["mem_mb"].value == slurm["default-resources"]["mem_mb"]
    assert args.default_resources["runtime"].value == slurm["default-resources"]["runtime"]
    _, local = parse_args(["-n"])
    assert local.show_failed_logs is True  # what profiles/default gives a local run


def test_the_slurm_profile_without_sbatch_says_so_before_any_job(tmp_path):
    """Without SLURM's tools every job used to fail after ~20 s with "No such file or directory: 'sacct'"."""
    import os
    import shutil
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"  # a PATH with the shell tools Snakemake needs, and no SLURM
    bin_dir.mkdir()
    for tool in ("which", "bash", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (tmp_path / "m.csv").write_text("dialogue_id,utterance_id,split,speaker,label,text\nd1,u0,train,A,a,hi\n"
                                    "d2,u1,test,A,b,no\nd3,u2,valid,A,a,x\n")
    configfile = write_config(tmp_path, {
        "datasets": {"m": {"format": "csv", "manifest": "m.csv", "classes": ["a", "b"], "modalities": ["text"]}},
        "features": {"text": {"minilm": {"model": "packaged:minilm"}}},
        "experiments": {"e": {"dataset": "m", "features": {"text": "minilm"}, "preset": "sdt", "seeds": [0]}}})
    result = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
         "--profile", str(REPO / "profiles" / "slurm"), "--configfile", str(configfile)],
        env={"HOME": os.environ.get("HOME", "/root"), "PATH": f"{Path(sys.executable).parent}:{bin_dir}"},
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0
    assert "submits every job with sbatch, which is not on this machine's PATH" in result.stdout + result.stderr
    assert not (tmp_path / "features").exists()  # no job ran
