"""The community feature pickles and the official anchor file as pipeline inputs (datasets of format vega_pickle /
sdt_pickle, anchor sets with `official:`), and the export rule back to VEGA's 7-tuple and 35_anchor.pt."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from workflow_run import planned_jobs, snakemake, write_config

from ercpipe import config as pipeline_config
from ercpipe.features import pickles
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.labels import IEMOCAP_CLASSES, MELD_CLASSES

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
STANDARD = json.loads((REPO / "workflow" / "resources" / "iemocap_standard_split.json").read_text())
DIMS = {"text": 12, "audio": 6, "visual": 4}
ANCHOR_NAMES = ["happy", "sad", "neutral", "anger", "excited", "frustration"]  # the official IEMOCAP strings


# ------------------------------------------------------------------------------------------ small pickles

def _features(rng, labels: list[int], n_classes: int) -> dict[str, np.ndarray]:
    """Random features with a little label signal (so training has something to find)."""
    out = {}
    for m, d in DIMS.items():
        x = rng.normal(size=(len(labels), d)).astype(np.float32)
        x[np.arange(len(labels)), np.asarray(labels) % d] += 2.0
        out[m] = x
    return out


def iemocap_vega(path: Path, seed: int = 0) -> tuple:
    """A VEGA 7-tuple in the IEMOCAP layout: the 12 standard valid dialogues and 4 other standard train dialogues
    in the train list (as the released file: train + valid), 3 standard test dialogues."""
    rng = np.random.default_rng(seed)
    train = STANDARD["train"][:4] + STANDARD["valid"]
    test = STANDARD["test"][:3]
    speakers, labels, feats = {}, {}, {m: {} for m in DIMS}
    for vid in train + test:
        n = int(rng.integers(3, 6))
        labels[vid] = [int(x) for x in rng.integers(0, len(IEMOCAP_CLASSES), n)]
        speakers[vid] = [("M", "F")[int(x)] for x in rng.integers(0, 2, n)]
        for m, array in _features(rng, labels[vid], len(IEMOCAP_CLASSES)).items():
            feats[m][vid] = array
    feats["visual"][STANDARD["valid"][0]][1] = 0.0  # a face-less utterance: zeros in the pickle
    obj = (speakers, labels, feats["text"], feats["audio"], feats["visual"], train, test)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return obj


def meld_sdt13(path: Path, seed: int = 1) -> tuple:
    """An SDT 13-tuple in the MELD layout: integer dialogue ids, 9-dim one-hot speakers, id lists as sets."""
    rng = np.random.default_rng(seed)
    train, test = list(range(12)), list(range(12, 16))
    names, speakers, labels, sentences = {}, {}, {}, {}
    feats = {m: {} for m in DIMS}
    for vid in train + test:
        n = int(rng.integers(2, 5))
        labels[vid] = [int(x) for x in rng.integers(0, len(MELD_CLASSES), n)]
        slots = rng.integers(0, 3, n)
        speakers[vid] = [[1 if s == j else 0 for j in range(9)] for s in slots]
        names[vid] = list(range(n))
        sentences[vid] = [f"utterance {k} of dialogue {vid}" for k in range(n)]
        for m, array in _features(rng, labels[vid], len(MELD_CLASSES)).items():
            feats[m][vid] = array
    roberta = [{vid: a + i for vid, a in feats["text"].items()} for i in (1, 2, 3)]
    obj = (names, speakers, labels, feats["text"], *roberta, feats["audio"], feats["visual"], sentences,
           set(train), set(test), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return obj


def official_anchors(path: Path, k: int = 512, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    img = {}
    for i, name in enumerate(ANCHOR_NAMES):
        rows = torch.from_numpy(rng.normal(size=(3 + i % 2, k)).astype(np.float32))
        img[name] = {"feature": rows / rows.norm(dim=1, keepdim=True)}
    data = {"anchor_center": torch.stack([img[n]["feature"].mean(0) for n in ANCHOR_NAMES]), "anchor_img_dict": img}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


IMPORTED = {"text": {"pickle": {"source": "pickle"}}, "audio": {"pickle": {"source": "pickle"}},
            "visual": {"pickle": {"source": "pickle"}, "vega": {"source": "pickle", "layout": "vega7"}}}
ALL = {"text": "pickle", "audio": "pickle", "visual": "pickle"}
FAST = {"epochs": 2, "patience": None}


def pickle_config() -> dict:
    return {
        "datasets": {
            "iemocap_vega": {"format": "vega_pickle", "path": "inputs/IEMOCAP_features.pkl", "allow_pickle": True},
            "meld_sdt": {"format": "sdt_pickle", "path": "inputs/MELD_features.pkl", "allow_pickle": True,
                         "valid_split": {"fraction": 0.25, "seed": 1}},
        },
        "features": IMPORTED,
        "anchors": {"official_iemocap": {"official": "inputs/35_anchor.pt",
                                         "clip": {"model": "ViT-B-32", "pretrained": "openai"}}},
        "experiments": {
            "iemocap_vega_sdt_vega": {"dataset": "iemocap_vega", "features": {**ALL, "visual": "vega"},
                                      "anchors": "official_iemocap", "preset": "demo", "train": FAST, "seeds": [0]},
            "iemocap_vega_paper_compat": {"dataset": "iemocap_vega", "features": ALL, "anchors": "official_iemocap",
                                          "preset": "demo", "train": {**FAST, "paper_compat": True}, "seeds": [0]},
            "meld_sdt_sdt": {"dataset": "meld_sdt", "features": ALL, "anchors": None, "preset": "sdt",
                             "model": {"hidden_dim": 32, "n_heads": 2}, "train": {**FAST, "batch_size": 4},
                             "seeds": [0, 1]},
        },
        "exports": {"iemocap_back": {"experiment": "iemocap_vega_sdt_vega"}},
    }


@pytest.fixture(scope="module")
def pickle_run(tmp_path_factory):
    """The whole DAG from two pickles and a 35_anchor.pt, in one snakemake command; then the report."""
    workdir = tmp_path_factory.mktemp("pickle_run")
    sources = {"vega": iemocap_vega(workdir / "inputs" / "IEMOCAP_features.pkl"),
               "sdt": meld_sdt13(workdir / "inputs" / "MELD_features.pkl"),
               "anchors": official_anchors(workdir / "inputs" / "35_anchor.pt")}
    configfile = write_config(workdir, pickle_config())
    run = snakemake(workdir, configfile, "--cores", "2")
    report = workdir / "report.html"
    snakemake(workdir, configfile, "--report", str(report))
    return workdir, configfile, sources, run.stdout


def test_the_dag_from_the_pickles_reaches_metrics_and_the_report(pickle_run):
    workdir, configfile, _, stdout = pickle_run
    for name, seeds in (("iemocap_vega/iemocap_vega_sdt_vega", [0]), ("iemocap_vega/iemocap_vega_paper_compat", [0]),
                        ("meld_sdt/meld_sdt_sdt", [0, 1])):
        for seed in seeds:
            metrics = json.loads((workdir / "results" / name / f"seed{seed}" / "metrics.json").read_text())
            assert metrics["test"]["n"] > 0
        summary = json.loads((workdir / "results" / name / "summary.json").read_text())
        assert summary["n_runs"] == len(seeds)
    compat = json.loads((workdir / "results/iemocap_vega/iemocap_vega_paper_compat/summary.json").read_text())
    default = json.loads((workdir / "results/iemocap_vega/iemocap_vega_sdt_vega/summary.json").read_text())
    assert compat["paper_compat"] is True and default["paper_compat"] is False
    for ds in ("iemocap_vega", "meld_sdt"):
        assert (workdir / "results" / ds / "coverage.tsv").exists()
    assert (workdir / "report.html").stat().st_size > 50_000
    # Nothing was extracted or encoded: the pickles and the anchor file were imported.
    assert "build_manifest" not in stdout and "encode_anchors" not in stdout and "merge_features" not in stdout
    benchmarks = (workdir / "results" / "benchmarks.tsv").read_text()
    assert "import_pickle_features/iemocap_vega/visual/vega" in benchmarks
    assert "import_official_anchors/official_iemocap" in benchmarks
    # A second call has nothing to do; it reads the pickles' checks from the cache instead of unpickling them.
    assert len(list((workdir / ".snakemake/ercpipe/pickle_checks").glob("*.json"))) == 2
    again = snakemake(workdir, configfile, "-n")
    assert planned_jobs(again.stdout) == {}, again.stdout[-3000:]


def test_a_training_job_whose_outputs_were_removed_runs_again(pickle_run):
    """Ctrl-C during a re-run makes Snakemake remove the failed training job's outputs while the experiment's
    old summary.json stays; a deleted model.pt is the same case. The next call trains that seed again (and
    aggregates again) instead of calling the old summary up to date. The files are put back afterwards."""
    workdir, configfile, _, _ = pickle_run
    seed = workdir / "results/meld_sdt/meld_sdt_sdt/seed1"
    for removed in (["metrics.json", "model.pt", "history.tsv", "predictions.tsv", "fused.npz"], ["model.pt"]):
        for name in removed:
            (seed / name).rename(workdir / f"kept_{name}")
        try:
            jobs = planned_jobs(snakemake(workdir, configfile, "-n").stdout)
        finally:
            for name in removed:
                (workdir / f"kept_{name}").rename(seed / name)
        assert jobs.get("train_model") == 1 and jobs.get("aggregate_experiment") == 1, (removed, jobs)
        assert not {"import_pickle", "import_pickle_features"} & set(jobs), jobs
    assert planned_jobs(snakemake(workdir, configfile, "-n").stdout) == {}
    # A deleted manifest, feature file or anchor file was never made again ("Nothing to be done"), though predict
    # --manifest and the exports read them.
    for path, rule in ((workdir / "features/meld_sdt/manifest.tsv", "import_pickle"),
                       (next((workdir / "features/meld_sdt/text").glob("*.h5")), "import_pickle_features"),
                       (next((workdir / "anchors").glob("*/*.h5")), "import_official_anchors")):
        aside = workdir / f"aside_{path.name}"
        path.rename(aside)
        try:
            jobs = planned_jobs(snakemake(workdir, configfile, "-n").stdout)
        finally:
            aside.rename(path)
        assert jobs.get(rule) == 1, (path, jobs)
    assert planned_jobs(snakemake(workdir, configfile, "-n").stdout) == {}


def test_how_often_the_resume_state_is_written_re_trains_nothing(pickle_run):
    workdir, _, _, _ = pickle_run
    config = pickle_config()
    config["experiments"]["meld_sdt_sdt"]["train"] = {**config["experiments"]["meld_sdt_sdt"]["train"],
                                                      "checkpoint_every": 3}
    result = snakemake(workdir, write_config(workdir, config, "checkpoints.yaml"), "-n")
    assert planned_jobs(result.stdout) == {}, result.stdout[-3000:]


def test_another_valid_split_re_runs_the_manifest_and_training_not_the_feature_imports(pickle_run):
    workdir, _, _, _ = pickle_run
    config = pickle_config()
    config["datasets"]["meld_sdt"]["valid_split"] = {"fraction": 0.25, "seed": 2}
    result = snakemake(workdir, write_config(workdir, config, "other_split.yaml"), "-n")
    jobs = planned_jobs(result.stdout)
    assert jobs["import_pickle"] == 1 and jobs["train_model"] == 2 and "import_pickle_features" not in jobs, jobs


def test_the_same_pickle_under_another_name_or_with_its_defaults_written_out_re_runs_nothing(pickle_run):
    """The import's params used to hold the path and the settings as written: `./` in the path, the absolute
    path, or the labels, classes, validation split and layout the import takes by default written out (or left
    out) re-ran every import and training; so did a byte-identical copy over the file (a new modification
    time) when the file is larger than what Snakemake checksums."""
    workdir, _, _, _ = pickle_run
    copy = workdir / "inputs" / "IEMOCAP_features.pkl"
    copy.write_bytes(copy.read_bytes())
    config = pickle_config()
    config["datasets"]["iemocap_vega"].update(path=str(copy), labels="iemocap", valid_split={"standard": "iemocap"},
                                              classes=list(IEMOCAP_CLASSES))
    config["datasets"]["meld_sdt"].update(path="./inputs/MELD_features.pkl", labels="meld")
    del config["features"]["visual"]["vega"]["layout"]  # vega7: the file's
    configfile = write_config(workdir, config, "spelled_out.yaml")
    result = snakemake(workdir, configfile, "-n")
    assert "Nothing to be done" in result.stdout, result.stdout[-3000:]
    # Other content under the same name re-runs the import, and what follows.
    iemocap_vega(copy, seed=5)
    jobs = planned_jobs(snakemake(workdir, configfile, "-n").stdout)
    assert jobs["import_pickle"] == 1 and jobs["import_pickle_features"] == 4 and jobs["train_model"] == 2, jobs


def test_imported_arrays_ids_labels_and_speakers(pickle_run):
    workdir, _, sources, _ = pickle_run
    speakers, labels, text, audio, visual, train, test = sources["vega"]
    frame = manifest_io.read(workdir / "features/iemocap_vega/manifest.tsv")
    assert list(frame["dialogue_id"].unique()) == train + test
    for m, expected in (("text", text), ("audio", audio), ("visual", visual)):
        setting = "vega" if m == "visual" else "pickle"
        fs = feature_io.read(workdir / f"features/iemocap_vega/{m}/{setting}.h5")
        assert fs.utterance_ids == frame["utterance_id"].tolist() and fs.dim == DIMS[m]
        np.testing.assert_array_equal(fs.features, np.concatenate([expected[v] for v in train + test]))
    fs = feature_io.read(workdir / "features/iemocap_vega/visual/pickle.h5")
    assert int((~fs.present).sum()) == 1  # the all-zero face row
    assert frame["label"].tolist() == [IEMOCAP_CLASSES[i] for v in train + test for i in labels[v]]
    assert frame["speaker_slot"].tolist() == [{"M": 0, "F": 1}[s] for v in train + test for s in speakers[v]]
    # MELD, SDT 13-tuple: one-hot speakers -> slots, the sentences as text.
    names, spk, lab, mtext = sources["sdt"][:4]
    frame = manifest_io.read(workdir / "features/meld_sdt/manifest.tsv")
    order = [str(v) for v in range(16)]
    assert list(frame["dialogue_id"].unique()) == order
    assert frame["label"].tolist() == [MELD_CLASSES[i] for v in range(16) for i in lab[v]]
    assert frame["speaker_slot"].tolist() == [int(np.argmax(s)) for v in range(16) for s in spk[v]]
    assert frame["text"].iloc[0] == "utterance 0 of dialogue 0"
    fs = feature_io.read(workdir / "features/meld_sdt/text/pickle.h5")
    np.testing.assert_array_equal(fs.features, np.concatenate([mtext[v] for v in range(16)]))
    assert fs.attrs["settings"] == {"source": "pickle", "layout": "sdt13", "modality": "text"}


def test_the_split_and_the_summary(pickle_run):
    workdir, _, sources, _ = pickle_run
    frame = manifest_io.read(workdir / "features/iemocap_vega/manifest.tsv")
    split = frame.groupby("dialogue_id", sort=False)["split"].first()
    assert sorted(split[split == "valid"].index) == sorted(STANDARD["valid"])
    assert sorted(split[split == "train"].index) == sorted(STANDARD["train"][:4])
    assert sorted(split[split == "test"].index) == sorted(STANDARD["test"][:3])
    summary = json.loads((workdir / "features/iemocap_vega/summary.json").read_text())
    assert summary["format"] == "vega_pickle" and summary["classes"] == list(IEMOCAP_CLASSES)
    assert summary["dialogues_per_split"] == {"train": 4, "valid": 12, "test": 3}
    assert summary["valid_split"]["protocol"] == "standard"
    assert summary["modalities"] == {"text": {"dim": 12, "all_zero_rows": 0}, "audio": {"dim": 6, "all_zero_rows": 0},
                                     "visual": {"dim": 4, "all_zero_rows": 1}}
    assert summary["source"]["layout"] == "vega7" and summary["source"]["labels"] == "iemocap"
    assert summary["counts_per_split"]["test"] == sum(len(sources["vega"][1][v]) for v in STANDARD["test"][:3])
    # MELD: a seeded quarter of the 12 train dialogues, recorded with the seed.
    summary = json.loads((workdir / "features/meld_sdt/summary.json").read_text())
    assert summary["format"] == "sdt_pickle" and summary["classes"] == list(MELD_CLASSES)
    assert summary["dialogues_per_split"] == {"train": 9, "valid": 3, "test": 4}
    record = summary["valid_split"]
    assert record["protocol"] == "fraction" and record["fraction"] == 0.25 and record["seed"] == 1
    frame = manifest_io.read(workdir / "features/meld_sdt/manifest.tsv")
    assert sorted(frame.loc[frame["split"] == "valid", "dialogue_id"].unique()) == sorted(record["dialogues"])
    assert set(record["dialogues"]) <= {str(v) for v in range(12)}
    # The paper-compat run trained on train + valid and selected on test; the other on valid.
    compat = json.loads((workdir / "results/iemocap_vega/iemocap_vega_paper_compat/seed0/metrics.json").read_text())
    default = json.loads((workdir / "results/iemocap_vega/iemocap_vega_sdt_vega/seed0/metrics.json").read_text())
    assert compat["protocol"]["selection_split"] == "test" and default["protocol"]["selection_split"] == "valid"


def test_official_anchors_are_imported_as_an_anchor_set(pickle_run):
    from ercpipe.anchors import store

    workdir, _, sources, _ = pickle_run
    anchors = store.read(workdir / "anchors/official_iemocap/ViT-B-32_openai.h5", expect_clip_model="ViT-B-32")
    assert anchors.class_names == ANCHOR_NAMES and anchors.clip_name == "ViT-B-32_openai"
    np.testing.assert_array_equal(anchors.centers, sources["anchors"]["anchor_center"].numpy())


def test_export_rule_writes_the_vega_tuple_and_the_anchor_file(pickle_run):
    workdir, _, sources, _ = pickle_run
    folder = workdir / "results/iemocap_vega/export/iemocap_back"
    back = pickles.load_pickle(folder / "features.pkl", allow_pickle=True)
    speakers, labels, text, audio, visual, train, test = sources["vega"]
    assert back[5] == train and back[6] == test  # valid joins the train ids again (valid_as: train)
    for index in (1, 2, 3, 4):
        for vid in train + test:
            np.testing.assert_array_equal(np.asarray(back[index][vid]), np.asarray(sources["vega"][index][vid]))
    assert back[0] == speakers
    exported = torch.load(folder / "35_anchor.pt", weights_only=True)
    assert torch.equal(exported["anchor_center"], sources["anchors"]["anchor_center"])


# ------------------------------------------------------------------------------------------ stopped before any job

def _dry_run(tmp_path: Path, config: dict):
    configfile = write_config(tmp_path, config)
    return snakemake(tmp_path, configfile, "-n", check=False)


def _one_dataset_config(**dataset) -> dict:
    config = pickle_config()
    config["datasets"] = {"iemocap_vega": {"format": "vega_pickle", "path": "inputs/IEMOCAP_features.pkl",
                                           "allow_pickle": True, **dataset}}
    config["experiments"] = {k: v for k, v in config["experiments"].items() if v["dataset"] == "iemocap_vega"}
    config.pop("exports")
    return {k: v for k, v in config.items() if v is not None}


def test_missing_allow_pickle_stops_before_any_job_naming_the_key(tmp_path):
    iemocap_vega(tmp_path / "inputs" / "IEMOCAP_features.pkl")
    official_anchors(tmp_path / "inputs" / "35_anchor.pt")
    config = _one_dataset_config()
    del config["datasets"]["iemocap_vega"]["allow_pickle"]
    result = _dry_run(tmp_path, config)
    assert result.returncode != 0
    assert "datasets.iemocap_vega.allow_pickle" in result.stdout and "arbitrary code" in result.stdout
    assert "Job stats" not in result.stdout and not (tmp_path / "features").exists()
    config["datasets"]["iemocap_vega"]["allow_pickle"] = False
    result = _dry_run(tmp_path, config)
    assert result.returncode != 0 and "set datasets.iemocap_vega.allow_pickle: true" in result.stdout


def test_an_official_anchor_set_read_from_this_configs_own_export_is_made_in_the_same_run(tmp_path):
    """Its file was required to exist before any job, so a project holding such a set could not start."""
    iemocap_vega(tmp_path / "inputs" / "IEMOCAP_features.pkl")
    official_anchors(tmp_path / "inputs" / "35_anchor.pt")
    config = _one_dataset_config()
    config["exports"] = {"x": {"experiment": "iemocap_vega_sdt_vega"}}
    config["anchors"]["again"] = {"official": "results/iemocap_vega/export/x/35_anchor.pt", "allow_pickle": True,
                                  "clip": {"model": "ViT-B-32", "pretrained": "openai"}}
    config["experiments"]["again_exp"] = {**config["experiments"]["iemocap_vega_sdt_vega"], "anchors": "again"}
    result = _dry_run(tmp_path, config)
    assert result.returncode == 0, result.stdout
    planned = planned_jobs(result.stdout)
    assert planned["export_official_anchors"] == 1 and planned["import_official_anchors"] == 2


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.write_bytes(pickle.dumps((1, 2, 3), protocol=4)),
     "inputs/IEMOCAP_features.pkl is not a pickle of the expected layout: expected a 7-tuple (VEGA) or a "
     "12/13-tuple (SDT), it holds a 3-tuple"),
    (lambda p: meld_sdt13(p),
     "inputs/IEMOCAP_features.pkl holds an SDT 13-tuple, not what format vega_pickle reads (a VEGA 7-tuple); "
     "set format: sdt_pickle"),
    (lambda p: p.write_bytes(pickle.dumps(_broken_vega(), protocol=4)),
     "inputs/IEMOCAP_features.pkl: dialogue Ses01F_impro01 text: feature array of shape (2, 12) for 3 utterances"),
    (lambda p: p.write_bytes(pickle.dumps(_vega_without_standard_valid(), protocol=4)),
     "the standard IEMOCAP validation dialogue(s)"),
], ids=["three-tuple", "sdt-as-vega", "short-array", "no-standard-valid"])
def test_a_pickle_of_the_wrong_shape_stops_before_any_job_naming_the_file(tmp_path, make, expected):
    (tmp_path / "inputs").mkdir()
    make(tmp_path / "inputs" / "IEMOCAP_features.pkl")
    official_anchors(tmp_path / "inputs" / "35_anchor.pt")
    result = _dry_run(tmp_path, _one_dataset_config())
    assert result.returncode != 0
    assert "datasets.iemocap_vega.path" in result.stdout and expected in result.stdout, result.stdout[-3000:]
    assert "Job stats" not in result.stdout


def _broken_vega() -> tuple:
    speakers = {"Ses01F_impro01": ["M", "F", "M"]}
    labels = {"Ses01F_impro01": [0, 1, 2]}
    feats = {m: {"Ses01F_impro01": np.zeros((3 if m != "text" else 2, d), np.float32)} for m, d in DIMS.items()}
    return speakers, labels, feats["text"], feats["audio"], feats["visual"], ["Ses01F_impro01"], []


def _vega_without_standard_valid() -> tuple:
    vids = ["Ses01F_impro01", "Ses05F_impro01"]
    feats = {m: {v: np.ones((2, d), np.float32) for v in vids} for m, d in DIMS.items()}
    return ({v: ["M", "F"] for v in vids}, {v: [0, 1] for v in vids}, feats["text"], feats["audio"], feats["visual"],
            vids[:1], vids[1:])


def test_config_errors_name_the_key(tmp_path):
    iemocap_vega(tmp_path / "inputs" / "IEMOCAP_features.pkl")
    official_anchors(tmp_path / "inputs" / "35_anchor.pt")
    config = _one_dataset_config()
    pipeline_config.validate_schema(config, SCHEMA)
    pipeline_config.check(config, tmp_path)

    def error(mutate) -> str:
        bad = yaml.safe_load(yaml.safe_dump(config))
        mutate(bad)
        with pytest.raises(pipeline_config.ConfigError) as err:
            pipeline_config.validate_schema(bad, SCHEMA)
            pipeline_config.check(bad, tmp_path)
        return str(err.value)

    assert "datasets.iemocap_vega.path: file inputs/nothing.pkl does not exist" in error(
        lambda c: c["datasets"]["iemocap_vega"].update(path="inputs/nothing.pkl"))
    assert "datasets.iemocap_vega.root: not a key of format vega_pickle" in error(
        lambda c: c["datasets"]["iemocap_vega"].update(root="raw"))
    assert "datasets.iemocap_vega.valid_split" in error(
        lambda c: c["datasets"]["iemocap_vega"].update(valid_split={"fraction": 2}))
    assert "experiments.iemocap_vega_sdt_vega.features.text: 'minilm' is an extractor setting" in error(
        lambda c: (c["features"]["text"].update(minilm={"model": "packaged:minilm"}),
                   c["experiments"]["iemocap_vega_sdt_vega"]["features"].update(text="minilm")))
    assert "features.visual.vega.layout: sdt12, but datasets.iemocap_vega.path holds the layout vega7" in error(
        lambda c: c["features"]["visual"]["vega"].update(layout="sdt12"))
    assert "anchors.official_iemocap.official: file inputs/none.pt does not exist" in error(
        lambda c: c["anchors"]["official_iemocap"].update(official="inputs/none.pt"))
    assert "exports.x.features: 'audio' is a required property" in error(
        lambda c: c.update(exports={"x": {"dataset": "iemocap_vega", "features": {"text": "pickle"}}}))
    assert "exports.x: VEGA's 7-tuple holds text, audio and visual features; the experiment lacks ['audio']" in error(
        lambda c: (c["experiments"]["iemocap_vega_sdt_vega"]["features"].pop("audio"),
                   c.update(exports={"x": {"experiment": "iemocap_vega_sdt_vega"}})))
    assert "exports.x: give either experiment" in error(
        lambda c: c.update(exports={"x": {"experiment": "iemocap_vega_sdt_vega", "dataset": "iemocap_vega"}}))
    # A dataset reading this config's own export lagged one run behind it, and a project without the file could
    # not start: refused, naming both keys.
    assert ("datasets.again.path: ./results/iemocap_vega/export/x/features.pkl is written by exports.x of this same "
            "config, and a dataset cannot import its own run's export") in error(
        lambda c: (c.update(exports={"x": {"experiment": "iemocap_vega_sdt_vega"}}),
                   c["datasets"].update(again={**c["datasets"]["iemocap_vega"],
                                               "path": "./results/iemocap_vega/export/x/features.pkl"})))
    # Without validation dialogues only an experiment that selects on test can train (it used to fail in training).
    assert ("experiments.iemocap_vega_sdt_vega: dataset iemocap_vega has no validation dialogues (datasets.iemocap_"
            "vega.valid_split: none), so no epoch can be selected") in error(
        lambda c: c["datasets"]["iemocap_vega"].update(valid_split="none"))
    no_valid = yaml.safe_load(yaml.safe_dump(config))
    no_valid["datasets"]["iemocap_vega"]["valid_split"] = "none"
    no_valid["experiments"]["iemocap_vega_sdt_vega"].setdefault("train", {})["paper_compat"] = True
    pipeline_config.check(no_valid, tmp_path)


# ------------------------------------------------------------------------------------------ round trip

def test_demo_features_export_and_import_back_unchanged(tmp_path):
    """Our extractors' features on a small synthetic IEMOCAP corpus -> export rule -> VEGA 7-tuple -> imported as a
    vega_pickle dataset in a second run -> the same arrays, ids, labels, speakers and splits (valid joins train
    in the tuple and is formed again from the standard split on import)."""
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    config = {
        "datasets": {"iemocap_demo": {"format": "iemocap", "synthetic": True, "shards": 1}},
        "synthetic": {"iemocap": {**demo["synthetic"]["iemocap"], "dialogues": {"train": 2, "valid": 1, "test": 1}}},
        "features": {"text": demo["features"]["text"], "audio": {"egemaps": {"feature_set": "eGeMAPSv02"}},
                     "visual": {"densenet121": {**demo["features"]["visual"]["densenet121"], "max_frames": 1}}},
        "anchors": {"demo_faces": {"synthetic": {"per_class": 1, "seed": 3}, "clip": {"model": "ViT-B-32",
                                                                                       "pretrained": None}}},
        "exports": {"demo_vega": {"dataset": "iemocap_demo", "anchors": "demo_faces",
                                  "features": {"text": "minilm", "audio": "egemaps", "visual": "densenet121"}}},
    }
    configfile = write_config(tmp_path, config)
    snakemake(tmp_path, configfile, "--cores", "2")
    exported = tmp_path / "results/iemocap_demo/export/demo_vega/features.pkl"
    assert (exported.parent / "35_anchor.pt").exists()
    # The synthetic corpus names its dialogues as the standard split does? Not necessarily: pass its valid list.
    ours = manifest_io.read(tmp_path / "features/iemocap_demo/manifest.tsv")
    valid = sorted(ours.loc[ours["split"] == "valid", "dialogue_id"].unique())
    back = {"datasets": {"back": {"format": "vega_pickle", "path": str(exported.relative_to(tmp_path)),
                                  "allow_pickle": True, "valid_split": {"dialogues": valid}}},
            "features": IMPORTED,
            "experiments": {"back_sdt": {"dataset": "back", "features": ALL, "anchors": None, "preset": "sdt",
                                         "model": {"hidden_dim": 32, "n_heads": 2}, "train": FAST, "seeds": [0]}}}
    configfile = write_config(tmp_path, back, "back.yaml")
    snakemake(tmp_path, configfile, "--cores", "2", "--until", "feature_coverage")
    theirs = manifest_io.read(tmp_path / "features/back/manifest.tsv")
    for column in ("dialogue_id", "utterance_index", "split", "label", "speaker_slot"):
        assert theirs[column].tolist() == ours[column].tolist(), column
    for m, setting in (("text", "minilm"), ("audio", "egemaps"), ("visual", "densenet121")):
        original = feature_io.read(tmp_path / f"features/iemocap_demo/{m}/{setting}.h5")
        imported = feature_io.read(tmp_path / f"features/back/{m}/pickle.h5")
        assert len(imported.utterance_ids) == len(original.utterance_ids)
        # ids: the tuple has no utterance names, so they come back as {dialogue}_u{index}, row for row
        assert imported.utterance_ids == [f"{d}_u{k}" for d, k in zip(ours["dialogue_id"], ours["utterance_index"])]
        np.testing.assert_array_equal(imported.features, original.features)
        np.testing.assert_array_equal(imported.present, original.present | (np.abs(original.features).sum(1) > 0))

    # The export stops naming anchors: only the export re-runs, and the old 35_anchor.pt, which the official code
    # would read beside the new pickle, is gone.
    config["exports"]["demo_vega"]["anchors"] = None
    configfile = write_config(tmp_path, config, "no_anchors.yaml")
    pickled = exported.read_bytes()
    assert planned_jobs(snakemake(tmp_path, configfile, "-n").stdout) == {"export_vega": 1, "all": 1}
    snakemake(tmp_path, configfile, "--cores", "1")
    assert exported.read_bytes() == pickled and not (exported.parent / "35_anchor.pt").exists()


# ------------------------------------------------------------------------------------------ shipped configurations

def _meld_vega(path: Path) -> None:
    """MELD's VEGA 7-tuple layout: the 13-tuple's speakers, labels and arrays, no names or sentences."""
    obj = meld_sdt13(path)
    path.write_bytes(pickle.dumps((obj[1], obj[2], obj[3], obj[7], obj[8], obj[10], obj[11]), protocol=4))


def _iemocap_sdt12(path: Path) -> None:
    speakers, labels, text, audio, visual, train, test = iemocap_vega(path)
    names = {v: [f"{v}_{k}" for k in range(len(labels[v]))] for v in labels}
    sentences = {v: ["words"] * len(labels[v]) for v in labels}
    path.write_bytes(pickle.dumps((names, speakers, labels, text, text, text, text, audio, visual, sentences,
                                   train, test), protocol=4))


@pytest.mark.parametrize("name, make", [
    ("vega_iemocap_pickle.yaml", lambda p: iemocap_vega(p)), ("vega_meld_pickle.yaml", _meld_vega),
    ("sdt_iemocap_pickle.yaml", _iemocap_sdt12), ("sdt_meld_pickle.yaml", lambda p: meld_sdt13(p)),
])
def test_shipped_pickle_configs_plan_the_whole_run(tmp_path, name, make):
    """Each ready configuration, with small pickles of its layout in place, plans import -> training (paper_compat
    and validation-selected side by side) -> aggregation with `snakemake -n`."""
    config = yaml.safe_load((REPO / "workflow" / "configs" / name).read_text())
    pipeline_config.validate_schema(config, SCHEMA)
    for ds in config["datasets"].values():
        make(tmp_path / ds["path"])
    for anchor_set in config.get("anchors", {}).values():
        names = ANCHOR_NAMES if "meld" not in name else ["neutral", "surprise", "fear", "sad", "happy", "disgust",
                                                         "anger"]
        _official_for(tmp_path / anchor_set["official"], names)
    pipeline_config.check(config, tmp_path)
    experiments = config["experiments"]
    compat = [e for e in experiments.values() if (e.get("train") or {}).get("paper_compat")]
    assert compat and len(compat) * 2 == len(experiments)
    result = snakemake(tmp_path, REPO / "workflow" / "configs" / name, "-n")
    jobs = planned_jobs(result.stdout)
    assert jobs["import_pickle"] == 1 and jobs["import_pickle_features"] == 3
    assert jobs["train_model"] == 10 * len(experiments) and jobs["aggregate_experiment"] == len(experiments)


def _official_for(path: Path, names: list[str], k: int = 512) -> None:
    rng = np.random.default_rng(0)
    img = {}
    for name in names:
        rows = torch.from_numpy(rng.normal(size=(2, k)).astype(np.float32))
        img[name] = {"feature": rows / rows.norm(dim=1, keepdim=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"anchor_center": torch.stack([img[n]["feature"].mean(0) for n in names]), "anchor_img_dict": img},
               path)
