"""The demo DAG through a real one-node SLURM on localhost (started by the test), equal to a local run."""
from __future__ import annotations

import json
import os
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


def test_uncommenting_the_slurm_profiles_gpu_lines_keeps_every_rules_settings(monkeypatch, tmp_path):
    """The profile's GPU lines, uncommented as its comment says, give each GPU rule a partition and keep
    train_model's memory and time: a second `train_model:` block (how they were written before) silently
    replaced the first, so training lost either its GPU partition or its 16 GB."""
    from snakemake.cli import parse_args

    from ercpipe.config import check_config_files

    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    gpu_rules = {"train_model", "finetune_text_encoder", "text_features_shard", "visual_features_shard",
                 "encode_anchors"}
    rules_with_gpu = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):(.*?)(?=^rule |\Z)", smk.read_text(), flags=re.S | re.M):
            if "gpu=GPU" in body:
                rules_with_gpu.add(name)
    assert rules_with_gpu == gpu_rules
    uncommented = re.sub(r"^(\s*)# (\s*\w+:( \w+)?)$", r"\1\2", text, flags=re.M)
    assert uncommented.count("slurm_partition: gpu") == len(gpu_rules)
    profile = tmp_path / "slurm"
    profile.mkdir()
    (profile / "config.yaml").write_text(uncommented)
    check_config_files([profile / "config.yaml"])  # no key twice in one block
    monkeypatch.chdir(REPO)
    _, args = parse_args(["--profile", str(profile), "-n"])
    resources = args.set_resources  # what Snakemake will apply: rule -> {key: Resource}
    assert {rule for rule, keys in resources.items() if "slurm_partition" in keys} == gpu_rules
    assert set(resources["train_model"]) == {"mem_mb", "runtime", "slurm_partition", "gpu_model"}
    values = yaml.safe_load(uncommented)["set-resources"]
    assert {rule for rule, keys in values.items() if keys.get("slurm_partition") == "gpu"} == gpu_rules
    assert values["train_model"]["mem_mb"] == "16000 * attempt" and values["train_model"]["runtime"] == 720


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


STATUS = REPO / "profiles" / "generic" / "status.sh"


def _status(job: str, path: str | None = None) -> str:
    import os
    import subprocess

    env = {**os.environ, **({"PATH": path} if path else {})}
    result = subprocess.run([str(STATUS), job], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_generic_profiles_status_script_follows_real_slurm_jobs(tmp_path):
    """profiles/generic named a status.sh that did not exist: without a status command, a job the scheduler killed
    left Snakemake waiting for ever. Here the script follows real jobs through sbatch / squeue / scontrol."""
    import subprocess
    import time

    reason = slurm_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    config = yaml.safe_load((REPO / "profiles" / "generic" / "config.yaml").read_text())
    assert config["cluster-generic-status-cmd"] == "profiles/generic/status.sh"
    # A node configured with more memory than this host has (the demo's test asks 20000 MB) still takes jobs.
    host_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    with slurm_cluster.local_slurm(tmp_path / "slurm-state", memory_mb=4 * host_mb):
        def submit(command: str) -> str:
            return subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--mem", "100", "--wrap", command],
                                  capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()

        jobs = {"exit 3": submit("exit 3"), "true": submit("true"), "sleep 120": submit("sleep 120")}
        deadline = time.time() + 120
        while {_status(jobs["exit 3"]), _status(jobs["true"])} & {"running"} and time.time() < deadline:
            time.sleep(1)
        assert _status(jobs["exit 3"]) == "failed" and _status(jobs["true"]) == "success"
        assert _status(jobs["true"] + ";cluster") == "success"  # what --parsable prints on a federation
        assert _status(f"Submitted batch job {jobs['true']}") == "success"  # sbatch without --parsable
        assert _status(jobs["sleep 120"]) == "running"
        subprocess.run(["scancel", jobs["sleep 120"]], check=True)
        while _status(jobs["sleep 120"]) == "running" and time.time() < deadline:
            time.sleep(1)
        assert _status(jobs["sleep 120"]) == "failed"  # as a job killed for its limits
        assert _status("999999") == "failed"  # no such job: never "running", which would wait for ever


@pytest.mark.parametrize("tools, cases", [
    # LSF: bjobs -noheader -o stat; bsub prints "Job <N> is submitted ...".
    ({"bjobs": 'case "$4" in 11) echo DONE;; 12) echo EXIT;; 13) echo RUN;; *) exit 255;; esac'},
     {"Job <11> is submitted to queue <normal>.": "success", "12": "failed", "13": "running", "14": "failed"}),
    # SGE: qstat -j knows queued and running jobs; qacct the finished ones.
    ({"qstat": '[ "$2" = 21 ]', "qacct": 'case "$2" in 22) printf "failed       0\\nexit_status  0\\n";; '
                                         '23) printf "failed       0\\nexit_status  1\\n";; *) exit 1;; esac'},
     {"21": "running", 'Your job 22 ("smk.x") has been submitted': "success", "23": "failed", "24": "failed"}),
    # PBS Pro: a finished job only with -x (state F, Exit_status); Torque: state C, exit_status.
    ({"qstat": 'case "$*" in "-f 31.pbs") printf "Job Id: 31.pbs\\n    job_state = R\\n";; '
               '"-f -x 32.pbs") printf "Job Id: 32.pbs\\n    job_state = F\\n    Exit_status = 0\\n";; '
               '"-f 33.torque") printf "Job Id: 33.torque\\n    job_state = C\\n    exit_status = 271\\n";; '
               '*) exit 153;; esac'},
     {"31.pbs": "running", "32.pbs": "success", "33.torque": "failed", "34.pbs": "failed"}),
])
def test_the_generic_profiles_status_script_reads_other_schedulers(tmp_path, tools, cases):
    """Stand-ins print what LSF, SGE and PBS print (their documented formats; none of them runs here)."""
    import shutil

    bin_dir = tmp_path / "bin"  # the shell tools the script uses, the stand-ins, and no SLURM
    bin_dir.mkdir()
    for tool in ("bash", "awk", "grep", "cut", "head", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    assert {job: _status(job, str(bin_dir)) for job in cases} == cases
