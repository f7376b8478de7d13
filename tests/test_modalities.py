"""Declared modalities per dataset (datasets.*.modalities) and anchor sets a dataset's classes cannot use."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ercpipe import config as pipeline_config
from ercpipe.datasets.build import build_manifest
from ercpipe.io.manifest import ManifestError
from ercpipe.synthetic.faces import DRAWABLE_EMOTIONS

from test_meld_text import slice_meld_csvs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def meld_csvs(meld_csv_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("meld") / "MELD.Raw"
    slice_meld_csvs(meld_csv_dir, root)
    return root


def test_a_text_only_dataset_records_no_media_flags(meld_csvs, tmp_path):
    build_manifest("meld", {"format": "meld", "root": str(meld_csvs), "modalities": ["text"]}, tmp_path / "text")
    clips = tmp_path / "clips"  # the CSVs with empty clip folders: every clip missing, flagged one by one
    shutil.copytree(meld_csvs, clips)
    for folder in ("train_splits", "dev_splits_complete", "output_repeated_splits_test"):
        (clips / folder).mkdir()
    # Not one clip there: the reader stops (every row flagged, the pipeline ran on zeros, said only in job logs).
    with pytest.raises(ManifestError, match=r"dataset meld: not one of the \d+ audio files its train utterances name "
                                            r"exists "
                                            r"\(e.g. .*train_splits/dia0_utt0.mp4 does not exist\)\. Check "
                                            r"datasets.meld.root"):
        build_manifest("meld", {"format": "meld", "root": str(clips)}, tmp_path / "none")
    # Per split: MELD ships one archive per split, and one left unpacked is named.
    (clips / "train_splits/dia0_utt0.mp4").write_bytes(b"")  # one clip there (a damaged one): the others are flags
    (clips / "dev_splits_complete/dia0_utt0.mp4").write_bytes(b"")
    with pytest.raises(ManifestError, match=r"not one of the \d+ audio files its test utterances name exists \(e.g. "
                                            r".*output_repeated_splits_test/dia0_utt0.mp4 does not exist\)"):
        build_manifest("meld", {"format": "meld", "root": str(clips)}, tmp_path / "none")
    (clips / "output_repeated_splits_test/dia0_utt0.mp4").write_bytes(b"")
    build_manifest("meld", {"format": "meld", "root": str(clips)}, tmp_path / "all")
    text = pd.read_csv(tmp_path / "text/issues.tsv", sep="\t")
    everything = pd.read_csv(tmp_path / "all/issues.tsv", sep="\t")
    # Without the declaration every missing clip is flagged twice; with it, only the real problems remain.
    media = {"missing_audio", "missing_video", "corrupt_video", "corrupt_audio", "no_audio_stream", "no_video"}
    n = len(pd.read_csv(tmp_path / "all/manifest.tsv", sep="\t"))
    assert (everything["reason"] == "missing_video").sum() == n - 3
    assert not set(text["reason"]) & media
    assert sorted(text.drop(columns=["detail", "file"]).values.tolist()) == sorted(
        everything.loc[~everything["reason"].isin(media)].drop(columns=["detail", "file"]).values.tolist())
    manifest = pd.read_csv(tmp_path / "text/manifest.tsv", sep="\t", keep_default_na=False)
    assert (manifest["audio_path"] == "").all() and (manifest["video_path"] == "").all()
    text_summary = json.loads((tmp_path / "text/summary.json").read_text())
    assert text_summary["modalities"] == ["text"]
    # The clip folders are not looked for: the CSVs alone are a text-only dataset (with clips declared, the
    # missing folders are an error: test_reader_meld).
    assert not [c for c in text_summary["checks"] if c["check"].startswith("clip folder")]
    assert json.loads((tmp_path / "all/summary.json").read_text())["modalities"] == ["text", "audio", "visual"]


@pytest.fixture()
def demo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_an_experiment_cannot_use_an_undeclared_modality(demo_config):
    config = copy.deepcopy(demo_config)
    config["datasets"]["meld_demo"]["modalities"] = ["text"]
    with pytest.raises(pipeline_config.ConfigError,
                       match=r"experiments.meld_demo_sdt_vega.features.audio: dataset meld_demo declares modalities "
                             r"\['text'\] \(datasets.meld_demo.modalities\)"):
        pipeline_config.check(config, REPO)
    config["experiments"]["meld_demo_sdt_vega"]["features"] = {"text": "minilm"}
    pipeline_config.check(config, REPO)


def test_mining_anchors_needs_a_dataset_with_video(demo_config):
    config = copy.deepcopy(demo_config)
    config["datasets"]["meld_demo"]["modalities"] = ["text"]
    config["experiments"]["meld_demo_sdt_vega"]["features"] = {"text": "minilm"}
    config["anchors"]["demo_faces"] = {"mine": {"dataset": "meld_demo", "visual": "densenet121"},
                                       "clip": {"model": "ViT-B-32", "pretrained": None}}
    with pytest.raises(pipeline_config.ConfigError, match=r"anchors.demo_faces.mine.dataset: meld_demo declares no "
                                                          r"visual modality .* images: .* official:"):
        pipeline_config.check(config, REPO)


def test_classes_without_a_drawn_face_get_the_choices(demo_config, tmp_path):
    config = copy.deepcopy(demo_config)
    manifest = tmp_path / "m.csv"
    manifest.write_text("dialogue_id,utterance_id,split,speaker,label,text\n"
                        "d0,u0,train,A,joyful,hello\nd0,u1,train,B,powerful,hi\n")
    config["datasets"]["tv"] = {"format": "csv", "manifest": str(manifest), "classes": ["joyful", "powerful"],
                                "modalities": ["text"]}
    config["experiments"]["tv_vega"] = {"dataset": "tv", "features": {"text": "minilm"}, "anchors": "demo_faces",
                                        "preset": "demo", "seeds": [0]}
    pipeline_config.check(config, REPO)  # the references are fine ...
    with pytest.raises(pipeline_config.ConfigError) as err:  # ... but the drawn set cannot cover these classes
        pipeline_config.check_drawable_anchors(config, DRAWABLE_EMOTIONS)
    message = str(err.value)
    assert message.startswith("anchors.demo_faces.synthetic: no drawn face exists for class(es) ['joyful', 'powerful']")
    for choice in ("images:", "mine:", "official:"):
        assert choice in message


def test_snakemake_stops_before_any_job_on_an_undrawable_class(demo_config, tmp_path):
    from test_config import dry_run

    config = copy.deepcopy(demo_config)
    manifest = tmp_path / "m.csv"
    manifest.write_text("dialogue_id,utterance_id,split,speaker,label,text\nd0,u0,train,A,joyful,hello\n"
                        "d0,u1,train,B,mad,hi\n")
    config["datasets"] = {"tv": {"format": "csv", "manifest": str(manifest), "classes": ["joyful", "mad"],
                                 "modalities": ["text"]}}
    config["experiments"] = {"tv_vega": {"dataset": "tv", "features": {"text": "minilm"}, "anchors": "demo_faces",
                                         "preset": "demo", "seeds": [0]}}
    result = dry_run(config, tmp_path)
    assert result.returncode != 0
    assert "anchors.demo_faces.synthetic: no drawn face exists for class(es) ['joyful', 'mad']" in (
        result.stdout + result.stderr)
    assert "Job stats" not in result.stdout


def test_features_an_experiment_narrows_away_are_not_extracted(demo_config, tmp_path):
    """model.modalities: [text] with audio and visual still listed under features: used to extract (and make
    inputs of) the unused modalities: openSMILE and MTCNN ran for nothing."""
    from test_config import dry_run
    from workflow_run import planned_jobs

    config = copy.deepcopy(demo_config)
    config["experiments"] = {"text_only": {"dataset": "meld_demo", "seeds": [0], "preset": "sdt", "anchors": None,
                                           "features": {"text": "minilm", "audio": "is10", "visual": "densenet121"},
                                           "model": {"modalities": ["text"]}}}
    result = dry_run(config, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout)
    assert jobs["text_features_shard"] == 2 and jobs["train_model"] == 1
    assert not {"audio_features_shard", "utterance_audio", "visual_features_shard"} & set(jobs), jobs
    assert "features/meld_demo/audio/" not in result.stdout and "features/meld_demo/visual/" not in result.stdout
