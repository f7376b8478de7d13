"""The whole DAG, end to end: outputs, re-run semantics, a killed job, and the HTML report in a browser."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_run import command, planned_jobs, snakemake, write_config


def test_the_dag_writes_every_output(pipeline_run):
    workdir = pipeline_run[0]
    for dataset, n in (("iemocap_demo", 10), ("meld_demo", 10)):
        summary = json.loads((workdir / f"features/{dataset}/summary.json").read_text())
        assert sum(summary["dialogues_per_split"].values()) == n
        for modality, setting, dim in (("text", "minilm", 384), ("audio", "is10", 1582),
                                       ("visual", "densenet121", 1024)):
            with h5py.File(workdir / f"features/{dataset}/{modality}/{setting}.h5") as f:
                assert f["features"].shape == (summary["utterances"], dim)
                assert f.attrs["modality"] == modality and "setting_hash" in f.attrs
    # MELD's planted defects are masked, not dropped: one missing clip, one corrupt, one without audio.
    coverage = pd.read_csv(workdir / "results/meld_demo/coverage.tsv", sep="\t").set_index("split")
    assert coverage.loc["all", "flag: missing_video"] == 1 and coverage.loc["all", "flag: corrupt_video"] == 1
    assert coverage.loc["all", "flag: no_audio_stream"] == 1 and coverage.loc["all", "audio/is10 missing"] >= 3
    # The page says these flags need a fix (ercpipe.report: test_reader_meld checks the flags that need none).
    page = (workdir / "results/meld_demo/coverage.html").read_text()
    assert ("<b>missing_audio, missing_video, corrupt_video, corrupt_audio, no_audio_stream</b>: the utterance lost "
            "a modality, its text or its times; the dataset's issues.tsv names each file and what to do.") in page
    assert "nothing to do" not in page
    for experiment, dataset, seeds in (("iemocap_demo_sdt_vega", "iemocap_demo", 2), ("iemocap_demo_sdt",
                                                                                      "iemocap_demo", 1),
                                       ("meld_demo_sdt_vega", "meld_demo", 1)):
        out = workdir / "results" / dataset / experiment
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n_runs"] == seeds and summary["protocol"]["selection_split"] == "valid"
        for name in ("summary.html", "curves.png", "confusion.png", "tsne.png"):
            assert (out / name).stat().st_size > 0, name
        metrics = json.loads((out / "seed0/metrics.json").read_text())
        assert metrics["protocol"]["epochs_run"] == 3
        assert (metrics["anchors"] is None) == (experiment == "iemocap_demo_sdt")
        assert not (out / "seed0/last.pt").exists() and (out / "seed0/model.pt").exists()
    benchmarks = pd.read_csv(workdir / "results/benchmarks.tsv", sep="\t")
    assert {"text_features", "audio_features", "visual_features", "encode_anchors", "train_model"} <= set(
        benchmarks["rule"])
    assert (benchmarks["wall_s"] > 0).all()
    assert "Nothing to be done" in snakemake(workdir, pipeline_run[1], "-n").stdout


def test_rule_logs_read_without_a_terminal(pipeline_run):
    """Progress bars are plain lines in the logs: no carriage returns, no cursor movements (runlog.ProgressLines)."""
    logs = sorted((pipeline_run[0] / "logs").rglob("*.log"))
    assert len(logs) > 20
    dirty = [str(p) for p in logs if "\r" in p.read_text(errors="replace") or "\x1b" in p.read_text(errors="replace")]
    assert not dirty, dirty
    text_log = next(p for p in logs if "text_features" in str(p)).read_text()
    assert "100%" in text_log  # the bars are still there, as lines


# ------------------------------------------------------------------------------------------ re-run semantics

def _changed(pipeline_run, tmp_path, change) -> dict[str, int]:
    workdir, configfile, _ = pipeline_run
    config = yaml.safe_load(configfile.read_text())
    change(config)
    other = write_config(tmp_path, config, "changed.yaml")
    return planned_jobs(snakemake(workdir, other, "-n").stdout)


def test_changing_the_text_model_reruns_text_training_and_report_only(pipeline_run, tmp_path):
    jobs = _changed(pipeline_run, tmp_path, lambda c: c["features"]["text"]["minilm"].update(pooling="cls"))
    assert jobs["text_features_shard"] == 4 and jobs["train_model"] == 4 and jobs["aggregate_experiment"] == 3
    assert set(jobs) == {"text_features_shard", "merge_features", "feature_coverage", "train_model",
                         "aggregate_experiment", "benchmark_summary", "all"}
    assert jobs["merge_features"] == 2  # the two text files only


def test_changing_the_opensmile_set_reruns_audio_and_downstream_only(pipeline_run, tmp_path):
    jobs = _changed(pipeline_run, tmp_path,
                    lambda c: c["features"]["audio"]["is10"].update(feature_set="eGeMAPSv02"))
    assert jobs["audio_features_shard"] == 4 and jobs["merge_features"] == 2
    assert set(jobs) == {"audio_features_shard", "merge_features", "feature_coverage", "train_model",
                         "aggregate_experiment", "benchmark_summary", "all"}


def test_changing_a_training_hyperparameter_reruns_no_extraction(pipeline_run, tmp_path):
    jobs = _changed(pipeline_run, tmp_path,
                    lambda c: c["experiments"]["iemocap_demo_sdt_vega"]["train"].update(lr=5e-4))
    assert jobs == {"train_model": 2, "aggregate_experiment": 1, "benchmark_summary": 1, "all": 1}


def test_corpus_defaults_written_out_and_model_modalities_in_another_order_rerun_nothing(pipeline_run, tmp_path):
    """The synthetic corpus's params held its settings as written: a default written out regenerated the corpus and
    re-ran everything of that dataset (27 jobs). model.modalities in another order re-trained (the layers were
    built in the written order, so the initial weights differed)."""
    from ercpipe.synthetic import resolve_settings

    def change(config):
        for fmt in ("iemocap", "meld"):
            config.setdefault("synthetic", {})[fmt] = resolve_settings(fmt, config.get("synthetic", {}).get(fmt))
        model = config["experiments"]["iemocap_demo_sdt"].setdefault("model", {})
        model["modalities"] = ["visual", "audio", "text"]

    assert _changed(pipeline_run, tmp_path, change) == {}


def test_a_class_list_on_a_generated_corpus_rebuilds_every_modality_copy(pipeline_run, tmp_path):
    """The copies of a generated corpus's shard rows (one per modality) kept the old rows after a reader setting
    changed: the merge failed ("shards hold 51 rows for 42 manifest utterances"), or left stale notes."""
    def change(config):
        config["datasets"]["iemocap_demo"].update(classes=["hap", "sad", "neu", "ang"], relabel={"exc": "hap"})

    jobs = _changed(pipeline_run, tmp_path, change)
    assert jobs["modality_manifest_shard"] == 6  # text, audio, visual x 2 shards, of iemocap_demo only
    assert jobs["text_features_shard"] == jobs["audio_features_shard"] == jobs["visual_features_shard"] == 2
    assert jobs["build_manifest"] == 1 and "synthetic_corpus" not in jobs


def test_a_generated_corpus_declared_without_audio_extracts_nothing_again(pipeline_run, tmp_path):
    """`modalities` stood in the settings that the generated corpus's modality views re-run on: declaring one
    medium fewer re-extracted the text and faces (identical features) as well; a real dataset's did not."""
    def change(config):
        config["datasets"]["iemocap_demo"]["modalities"] = ["text", "visual"]
        for name in ("iemocap_demo_sdt_vega", "iemocap_demo_sdt"):
            config["experiments"][name]["features"].pop("audio")

    jobs = _changed(pipeline_run, tmp_path, change)
    assert not {"modality_manifest_shard", "text_features_shard", "visual_features_shard", "audio_features_shard",
                "synthetic_corpus"} & set(jobs), jobs
    assert jobs["build_manifest_shard"] == 2 and jobs["train_model"] == 3, jobs  # its manifest rows lost their audio


def test_the_anchor_settings_written_another_way_rerun_nothing_and_a_batch_size_encodes(pipeline_run, tmp_path):
    """encode_anchors' params held the clip block as written: its defaults written out, `ViT-B/32` for ViT-B-32 or
    a batch size re-encoded the anchors and retrained every VEGA experiment; `batch_size`, which the schema
    accepts, made the encoding job fail (an unknown clip setting)."""
    def change(config):
        config["anchors"]["demo_faces"]["clip"].update(model="ViT-B/32", quick_gelu=None, batch_size=4)

    assert _changed(pipeline_run, tmp_path, change) == {}
    workdir, configfile, _ = pipeline_run
    config = yaml.safe_load(configfile.read_text())
    change(config)
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    changed = write_config(copy, config, "changed.yaml")
    target = "anchors/demo_faces/ViT-B-32.h5"
    before = h5py.File(copy / target)["centers"][()]
    snakemake(copy, changed, "--cores", "1", "--forcerun", "encode_anchors", target)
    batches = -(-len(list((copy / "anchors/demo_faces/images").glob("*/*.png"))) // 4)
    assert f"| {batches}/{batches} [" in (copy / "logs/encode_anchors/demo_faces/ViT-B-32.log").read_text()
    with h5py.File(copy / target) as f:
        np.testing.assert_allclose(f["centers"][()], before, atol=1e-5)


def test_the_anchor_clip_check_written_out_re_trains_nothing(pipeline_run, tmp_path):
    """model.clip_model only says which CLIP the anchor file must come from (a check): writing it out re-trained
    every VEGA run. The job reads it (and train.checkpoint_every) from the config."""
    from ercpipe.train.presets import with_non_training_keys

    def write_out(config):
        config["experiments"]["iemocap_demo_sdt_vega"].setdefault("model", {})["clip_model"] = "ViT-B-32"

    assert _changed(pipeline_run, tmp_path, write_out) == {}
    params = {"model": {"hidden_dim": 32}, "train": {"epochs": 2}}
    assert with_non_training_keys(params, {"model": {"clip_model": "ViT-L-14"}, "train": {"checkpoint_every": 3}}) \
        == {"model": {"hidden_dim": 32, "clip_model": "ViT-L-14"}, "train": {"epochs": 2, "checkpoint_every": 3}}
    assert params == {"model": {"hidden_dim": 32}, "train": {"epochs": 2}}  # not changed in place


def _longer_training(pipeline_run, tmp_path, epochs: int) -> tuple[Path, Path, Path, Path, str]:
    """A copy of the demo run whose SDT seed 0 trains `epochs` epochs: (workdir, config, run dir, log, target)."""
    source, configfile, _ = pipeline_run
    workdir = tmp_path / "copy"
    shutil.copytree(source, workdir, symlinks=True)
    config = yaml.safe_load(configfile.read_text())
    config["experiments"]["iemocap_demo_sdt"]["train"].update(epochs=epochs, patience=None)
    longer = write_config(workdir, config, "longer.yaml")
    run_dir = workdir / "results/iemocap_demo/iemocap_demo_sdt/seed0"
    log = workdir / "logs/train_model/iemocap_demo/iemocap_demo_sdt/seed0.log"
    log.unlink()  # the first run's log has its epochs too: wait for the new job's
    return workdir, longer, run_dir, log, str(run_dir.relative_to(workdir) / "metrics.json")


def _wait_for_epoch(log: Path, epoch: int, process: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while not (log.exists() and f"epoch {epoch}:" in log.read_text()):
        assert process.poll() is None and time.time() < deadline, f"training did not reach epoch {epoch}"
        time.sleep(0.2)


def test_a_killed_job_is_marked_incomplete_and_resumes(pipeline_run, tmp_path):
    workdir, longer, run_dir, log, target = _longer_training(pipeline_run, tmp_path, 60)
    process = subprocess.Popen(command(workdir, longer, "--cores", "1", target), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_epoch(log, 5, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # snakemake and its job, as a scheduler or the OOM killer would
        process.wait()
    time.sleep(1)
    assert not (run_dir / "metrics.json").exists() and (run_dir / "last.pt").exists()
    # No output was left: the history so far is under another name (a partial history.tsv looked complete).
    assert not (run_dir / "history.tsv").exists() and (run_dir / "history.running.tsv").exists()
    # The README's recipe after a kill: --unlock (a stale lock may remain), then --rerun-incomplete.
    snakemake(workdir, longer, "--unlock")
    snakemake(workdir, longer, "--cores", "1", "--rerun-incomplete", target)
    text = log.read_text()
    assert "resuming from" in text and "not resuming" not in text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["protocol"]["epochs_run"] == 60
    assert len(pd.read_csv(run_dir / "history.tsv", sep="\t")) == 60 and not (run_dir / "history.running.tsv").exists()


def test_a_job_killed_for_memory_is_retried_with_twice_its_memory_and_time_and_resumes(pipeline_run, tmp_path):
    """The SLURM profile's `retries: 1` used to resubmit a job with the same mem_mb and runtime, so one killed by
    its memory (or time) limit was killed again. The job's own process is killed as the OOM killer would."""
    workdir, longer, run_dir, log, target = _longer_training(pipeline_run, tmp_path, 40)
    process = subprocess.Popen(command(workdir, longer, "--cores", "1", "--retries", "1", target),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_epoch(log, 7, process)  # past the resume state written after epoch 5 (checkpoint_every)
        holder = log.with_name(f".{log.name}.lock").read_text()  # "pid N on HOST" (ercpipe.runlog)
        os.kill(int(holder.split()[1]), signal.SIGKILL)
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output[-4000:]
    announced = [line for line in output.splitlines() if line.strip().startswith("resources:")]
    assert len(announced) == 2, output[-4000:]
    assert "mem_mb=8000," in announced[0] and "runtime=600" in announced[0]
    # Training's time is not doubled: it resumes, and twice a long limit is past many partitions' MaxTime.
    assert "mem_mb=16000," in announced[1] and "runtime=600" in announced[1]
    assert "resuming from" in log.read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["protocol"]["epochs_run"] == 40


# ------------------------------------------------------------------------------------------ the HTML report

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def test_the_report_renders_tables_and_images_in_chromium(pipeline_run):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it)")
    workdir, configfile, _ = pipeline_run
    report = workdir / "report.html"
    snakemake(workdir, configfile, "--report", str(report))
    assert report.stat().st_size > 100_000
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(report.as_uri())
        page.wait_for_selector("text=Results")
        menu = page.inner_text("body")
        for category in ("Data", "Results", "Benchmarks"):
            assert category in menu

        def open_item(category: str, subcategory: str | None, label: str):
            page.goto(report.as_uri())
            page.get_by_text(category, exact=True).last.click()
            if subcategory:  # the menu's link (the workflow description names datasets too)
                page.get_by_role("link", name=subcategory, exact=True).click()
            rows = page.locator("tr", has_text=label)
            if not rows.count():  # items that differ in one label only are chosen with a toggle button
                page.get_by_text(label).first.click()
                rows = page.locator("tr", has_text=subcategory or "")
            rows.locator("a").first.click()  # the "eye": show the item
            page.wait_for_timeout(500)

        # Tables: the experiment summary (mean ± std over seeds, per class) and the feature coverage.
        for category, subcategory, label, expected in (
                ("Results", "iemocap_demo_sdt_vega", "metrics", ["weighted F1", "Per class (test)", "±", "hap"]),
                ("Data", "meld_demo", "feature coverage", ["visual/densenet121 missing", "flag: corrupt_video"]),
                ("Benchmarks", None, "wall time", ["train_model", "visual_features"])):
            open_item(category, subcategory, label)
            frames = [f for f in page.frames if f != page.main_frame]
            texts = [f.inner_text("body") for f in frames if f.locator("table").count()]
            assert texts, f"no table rendered for {label}"
            for needle in expected:
                assert any(needle in t for t in texts), (label, needle)
        # Images: confusion matrix, curves and t-SNE are decoded (natural width > 0).
        for label in ("confusion matrix", "training curves", "t-SNE"):
            open_item("Results", "iemocap_demo_sdt_vega", label)
            widths = page.evaluate("Array.from(document.images).filter(i => i.src.startsWith('data:image/png'))"
                                   ".map(i => i.naturalWidth)")
            assert widths and all(w > 100 for w in widths), (label, widths)
        browser.close()
    assert not errors, errors
