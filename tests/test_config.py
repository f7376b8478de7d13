"""Config validation: a wrong key, type or path stops Snakemake before any job, naming the key."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ercpipe import config as pipeline_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.fixture()
def demo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def dry_run(config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return subprocess.run([SNAKEMAKE, "-n", "--configfile", str(cfg), "-d", str(tmp_path), "-s",
                           str(REPO / "Snakefile")], capture_output=True, text=True, timeout=300)


def test_demo_config_is_valid(demo_config):
    pipeline_config.validate_schema(demo_config, SCHEMA)
    pipeline_config.check(demo_config, REPO)


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["datasets"]["meld_demo"].update(shardz=3), "datasets.meld_demo: Additional properties"),
    (lambda c: c["datasets"]["meld_demo"].update(shards="two"), "datasets.meld_demo.shards: 'two' is not of type"),
    (lambda c: c["features"]["audio"]["is10"].update(feature_set="IS11"), "features.audio.is10.feature_set"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(seeds=[]), "experiments.iemocap_demo_sdt.seeds"),
    (lambda c: c.update(use_gpu="yes"), "use_gpu: 'yes' is not of type 'boolean'"),
    (lambda c: c.update(selections={"best": {"candidates": ["iemocap_demo_sdt", "iemocap_demo_sdt_vega"],
                                             "metric": "test.weighted_f1"}}), "selections.best.metric"),
    (lambda c: c.update(selections={"best": {"candidates": ["iemocap_demo_sdt"]}}), "selections.best.candidates"),
])
def test_schema_errors_name_the_key(demo_config, mutate, expected):
    bad = copy.deepcopy(demo_config)
    mutate(bad)
    with pytest.raises(pipeline_config.ConfigError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        pipeline_config.validate_schema(bad, SCHEMA)


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(dataset="nope"),
     "experiments.iemocap_demo_sdt.dataset: unknown dataset 'nope'"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"]["features"].update(text="roberta"),
     "experiments.iemocap_demo_sdt.features.text: unknown setting 'roberta'"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(anchors="missing_set"),
     "experiments.iemocap_demo_sdt.anchors: unknown anchor set"),
    (lambda c: c["datasets"].update(real={"format": "meld", "root": "raw/does/not/exist"}),
     "datasets.real.root: folder raw/does/not/exist does not exist"),
    (lambda c: c["datasets"].update(mine={"format": "csv", "classes": ["a", "b"]}),
     "datasets.mine.manifest: required for format csv"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(train={"learning_rate": 1e-3}),
     "experiments.iemocap_demo_sdt: experiment key train.learning_rate: unknown key"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(model={"dropout": 1.5}),
     "experiments.iemocap_demo_sdt: experiment key model.dropout: must be a number"),
    (lambda c: c["experiments"]["iemocap_demo_sdt_vega"].update(anchors=None),
     "experiments.iemocap_demo_sdt_vega.anchors: null, but preset 'demo' trains the VEGA branch"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(anchors="demo_faces"),
     "experiments.iemocap_demo_sdt.anchors: 'demo_faces' is never used"),
    (lambda c: c.update(selections={"best": {"candidates": ["iemocap_demo_sdt", "nope"]}}),
     r"selections.best.candidates: unknown experiment\(s\) \['nope'\]"),
    (lambda c: c.update(selections={"best": {"candidates": ["iemocap_demo_sdt", "meld_demo_sdt_vega"]}}),
     "selections.best.candidates: the candidates train on different datasets"),
    (lambda c: c.update(selections={"iemocap_demo_sdt": {"candidates": ["iemocap_demo_sdt", "iemocap_demo_sdt_vega"]}}),
     "selections.iemocap_demo_sdt: an experiment has the same name"),
    (lambda c: c.update(selections={"best": {"candidates": ["iemocap_demo_sdt", "iemocap_demo_sdt"]}}),
     "selections.best.candidates: candidates must be distinct"),
])
def test_reference_errors_name_the_key(demo_config, mutate, expected):
    bad = copy.deepcopy(demo_config)
    mutate(bad)
    with pytest.raises(pipeline_config.ConfigError, match=expected):
        pipeline_config.check(bad, REPO)


def test_snakemake_stops_before_any_job(demo_config, tmp_path):
    bad = copy.deepcopy(demo_config)
    bad["features"]["text"]["minilm"]["poolin"] = "mean"
    result = dry_run(bad, tmp_path)
    assert result.returncode != 0
    # Snakemake prints the WorkflowError on stdout.
    assert ("features.text.minilm: Additional properties are not allowed ('poolin' was unexpected)"
            in result.stdout + result.stderr)
    assert not (tmp_path / "features").exists() and not (tmp_path / "raw").exists()


def test_snakemake_dry_run_lists_the_dag(demo_config, tmp_path):
    result = dry_run(demo_config, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for rule in ("synthetic_corpus", "build_manifest", "utterance_audio", "text_features_shard",
                 "audio_features_shard", "visual_features_shard", "merge_features", "encode_anchors",
                 "train_model", "aggregate_experiment", "feature_coverage"):
        assert rule in result.stdout, rule


def test_clip_name_is_filesystem_safe():
    assert pipeline_config.clip_name({"model": "ViT-B-32", "pretrained": None}) == "ViT-B-32"
    assert pipeline_config.clip_name({"model": "ViT-L-14-336", "pretrained": "openai"}) == "ViT-L-14-336_openai"
    assert pipeline_config.clip_name({"model": "ViT-B-32", "pretrained": "/ckpt/my clip.pt"}) == "ViT-B-32_my-clip"


def test_anchor_classes_cover_every_dataset_using_the_set(demo_config):
    names = pipeline_config.anchor_classes(demo_config, "demo_faces")
    # IEMOCAP's six and MELD's seven classes, merged through the aliases (hap = joy = happy ...).
    assert sorted(names) == sorted(["happy", "sad", "neutral", "anger", "excited", "frustration", "surprise",
                                    "fear", "disgust"])


@pytest.mark.parametrize("modality, module", [("text", "ercpipe.features.text"), ("audio", "ercpipe.features.audio"),
                                              ("visual", "ercpipe.features.visual")])
def test_schema_knows_exactly_the_extractor_settings(modality, module):
    """The schema rejects a misspelt key before any job, so it must list every key the extractor takes."""
    import importlib

    schema = yaml.safe_load(SCHEMA.read_text())
    properties = schema["$defs"][f"{modality}_setting"]["properties"]
    extractor = importlib.import_module(module)
    assert set(properties) == set(extractor.DEFAULT_SETTINGS)
    if modality == "text":
        assert set(properties["context"]["properties"]) == set(extractor.DEFAULT_CONTEXT)
    if modality == "audio":
        assert set(properties["feature_set"]["enum"]) == set(extractor.FEATURE_SETS)


@pytest.mark.parametrize("path", sorted((REPO / "workflow" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_real_data_configs_are_valid(path, tmp_path):
    """The configurations for real data validate once their raw folders and image sets exist."""
    config = yaml.safe_load(path.read_text())
    pipeline_config.validate_schema(config, SCHEMA)
    for ds in config["datasets"].values():
        (tmp_path / ds["root"]).mkdir(parents=True, exist_ok=True)
    for anchor_set in config.get("anchors", {}).values():
        if anchor_set.get("images"):
            (tmp_path / anchor_set["images"]).mkdir(parents=True, exist_ok=True)
    pipeline_config.check(config, tmp_path)
    with pytest.raises(pipeline_config.ConfigError, match="does not exist"):
        pipeline_config.check(config, tmp_path / "elsewhere")
