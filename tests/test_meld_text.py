"""The MELD text-only recipe (workflow/configs/meld_text.yaml) on a slice of the real CSVs, end to end."""
from __future__ import annotations

import copy
import csv
import json
import os
import re
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

from ercpipe import config as pipeline_config
from workflow_run import REPO, planned_jobs, snakemake, write_config

SLICE = {"train_sent_emo.csv": 5, "dev_sent_emo.csv": 3, "test_sent_emo.csv": 3}  # dialogues per file


def slice_meld_csvs(source: Path, target: Path) -> dict[str, int]:
    """The first dialogues of each real CSV in its own encoding (latin-1 round-trips every byte), no clips."""
    target.mkdir(parents=True)
    rows_written = {}
    for name, n_dialogues in SLICE.items():
        with open(source / name, encoding="latin-1", newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        column = header.index("Dialogue_ID")
        keep = sorted({r[column] for r in body}, key=int)[:n_dialogues]
        chosen = [r for r in body if r[column] in keep]
        with open(target / name, "w", encoding="latin-1", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([header, *chosen])
        rows_written[name] = len(chosen)
    return rows_written


@pytest.fixture(scope="module")
def meld_text_run(meld_csv_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("meld_text")
    counts = slice_meld_csvs(meld_csv_dir, workdir / "raw" / "MELD.Raw")
    config = yaml.safe_load((REPO / "workflow" / "configs" / "meld_text.yaml").read_text())
    # The shipped recipe, made small: one fine-tuning seed (not the default 0, so that it is seen to reach the
    # encoder) of one epoch, two class weightings, both contexts, training 3 epochs with one seed; the ensembles of
    # the k best (every k) stay.
    search = config["selections"]["text_recipe"]["search"]
    search["text"]["finetune"]["epochs"] = 1
    search["finetune_seeds"] = [1]
    search["class_weights"] = ["none", "paper"]
    search["experiment"]["train"] = {**search["experiment"].get("train", {}), "epochs": 3, "patience": None}
    search["experiment"]["seeds"] = [0]
    configfile = write_config(workdir, config)
    snakemake(workdir, configfile, "--cores", "2")
    expanded = copy.deepcopy(config)
    pipeline_config.expand_searches(expanded, workdir)
    return workdir, configfile, counts, expanded


def test_csvs_alone_run_text_only_end_to_end(meld_text_run):
    workdir, configfile, counts, config = meld_text_run
    manifest = pd.read_csv(workdir / "features/meld_text/manifest.tsv", sep="\t", keep_default_na=False)
    assert len(manifest) == sum(counts.values())
    assert manifest.groupby("split")["dialogue_id"].nunique().to_dict() == {"train": 5, "valid": 3, "test": 3}
    # Declared text-only: no clip is looked for or flagged; the summary reports the difference from the release.
    assert not manifest["flags"].str.contains("missing_|no_audio|no_video|corrupt_").any()
    assert (manifest["audio_path"] == "").all() and (manifest["video_path"] == "").all()
    issues = pd.read_csv(workdir / "features/meld_text/issues.tsv", sep="\t")
    assert not issues["reason"].str.contains("missing_|no_video|no_audio").any()
    summary = json.loads((workdir / "features/meld_text/summary.json").read_text())
    assert not summary["checks_ok"] and summary["modalities"] == ["text"]
    coverage = pd.read_csv(workdir / "results/meld_text/coverage.tsv", sep="\t").set_index("split")
    assert not any(column.startswith("flag: missing") for column in coverage.columns)
    page = (workdir / "results/meld_text/coverage.html").read_text()
    assert "The dataset has text; it declares no audio or visual" in page
    # The reader's comparison with the release (a subset here: every count differs) is on the page, not only in
    # summary.json, so a run on an incomplete release does not look normal in the report.
    differ = sum(not c["ok"] for c in summary["checks"])
    assert "Checks against the release" in page and f"{differ} of {len(summary['checks'])} differ" in page
    setting = next(iter(config["features"]["text"]))
    with h5py.File(workdir / f"features/meld_text/text/{setting}.h5") as f:
        assert f["present"][()].all() and f["features"].shape == (len(manifest), 384)
    # Fine-tuning saw train and chose on dev; the test split never reached it.
    tuned = json.loads((workdir / f"features/meld_text/text_encoders/{setting}/metrics.json").read_text())
    assert tuned["splits_read"] == ["train", "valid"] and tuned["utterances"]["train"] == counts["train_sent_emo.csv"]
    for name, experiment in config["experiments"].items():
        metrics = json.loads((workdir / f"results/meld_text/{name}/seed0/metrics.json").read_text())
        assert metrics["config"]["model"]["modalities"] == ["text"]
        assert metrics["test"]["n"] == counts["test_sent_emo.csv"]
        assert (metrics["anchors"] is not None) == bool(experiment.get("anchors"))
        assert (workdir / f"results/meld_text/{name}/summary.html").exists()
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def test_the_recipe_search_chooses_on_dev_among_contexts_weights_and_the_ensemble(meld_text_run):
    workdir, _, _, config = meld_text_run
    selection = config["selections"]["text_recipe"]
    assert sorted(selection["candidates"]) == sorted(
        f"text_recipe_{context}_ft1_{weights}" for context in ("plain", "speakers") for weights in ("none", "paper"))
    # The speaker-aware encoders were fine-tuned on "Speaker: text" inputs with the target set apart.
    tuned = json.loads((workdir / "features/meld_text/text_encoders/text_recipe_speakers_ft1/metrics.json").read_text())
    assert tuned["settings"]["context"] == {"previous": 2, "next": 1, "speaker_names": True, "mark_target": True,
                                            "separator": None}
    assert tuned["settings"]["finetune"]["seed"] == 1
    runs = {c: json.loads((workdir / f"results/meld_text/{c}/seed0/metrics.json").read_text()) for c in selection["candidates"]}
    assert {c: r["class_weights"]["source"].split(" ")[0] for c, r in runs.items()} == {
        c: {"none": "none", "paper": "paper"}[c.rsplit("_", 1)[1]] for c in selection["candidates"]}

    published = json.loads((workdir / "results/meld_text/text_recipe/summary.json").read_text())
    ranking = pd.read_csv(workdir / "results/meld_text/text_recipe/selection.tsv", sep="\t")
    n = len(selection["candidates"])
    ensembles = [f"ensemble_top{k}" for k in range(2, n + 1)]  # `ensemble: all`: every count of the best
    assert sorted(ranking["experiment"]) == sorted([*selection["candidates"], *ensembles])
    dev = dict(zip(ranking["experiment"], ranking["valid.weighted_f1 mean"]))
    chosen = published["selection"]["chosen"]
    assert ranking.loc[ranking["chosen"], "experiment"].tolist() == [chosen]
    assert dev[chosen] == max(dev.values())
    singles = {c: json.loads((workdir / f"results/meld_text/{c}/summary.json").read_text()) for c in selection["candidates"]}
    by_dev = sorted(selection["candidates"], key=lambda c: -singles[c]["metrics"]["valid.weighted_f1"]["mean"])
    assert {name: sorted(e["members"]) for name, e in published["selection"]["ensembles"].items()} == {
        f"ensemble_top{k}": sorted(by_dev[:k]) for k in range(2, n + 1)}
    if chosen not in ensembles:
        assert published["metrics"] == singles[chosen]["metrics"]
    # The chosen candidate's predictions, one file per seed, whichever kind it is.
    for seed in published["seeds"]:
        rows = pd.read_csv(workdir / f"results/meld_text/text_recipe/predictions/seed{seed}.tsv", sep="\t")
        assert set(rows["split"]) == {"valid", "test"} and rows["utterance_id"].is_unique


def test_weighting_the_finetuning_too_re_runs_only_the_weighted_encoders_and_their_candidates(meld_text_run):
    workdir = meld_text_run[0]
    changed = yaml.safe_load((workdir / "config.yaml").read_text())
    changed["selections"]["text_recipe"]["search"]["finetune_class_weights"] = "same"
    out = snakemake(workdir, write_config(workdir, changed, "same.yaml"), "-n").stdout
    jobs = planned_jobs(out)
    # 2 contexts x 1 seed: one new encoder each for the `paper` candidates; the unweighted ones are kept.
    assert jobs["finetune_text_encoder"] == 2 and jobs["merge_features"] == 2
    assert jobs["train_model"] == 2 and jobs["aggregate_experiment"] == 2 and jobs["select_experiment"] == 1
    assert "build_manifest" not in jobs and "build_manifest_shard" not in jobs
    def job_blocks(rule):  # the indented lines under each "rule X:" job header (not rule all's list of targets)
        return re.findall(rf"^rule {rule}:\n((?:[ \t]+.*(?:\n|$))+)", out, re.M)

    finetunes = job_blocks("finetune_text_encoder")
    assert sorted(re.search(r"output: \S*text_encoders/(text_recipe_\w+)", job).group(1) for job in finetunes) == sorted(
        f"text_recipe_{context}_ft1_paper" for context in ("plain", "speakers"))
    trainings = job_blocks("train_model")
    assert len(trainings) == 2 and not any(re.search(r"text_recipe_\w+_none/seed0/metrics.json", t) for t in trainings)


def test_an_extraction_only_setting_re_extracts_without_fine_tuning_again(meld_text_run):
    """last_layers / the extraction batch size do not change what the encoder learns: the encoders stay."""
    workdir = meld_text_run[0]
    changed = yaml.safe_load((workdir / "config.yaml").read_text())
    changed["selections"]["text_recipe"]["search"]["text"]["last_layers"] = 2
    jobs = planned_jobs(snakemake(workdir, write_config(workdir, changed, "layers.yaml"), "-n").stdout)
    assert "finetune_text_encoder" not in jobs and jobs["merge_features"] == 2, jobs


def _relabelled(csv_path: Path, row: int) -> bytes:
    """The CSV's bytes with data row `row`'s Emotion changed (latin-1 round-trips every byte)."""
    with open(csv_path, encoding="latin-1", newline="") as f:
        rows = list(csv.reader(f))
    column = rows[0].index("Emotion")
    rows[1 + row][column] = "sadness" if rows[1 + row][column] != "sadness" else "joy"
    import io

    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("latin-1")


@pytest.mark.parametrize("split_file, fine_tunes", [("test_sent_emo.csv", False), ("train_sent_emo.csv", True)])
def test_a_fixed_label_re_fine_tunes_only_when_fine_tuning_reads_it(meld_text_run, split_file, fine_tunes):
    """Fine-tuning reads the train and valid rows only: a fixed test label re-ran every fine-tuning and every
    text extraction (hours with a large encoder), though only the trainings read test labels."""
    workdir, configfile = meld_text_run[:2]
    path = workdir / "raw" / "MELD.Raw" / split_file
    original, stat = path.read_bytes(), path.stat()
    path.write_bytes(_relabelled(path, 0))
    try:
        out = snakemake(workdir, configfile, "-n").stdout
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    jobs = planned_jobs(out)
    encoders = len(list((workdir / "features/meld_text/text_encoders").iterdir()))
    assert jobs.get("finetune_manifest", 0) == int(fine_tunes), jobs
    assert jobs.get("finetune_text_encoder", 0) == (encoders if fine_tunes else 0), jobs
    assert ("text_features_shard" in jobs) == fine_tunes and jobs["train_model"] > 0, jobs
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def test_a_missing_fine_tuned_encoder_is_made_again(meld_text_run):
    """A fine-tuning job stopped after its text features existed left the encoder folder missing, and Snakemake
    saw nothing to do, while `ercpipe predict --conversation` needs that folder."""
    workdir, configfile = meld_text_run[:2]
    encoders = sorted((workdir / "features/meld_text/text_encoders").iterdir())
    assert encoders
    aside = workdir / "encoder_aside"
    encoders[0].rename(aside)
    try:
        jobs = planned_jobs(snakemake(workdir, configfile, "-n").stdout)
    finally:
        aside.rename(encoders[0])
    assert jobs["finetune_text_encoder"] == 1, jobs
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def test_a_report_is_refused_while_jobs_are_pending_and_built_for_finished_targets(meld_text_run):
    """Snakemake's --report embeds whatever files exist: after a changed setting it showed the old setting's
    results as current (exit 0), and after a failed job it stopped on a missing file without saying why."""
    workdir, configfile = meld_text_run[:2]
    snakemake(workdir, configfile, "--report", str(workdir / "report.html"))
    assert "text_recipe" in (workdir / "report.html").read_text(errors="replace")
    assert not list(workdir.glob(".report.html.tmp*"))  # written staged (a killed report keeps the last good one)
    changed = yaml.safe_load(configfile.read_text())
    changed["selections"]["text_recipe"]["search"]["experiment"]["train"]["lr"] = 0.002
    stale = write_config(workdir, changed, "lr.yaml")
    trainings = planned_jobs(snakemake(workdir, stale, "-n").stdout)["train_model"]
    refused = snakemake(workdir, stale, "--report", str(workdir / "stale.html"), check=False)
    assert refused.returncode != 0 and not (workdir / "stale.html").exists()
    assert "job(s) have not run, failed, or must run again for the current config (" in refused.stdout
    assert f"train_model x{trainings}," in refused.stdout
    assert "snakemake <target files> --report FILE" in refused.stdout
    # The message alone, not followed by the stack frames of the code that refused.
    assert "Error: --report: " in refused.stdout and 'File "' not in refused.stdout
    # What is finished under the new config can still be reported, by naming it.
    snakemake(workdir, stale, "results/meld_text/coverage.tsv", "--report", str(workdir / "coverage.html"))
    assert (workdir / "coverage.html").stat().st_size > 0
