"""The MELD text-only experiment (workflow/configs/meld_text.yaml) on a slice of the real CSVs, end to end."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

from workflow_run import REPO, snakemake, write_config

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
    # The shipped experiment, made small: fewer fine-tuning and training epochs, one seed.
    for setting in config["features"]["text"].values():
        if setting.get("finetune"):
            setting["finetune"]["epochs"] = 1
    for experiment in config["experiments"].values():
        experiment["train"] = {**experiment.get("train", {}), "epochs": 3, "patience": None}
        experiment["seeds"] = [0]
    configfile = write_config(workdir, config)
    snakemake(workdir, configfile, "--cores", "2")
    return workdir, configfile, counts, config


def test_csvs_alone_run_text_only_end_to_end(meld_text_run):
    workdir, configfile, counts, config = meld_text_run
    manifest = pd.read_csv(workdir / "features/meld/manifest.tsv", sep="\t", keep_default_na=False)
    assert len(manifest) == sum(counts.values())
    assert manifest.groupby("split")["dialogue_id"].nunique().to_dict() == {"train": 5, "valid": 3, "test": 3}
    # Declared text-only: no clip is looked for or flagged; the summary reports the difference from the release.
    assert not manifest["flags"].str.contains("missing_|no_audio|no_video|corrupt_").any()
    assert (manifest["audio_path"] == "").all() and (manifest["video_path"] == "").all()
    issues = pd.read_csv(workdir / "features/meld/issues.tsv", sep="\t")
    assert not issues["reason"].str.contains("missing_|no_video|no_audio").any()
    summary = json.loads((workdir / "features/meld/summary.json").read_text())
    assert not summary["checks_ok"] and summary["modalities"] == ["text"]
    coverage = pd.read_csv(workdir / "results/meld/coverage.tsv", sep="\t").set_index("split")
    assert not any(column.startswith("flag: missing") for column in coverage.columns)
    assert "The dataset has text; it declares no audio or visual" in (workdir / "results/meld/coverage.html").read_text()
    setting = next(iter(config["features"]["text"]))
    with h5py.File(workdir / f"features/meld/text/{setting}.h5") as f:
        assert f["present"][()].all() and f["features"].shape == (len(manifest), 384)
    # Fine-tuning saw train and chose on dev; the test split never reached it.
    tuned = json.loads((workdir / f"features/meld/text_encoders/{setting}/metrics.json").read_text())
    assert tuned["splits_read"] == ["train", "valid"] and tuned["utterances"]["train"] == counts["train_sent_emo.csv"]
    for name, experiment in config["experiments"].items():
        metrics = json.loads((workdir / f"results/meld/{name}/seed0/metrics.json").read_text())
        assert metrics["config"]["model"]["modalities"] == ["text"]
        assert metrics["test"]["n"] == counts["test_sent_emo.csv"]
        assert (metrics["anchors"] is not None) == bool(experiment.get("anchors"))
        assert (workdir / f"results/meld/{name}/summary.html").exists()
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def test_selections_choose_the_encoder_on_dev(meld_text_run):
    workdir, _, _, config = meld_text_run
    assert set(config["selections"]) == {"meld_text", "meld_text_vega"}
    for name, selection in config["selections"].items():
        dev = {c: json.loads((workdir / f"results/meld/{c}/summary.json").read_text())["metrics"]
               ["valid.weighted_f1"]["mean"] for c in selection["candidates"]}
        published = json.loads((workdir / f"results/meld/{name}/summary.json").read_text())
        chosen = published["selection"]["chosen"]
        assert dev[chosen] == max(dev.values())
        assert chosen == next(c for c in selection["candidates"] if dev[c] == max(dev.values()))
        own = json.loads((workdir / f"results/meld/{chosen}/summary.json").read_text())
        assert published["metrics"] == own["metrics"]
        assert (workdir / f"results/meld/{name}/summary.tsv").read_text() == \
            (workdir / f"results/meld/{chosen}/summary.tsv").read_text()
        ranking = pd.read_csv(workdir / f"results/meld/{name}/selection.tsv", sep="\t")
        assert sorted(ranking["experiment"]) == sorted(selection["candidates"])
        assert ranking.loc[ranking["chosen"], "experiment"].tolist() == [chosen]
