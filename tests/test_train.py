"""Training: presets, data loading, the run and its outputs, selection protocol, checkpoint policy, resume after
SIGKILL and SIGTERM, aggregation.

Everything runs on a small learnable synthetic problem written as real manifest / HDF5 / anchor files:
each modality's features are a class prototype plus noise, so a model that trains correctly reaches far
above chance within a few CPU-seconds.
"""
from __future__ import annotations

import html
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TEST_DEVICE

from ercpipe import anchors as anchor_io
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.labels import IEMOCAP_CLASSES, canonical_emotion
from ercpipe.model.batch import collate
from ercpipe.train import (PRESETS, SCHEMA, CheckpointError, DataError, TrainingError, aggregate,
                           load_dialogues, load_model, predict, resolve_experiment, run_training)
from ercpipe.train.data import mask_feature_dims

REPO = Path(__file__).resolve().parents[1]
DIMS = {"text": 16, "audio": 12, "visual": 8}
TINY = {"preset": "demo", "model": {"hidden_dim": 32, "n_heads": 2},
        "train": {"epochs": 10, "patience": 5, "batch_size": 4}}
ABSENT_VISUAL = ("train_d001_u00", "test_d002_u01")  # rows whose visual features are missing (present=False)


# ------------------------------------------------------------------------------------------ synthetic data

def write_dataset(root: Path, n_dialogues=(40, 8, 8), seed: int = 0, signal: float = 1.5) -> tuple[Path, dict]:
    rng = np.random.default_rng(seed)
    classes = list(IEMOCAP_CLASSES)
    protos = {m: rng.normal(size=(len(classes), d)) for m, d in DIMS.items()}
    rows, feats = [], {m: [] for m in DIMS}
    for split, n in zip(("train", "valid", "test"), n_dialogues):
        for k in range(n):
            dialogue_id = f"{split}_d{k:03d}"
            for j in range(int(rng.integers(2, 11))):
                label, slot = int(rng.integers(len(classes))), int(rng.integers(2))
                rows.append(dict(dataset="synth", split=split, dialogue_id=dialogue_id, utterance_index=j,
                                 utterance_id=f"{dialogue_id}_u{j:02d}", speaker="MF"[slot], speaker_slot=slot,
                                 label=classes[label], text="", audio_path="", audio_start=np.nan, audio_end=np.nan,
                                 video_path="", video_start=np.nan, video_end=np.nan, flags=""))
                for m, d in DIMS.items():
                    feats[m].append(signal * protos[m][label] + rng.normal(size=d))
    frame = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    manifest_io.write(frame, root / "manifest.tsv")
    (root / "summary.json").write_text(json.dumps({"classes": classes}))
    ids = frame["utterance_id"].tolist()
    paths = {}
    for m in DIMS:
        values = np.asarray(feats[m], dtype=np.float32)
        present = np.ones(len(ids), dtype=bool)
        if m == "visual":  # missing rows; the file holds junk there that the loader must zero
            for u in (u for u in ABSENT_VISUAL if u in ids):
                present[ids.index(u)] = False
                values[ids.index(u)] = 99.0
        paths[m] = root / f"{m}.h5"
        feature_io.write(paths[m], feature_io.FeatureSet(ids, values, present, {
            "modality": m, "extractor": "synthetic", "model": "none", "settings": {"seed": seed}}))
    return root / "manifest.tsv", paths


def write_anchor_file(path: Path, k: int = 16, per_class: int = 5, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    names = [canonical_emotion(c) for c in IEMOCAP_CLASSES]
    feats = {}
    for name in names:
        rows = rng.normal(size=k) + 0.5 * rng.normal(size=(per_class, k))
        feats[name] = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    anchor_io.write(path, anchor_io.AnchorSet(
        class_names=names, centers=np.stack([feats[n].mean(0) for n in names]).astype(np.float32),
        image_features=feats, image_paths={n: [] for n in names}, clip_model="synthetic-clip", pretrained=None, dim=k))
    return path


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    manifest, features = write_dataset(root)
    return {"root": root, "manifest": manifest, "features": features, "anchors": write_anchor_file(root / "anchors.h5")}


def train(dataset, out_dir: Path, experiment: dict | None = None, seed: int = 0, manifest: Path | None = None,
          anchors="default", **kw) -> dict:
    return run_training(manifest or dataset["manifest"], dataset["features"],
                        dataset["anchors"] if anchors == "default" else anchors,
                        resolve_experiment(experiment or TINY), seed, out_dir, device=TEST_DEVICE, threads=1, **kw)


@pytest.fixture(scope="session")
def vega_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("vega_run")
    return out, train(dataset, out)


# ------------------------------------------------------------------------------------------ presets

def test_every_preset_resolves_and_presets_differ_where_the_spec_says():
    for name in PRESETS:
        resolved = resolve_experiment({"preset": name})
        assert set(resolved) == {"preset", "model", "loss", "train"}
    official, paper, sdt = PRESETS["official"], PRESETS["paper"], PRESETS["sdt"]
    assert official["model"]["hidden_dim"] == 768 and official["train"]["batch_size"] == 9
    assert official["train"]["lr"] == 9.839349318565084e-05 and official["model"]["p_random_anchor"] == 0.4
    assert paper["model"]["hidden_dim"] == 1280 and paper["model"]["clip_proj_activation"] == "silu"
    assert paper["train"]["batch_size"] == 15
    assert sdt["train"]["optimizer"] == "adam" and sdt["loss"]["kl_temperature"] == 1.0
    assert not sdt["loss"]["clip_loss"] and sdt["model"]["head_type"] == "sdt"
    assert not PRESETS["sdt-vega-backbone"]["loss"]["clip_loss"]
    assert PRESETS["sdt-meld"]["model"]["gates"] == "identity_frozen"


def test_resolve_experiment_validates_with_dotted_paths():
    resolved = resolve_experiment({"preset": "sdt", "dataset": "iemocap", "seeds": [1, 2],
                                   "train": {"lr": "5e-6"}, "model": {"modalities": ["text"]}})
    assert resolved["dataset"] == "iemocap" and resolved["seeds"] == [1, 2]  # pipeline keys pass through
    assert resolved["train"]["lr"] == 5e-6  # YAML reads 5e-6 as a string
    assert resolve_experiment(resolved) == resolved  # idempotent
    # A whole number where the preset holds a float is that float: the params compare reprs, and 1 vs 1.0
    # re-trained with bit-identical results.
    written = resolve_experiment({"preset": "sdt", "loss": {"kl_temperature": 1, "cls_lambda": 1},
                                  "train": {"feature_mask_ratio": 0, "epochs": 3}})
    assert repr(written["loss"]["kl_temperature"]) == "1.0" and repr(written["train"]["feature_mask_ratio"]) == "0.0"
    assert written == resolve_experiment({"preset": "sdt", "loss": {"kl_temperature": 1.0, "cls_lambda": 1.0},
                                          "train": {"feature_mask_ratio": 0.0, "epochs": 3}})
    assert repr(written["train"]["epochs"]) == "3"
    bad = [({"model": {"hidden_dimm": 8}}, r"model\.hidden_dimm: unknown key \(did you mean 'hidden_dim'"),
           ({"train": {"patience": 0}}, r"train\.patience: must be an integer >= 1 or null"),
           ({"loss": {"class_weights": "inverse"}}, r"loss\.class_weights"),
           ({"model": {"modalities": ["text", "smell"]}}, r"model\.modalities"),
           ({"model": {"n_heads": 5}}, r"model\.n_heads: 5 heads do not divide"),
           ({"model": {"single_branch": True}, "loss": {"clip_loss": False}}, r"model\.single_branch"),
           ({"loss": {"cls_loss": False, "clip_loss": False}}, r"loss\.cls_loss"),
           ({"preset": "sdt", "loss": {"cls_kl_teacher": "anchor"}}, r"loss\.cls_kl_teacher"),
           ({"train": []}, r"experiment key train: must be a mapping"),
           ({"preset": "fast"}, r"unknown preset 'fast'")]
    for experiment, message in bad:
        with pytest.raises(ValueError, match=message):
            resolve_experiment(experiment)


def test_presets_import_without_torch():
    code = "import sys, ercpipe.train; ercpipe.train.resolve_experiment({}); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "False"


def test_every_config_key_is_documented():
    doc = (REPO / "docs" / "training.md").read_text()
    missing = [f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys if f"`{k}`" not in doc]
    assert not missing, f"undocumented keys: {missing}"
    assert all(f"`{name}`" in doc for name in PRESETS)


# ------------------------------------------------------------------------------------------ data

def test_load_dialogues(dataset):
    data = load_dialogues(dataset["manifest"], dataset["features"], ["text", "visual"])
    frame = manifest_io.read(dataset["manifest"])
    assert [d.dialogue_id for d in data.dialogues] == list(dict.fromkeys(frame["dialogue_id"]))
    assert data.classes == list(IEMOCAP_CLASSES) and data.n_speakers == 2
    assert data.dims == {"text": 16, "visual": 8} and set(data.dialogues[0].features) == {"text", "visual"}
    first = data.dialogues[0]
    rows = frame[frame["dialogue_id"] == first.dialogue_id]
    assert first.utterance_ids == rows["utterance_id"].tolist()
    assert first.labels.tolist() == [IEMOCAP_CLASSES.index(x) for x in rows["label"]]
    assert first.speakers.tolist() == rows["speaker_slot"].tolist()
    assert len(data.split("train")) == 40 and len(data.split("valid", "test")) == 16
    assert data.absent_counts == {"text": 0, "visual": 2}
    for dialogue in data.dialogues:
        for u in ABSENT_VISUAL:
            if u in dialogue.utterance_ids:
                i = dialogue.utterance_ids.index(u)
                assert not dialogue.present["visual"][i] and dialogue.features["visual"][i].abs().sum() == 0
    assert load_dialogues(dataset["manifest"], dataset["features"], ["text"], n_speakers=4).n_speakers == 4
    counts = frame["split"].value_counts()
    absent = {s: sum(u.startswith(s) for u in ABSENT_VISUAL) for s in ("train", "valid", "test")}
    assert data.coverage() == {s: {"text": {"present": int(counts[s]), "utterances": int(counts[s])},
                                   "visual": {"present": int(counts[s]) - absent[s], "utterances": int(counts[s])}}
                               for s in ("train", "valid", "test")}


def test_a_split_without_any_features_of_a_modality_is_warned_about(dataset, tmp_path, caplog):
    """E.g. a dataset whose test clips were never unpacked: training goes on (the model sees zeros there), and the
    log says so, naming the file, the split and where to look."""
    fs = feature_io.read(dataset["features"]["visual"])
    test = np.array([u.startswith("test_") for u in fs.utterance_ids])
    present = fs.present & ~test
    feature_io.write(tmp_path / "visual.h5", feature_io.FeatureSet(fs.utterance_ids, fs.features, present, fs.attrs))
    with caplog.at_level("WARNING", logger="ercpipe"):
        data = load_dialogues(dataset["manifest"], {**dataset["features"], "visual": tmp_path / "visual.h5"},
                              ["text", "visual"])
    assert data.coverage()["test"]["visual"] == {"present": 0, "utterances": int(test.sum())}
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'visual.h5'}: none of the {int(test.sum())} test utterances has visual features (all zeros): "
        "the model sees no visual there; see the dataset's issues.tsv for why (e.g. missing media), or leave visual "
        "out of the experiment"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="ercpipe"):  # inference: the predictions' `absent` column says it
        load_dialogues(dataset["manifest"], {**dataset["features"], "visual": tmp_path / "visual.h5"},
                       ["text", "visual"], training=False)
    assert not caplog.records


def test_load_dialogues_errors(dataset, tmp_path):
    with pytest.raises(DataError, match=r"no feature file given for modality \['audio'\]"):
        load_dialogues(dataset["manifest"], {"text": dataset["features"]["text"]}, ["text", "audio"])
    with pytest.raises(DataError, match="speaker_slot 1.*raise it to >= 2"):
        load_dialogues(dataset["manifest"], dataset["features"], ["text"], n_speakers=1)
    with pytest.raises(DataError, match="holds 'audio' features but was given as the 'text' file"):
        load_dialogues(dataset["manifest"], {"text": dataset["features"]["audio"]}, ["text"])
    frame = manifest_io.read(dataset["manifest"])
    manifest_io.write(frame.iloc[:-1], tmp_path / "manifest.tsv")  # one utterance fewer than the features
    with pytest.raises(DataError, match="summary.json"):
        load_dialogues(tmp_path / "manifest.tsv", dataset["features"], ["text"])
    with pytest.raises(feature_io.FeatureFileError, match="text.h5.*1 extra"):
        load_dialogues(tmp_path / "manifest.tsv", dataset["features"], ["text"], classes=IEMOCAP_CLASSES)


def test_a_modality_no_training_utterance_has_names_its_file_and_why(dataset, tmp_path):
    """A face setting that finds no face anywhere (min_face_size too large) stopped training with "cannot
    standardize visual features: fewer than two training utterances have them", naming neither the file nor why."""
    visual = feature_io.read(dataset["features"]["visual"])
    absent = {u: "no_face (no speaker face in 2 sampled frame(s))" for u in visual.utterance_ids[:-3]}
    absent.update({u: "corrupt_video: moov atom not found" for u in visual.utterance_ids[-3:]})
    path = tmp_path / "noface.h5"
    feature_io.write(path, feature_io.FeatureSet(visual.utterance_ids, np.zeros_like(visual.features),
                                                 np.zeros(len(visual.utterance_ids), dtype=bool),
                                                 {**visual.attrs, "absent": json.dumps(absent)}))
    with pytest.raises(DataError) as caught:
        run_training(dataset["manifest"], {**dataset["features"], "visual": path}, dataset["anchors"],
                     resolve_experiment(TINY), 0, tmp_path / "run", device=TEST_DEVICE, threads=1)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot standardize visual features: 0 of the ")
    assert f"(the file's reasons, all splits: {{'no_face': {len(absent) - 3}, 'corrupt_video': 3}})" in message
    assert "min_face_size" in message and "leave visual out" in message


def test_collate_pads_and_feature_masking_is_per_dialogue(dataset):
    data = load_dialogues(dataset["manifest"], dataset["features"], ["text", "audio", "visual"])
    dialogues = data.split("train")[:5]
    batch = collate(dialogues)
    lengths = [len(d) for d in dialogues]
    assert batch.features["audio"].shape == (5, max(lengths), 12)
    assert batch.mask.sum(1).tolist() == lengths
    assert (batch.labels[~batch.mask] == -1).all() and (batch.features["text"][~batch.mask] == 0).all()
    torch.manual_seed(0)
    big = collate(data.split("train"))
    masked = mask_feature_dims(big, 0.3)
    for m in ("text", "audio"):
        zero = (masked.features[m] == 0) & (big.features[m] != 0)
        dims_dropped = zero.any(dim=1)  # [B, D]: dimension masked somewhere in the dialogue ...
        assert (zero.sum(1) == dims_dropped * big.mask.sum(1, keepdim=True)).all()  # ... then in every utterance
        assert 0.2 < dims_dropped.float().mean() < 0.4
    assert mask_feature_dims(big, 0.0) is big


# ------------------------------------------------------------------------------------------ the run

def test_sdt_vega_learns_and_writes_its_outputs(vega_run, dataset):
    out, metrics = vega_run
    for name in ("model.pt", "metrics.json", "history.tsv", "predictions.tsv", "fused.npz"):
        assert (out / name).exists(), name
    # The resume state is gone once the run is complete.
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    assert not list(out.glob(".*tmp*"))  # atomic writes left no temporary files
    assert metrics["test"]["accuracy"] > 60 and metrics["valid"]["accuracy"] > 60  # chance is about 17 %
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["protocol"] == metrics["protocol"]
    assert on_disk["feature_coverage"]["test"]["visual"]["present"] == on_disk["feature_coverage"]["test"]["visual"][
        "utterances"] - 1  # test_d002_u01 has no visual features
    assert metrics["protocol"]["selection_split"] == "valid" and not metrics["protocol"]["paper_compat"]
    # What made it: the inputs' digests (a feature file's is the one model.pt records) and the software.
    model_sources = torch.load(out / "model.pt", weights_only=True)["features"]
    assert {m: on_disk["inputs"][m]["content_sha256"] for m in DIMS} == {
        m: model_sources[m]["content_sha256"] for m in DIMS}
    assert set(on_disk["inputs"]) == {*DIMS, "labels", "anchors"} and on_disk["threads"] == 1
    assert set(on_disk["versions"]) == {"ercpipe", "torch", "numpy"} and torch.__version__.startswith(on_disk["versions"]["torch"])
    test = metrics["test"]
    assert set(test) >= {"accuracy", "weighted_f1", "macro_f1", "weighted_precision", "per_class", "confusion",
                         "unimodal_weighted_f1"}
    assert np.array(test["confusion"]).sum() == test["n"] == 50 or np.array(test["confusion"]).sum() == test["n"]
    assert set(test["unimodal_weighted_f1"]) == {"t", "a", "v"}
    assert set(metrics["temperatures"]) == {"cls", "clip"}
    assert metrics["class_weights"]["source"].startswith("inverse frequency over train")
    history = pd.read_csv(out / "history.tsv", sep="\t")
    assert history["epoch"].tolist() == list(range(1, metrics["protocol"]["epochs_run"] + 1))
    assert {"train_total", "train_ce_anchor_all", "valid_weighted_f1", "T_cls_t", "skipped_steps"} <= set(history)
    assert history["train_total"].iloc[-1] < history["train_total"].iloc[0]
    selected = metrics["protocol"]["selected_epoch"]
    assert history.loc[history["epoch"] == selected, "valid_weighted_f1"].item() == pytest.approx(
        history["valid_weighted_f1"].max(), abs=1e-3)
    predictions = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert set(predictions["split"]) == {"valid", "test"}
    assert predictions.filter(like="prob_").sum(axis=1).round(4).eq(1).all()
    fused = np.load(out / "fused.npz")
    assert fused["fused"].shape == (test["n"], 32) and len(fused["utterance_ids"]) == test["n"]


def test_checkpoint_loads_with_weights_only_and_predicts_the_same(vega_run, dataset):
    out, metrics = vega_run
    payload = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert payload["classes"] == list(IEMOCAP_CLASSES) and payload["config"]["preset"] == "demo"
    assert payload["epoch"] == metrics["protocol"]["selected_epoch"]
    model, config, classes = load_model(out / "model.pt", "cpu")
    assert config == metrics["config"] and classes == list(IEMOCAP_CLASSES)
    data = load_dialogues(dataset["manifest"], dataset["features"], ["text", "audio", "visual"])
    frame = predict(model, data.split("test"), batch_size=3)
    saved = pd.read_csv(out / "predictions.tsv", sep="\t").query("split == 'test'").reset_index(drop=True)
    assert frame["utterance_id"].tolist() == saved["utterance_id"].tolist()
    assert frame["prediction"].tolist() == saved["prediction"].tolist()
    np.testing.assert_allclose(frame.filter(like="prob_").to_numpy(), saved.filter(like="prob_").to_numpy(), atol=1e-5)
    second = predict(model, data.split("test"), batch_size=8)
    np.testing.assert_allclose(second.filter(like="prob_").to_numpy(), frame.filter(like="prob_").to_numpy(), atol=1e-6)


def test_predict_on_unlabelled_conversations(vega_run, dataset, tmp_path):
    frame = manifest_io.read(dataset["manifest"])
    frame.loc[frame["split"] == "test", "label"] = ""
    manifest_io.write(frame, tmp_path / "manifest.tsv")
    with pytest.raises(manifest_io.ManifestError, match="label '' of utterance test_d000_u00"):
        load_dialogues(tmp_path / "manifest.tsv", dataset["features"], ["text"], classes=IEMOCAP_CLASSES)
    model, config, classes = load_model(vega_run[0] / "model.pt")
    data = load_dialogues(tmp_path / "manifest.tsv", dataset["features"], config["model"]["modalities"],
                          classes=classes, allow_unlabelled=True)
    test = data.split("test")
    assert all((d.labels == -1).all() for d in test)
    frame = predict(model, test)
    assert (frame["label"] == "").all() and frame["prediction"].isin(classes).all()
    assert len(frame) == sum(len(d) for d in test)


def test_load_model_errors(vega_run, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "none.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an ercpipe SDT/SDT-VEGA checkpoint"):
        load_model(tmp_path / "other.pt")
    payload = torch.load(vega_run[0] / "model.pt", weights_only=True)
    del payload["state_dict"]["gates.t_t.fc.weight"]
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="gates.t_t.fc.weight"):
        load_model(tmp_path / "broken.pt")


def test_sdt_learns(dataset, tmp_path):
    experiment = {"preset": "sdt", "model": {"hidden_dim": 32, "n_heads": 2},
                  "train": {"epochs": 10, "patience": 5, "batch_size": 4, "lr": 1e-3}}
    metrics = train(dataset, tmp_path, experiment, anchors=None)
    assert metrics["test"]["accuracy"] > 60
    assert metrics["anchors"] is None and "clip" not in metrics["temperatures"]
    assert metrics["temperatures"]["cls"] == {"t": 1.0, "a": 1.0, "v": 1.0}  # fixed SDT temperature
    history = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert "train_ce_anchor_all" not in history and "train_kl_cls_t" in history


def test_validation_selection_never_reads_test_labels(vega_run, dataset, tmp_path):
    """Scrambling the test labels changes nothing before the final test evaluation; nor does a test dialogue with
    more speakers than any training one (the speaker table's size moved every initial weight)."""
    frame = manifest_io.read(dataset["manifest"])
    test_rows = frame["split"] == "test"
    rng = np.random.default_rng(5)
    frame.loc[test_rows, "label"] = rng.choice(list(IEMOCAP_CLASSES), size=int(test_rows.sum()))
    crowded = (frame["dialogue_id"] == frame.loc[test_rows, "dialogue_id"].iloc[0]).to_numpy()
    frame.loc[crowded, "speaker_slot"] = np.arange(int(crowded.sum())) % 5
    assert frame["speaker_slot"].max() > frame.loc[frame["split"] == "train", "speaker_slot"].max()
    root = tmp_path / "scrambled"
    manifest_io.write(frame, root / "manifest.tsv")
    (root / "summary.json").write_text((dataset["root"] / "summary.json").read_text())
    metrics = train(dataset, tmp_path / "run", manifest=root / "manifest.tsv")
    reference_dir, reference = vega_run
    assert metrics["protocol"] == reference["protocol"] and metrics["valid"] == reference["valid"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "history.tsv", sep="\t").drop(columns="seconds"),
                                  pd.read_csv(reference_dir / "history.tsv", sep="\t").drop(columns="seconds"))
    assert metrics["test"]["accuracy"] < reference["test"]["accuracy"]  # the test labels did change


def test_paper_compat_selects_on_test_and_says_so(dataset, tmp_path, monkeypatch):
    experiment = {**TINY, "train": {**TINY["train"], "epochs": 3, "paper_compat": True}}
    metrics = train(dataset, tmp_path, experiment)
    protocol = metrics["protocol"]
    assert protocol["paper_compat"] and protocol["selection_split"] == "test"
    assert protocol["train_splits"] == ["train", "valid"] and "TEST" in protocol["note"]
    assert metrics["valid"] is None and metrics["test"] is not None
    assert metrics["class_weights"]["source"].startswith("paper")
    np.testing.assert_allclose(metrics["class_weights"]["values"][0], 2.85339499, rtol=1e-6)
    assert "test_weighted_f1" in pd.read_csv(tmp_path / "history.tsv", sep="\t")
    texts = figure_texts(monkeypatch)
    aggregate([tmp_path], tmp_path / "summary")
    # Every figure carries the mark, not only the summary table: a reader may open one figure alone.
    assert texts["curves.png"][0].startswith("epoch chosen on TEST: paper_compat: the test curves chose the epoch")
    assert "test weighted F1 (%, selects the epoch)" in texts["curves.png"]
    assert all(float(tick).is_integer() for tick in texts["curves.png x ticks"])  # epochs, not 1.25, 1.5 ...
    assert texts["confusion.png"][0].endswith("(epoch chosen on TEST: paper_compat)")
    assert texts["tsne.png"][0].endswith("(epoch chosen on TEST: paper_compat)")


def test_paper_compat_weighs_sdt_heads_by_the_training_split_as_the_sdt_code_does(dataset):
    """The hard-coded whole-dataset vectors are the VEGA code's; the `sdt` preset under paper_compat used them
    too (its IEMOCAP excited weight 11 % off SDT's)."""
    from ercpipe.train.trainer import class_weights_for

    data = load_dialogues(dataset["manifest"], dataset["features"], ["text", "audio", "visual"])
    sdt = resolve_experiment({"preset": "sdt", "train": {"paper_compat": True}})
    assert sdt["loss"]["class_weights"] == "train" and resolve_experiment(sdt) == sdt
    weights, source = class_weights_for(sdt, data, ("train", "valid"))
    counts = np.bincount(data.labels("train", "valid"), minlength=len(data.classes))
    np.testing.assert_allclose(weights / weights[-1], counts[-1] / counts, rtol=1e-5)  # 1 / share
    assert source == "inverse frequency over train+valid"
    # The VEGA heads keep the official vector, and SDT heads outside paper_compat keep 'auto' (= train).
    official = resolve_experiment({"preset": "official", "train": {"paper_compat": True}})
    assert class_weights_for(official, data, ("train", "valid"))[1].startswith("paper")
    assert resolve_experiment({"preset": "sdt"})["loss"]["class_weights"] == "auto"


def test_unimodal_and_ablation_runs(dataset, tmp_path):
    text_only = {**TINY, "model": {**TINY["model"], "modalities": ["text"]}, "train": {**TINY["train"], "epochs": 2}}
    metrics = train(dataset, tmp_path / "text", text_only)
    assert metrics["test"]["unimodal_weighted_f1"] == {} and metrics["temperatures"] == {"cls": {}, "clip": {}}
    ablation = {**TINY, "model": {**TINY["model"], "inter_encoders": False, "single_branch": True,
                                  "anchors_per_class": 2, "positional_embeddings": False},
                "loss": {"anchor_kl_teacher": "classification", "cls_kl_teacher": "anchor"},
                "train": {**TINY["train"], "epochs": 2}}
    metrics = train(dataset, tmp_path / "ablation", ablation)
    assert metrics["anchors"]["images_per_class"] == [2] * 6


def _with(experiment: dict, **sections) -> dict:
    """experiment with {section: {key: value}} merged into its sections."""
    return {**experiment, **{s: {**(experiment.get(s) or {}), **keys} for s, keys in sections.items()}}


@pytest.mark.parametrize("base, inactive, active", [
    # AdamW has no momentum; no scheduler, no warm-up; no anchors_per_class, no subsampling seed.
    ({}, {"train": {"momentum": 0.9, "warmup_fraction": 0.5}, "model": {"anchor_subsample_seed": 7}},
     {"train": {"eps": 1e-3}}),
    # SGD has no betas or eps; SDT heads take no head_* keys; without the VEGA branch nothing of it is read.
    ({"train": {"optimizer": "sgd", "lr": 0.05}, "model": {"head_type": "sdt"}, "loss": {"clip_loss": False}},
     {"train": {"betas": [0.5, 0.6], "eps": 1e-3}, "model": {"head_dropout": 0.9, "head_layers": 1,
                                                            "clip_proj_dropout": 0.9, "p_random_anchor": 0.9,
                                                            "anchors_per_class": 1},
      "loss": {"clip_lambda": 9.0, "t_clip_all_clip_kl_lambda": 9.0, "anchor_kl_teacher": "classification"}},
     {"train": {"momentum": 0.9}}),
    # One modality: no unimodal heads, so no per-modality terms, no distillation and no temperatures.
    ({"model": {"modalities": ["text"]}},
     {"loss": {"cls_t_lambda": 9.0, "t_clip_lambda": 9.0, "cls_all_cls_kl_lambda": 9.0, "kl_t2": False,
               "kl_temperature": 3.0, "detach_teacher": True}},
     {"loss": {"all_clip_lambda": 3.0}}),
    # The KL terms switched off: their weights and teachers are not read.
    ({"loss": {"cls_all_cls_kl_loss": False, "clip_all_clip_kl_loss": False}},
     {"loss": {"v_cls_all_cls_kl_lambda": 9.0, "clip_all_clip_kl_lambda": 9.0, "cls_kl_teacher": "anchor",
               "kl_class_mean": False}},
     {"loss": {"t_clip_lambda": 3.0}}),
    # A fixed temperature: the learnable ones' initial value is not read.
    ({"loss": {"kl_temperature": 2.0}}, {"loss": {"kl_temperature_init": 5.0}}, {"loss": {"kl_temperature": 3.0}}),
])
def test_a_key_its_other_settings_make_inactive_changes_nothing_and_is_listed(dataset, tmp_path, base, inactive,
                                                                              active):
    """presets.inactive_keys leaves these keys out of the Snakemake params and the settings that resume and
    aggregation compare; that is right only if they really change nothing, weights included."""
    from ercpipe.train.presets import active_settings, inactive_keys
    from ercpipe.train.trainer import training_config

    experiment = _with(_with(TINY, train={**TINY["train"], "epochs": 3}), **base)
    reference = train(dataset, tmp_path / "reference", experiment)
    changed = _with(experiment, **inactive)
    keys = {f"{section}.{key}" for section, values in inactive.items() for key in values}
    assert keys <= set(inactive_keys(resolve_experiment(changed)))
    assert active_settings(resolve_experiment(changed)) == active_settings(resolve_experiment(experiment))
    metrics = train(dataset, tmp_path / "changed", changed)
    assert_same_run(tmp_path / "changed", metrics, tmp_path / "reference", reference)
    assert keys <= set(metrics["inactive_settings"])
    # The seeds of both agree (the aggregation compares the settings without the inactive keys) ...
    assert training_config(metrics["config"]) == training_config(reference["config"])
    aggregate([tmp_path / "reference", tmp_path / "changed"], tmp_path / "summary",
              expected=resolve_experiment(experiment))
    # ... and a key that is active under the same settings is not listed (the rules are not too broad).
    active_keys = {f"{section}.{key}" for section, values in active.items() for key in values}
    assert not active_keys & set(inactive_keys(resolve_experiment(_with(experiment, **active))))


def test_anchor_sampling_at_eval_changes_the_evaluation_only(dataset, tmp_path):
    """Its anchor draws in the per-epoch evaluation used to advance torch's generator, so the next epoch's
    shuffle, feature masks and dropout differed: another model, where the docs promise other logged losses."""
    experiment = _with(TINY, train={**TINY["train"], "epochs": 3, "patience": None},
                       model={**TINY["model"], "p_random_anchor": 0.9})
    reference = train(dataset, tmp_path / "reference", experiment)
    sampled = train(dataset, tmp_path / "sampled", _with(experiment, model={**experiment["model"],
                                                                          "anchor_sampling_at_eval": True}))
    history, reference_history = (pd.read_csv(d / "history.tsv", sep="\t") for d in
                                  (tmp_path / "sampled", tmp_path / "reference"))
    train_columns = [c for c in history.columns if c.startswith("train_")]
    assert train_columns and history[train_columns].equals(reference_history[train_columns])
    weights, reference_weights = (torch.load(d / "model.pt", weights_only=True)["state_dict"]
                                  for d in (tmp_path / "sampled", tmp_path / "reference"))
    assert all(torch.equal(weights[k], reference_weights[k]) for k in reference_weights)
    scores, reference_scores = ({k: v for k, v in m["test"].items() if k != "loss"} for m in (sampled, reference))
    assert scores == reference_scores  # the classification head never reads the anchors
    clip_losses = [c for c in history.columns if c.startswith("valid_loss_") and "anchor" in c]
    assert clip_losses and not history[clip_losses].equals(reference_history[clip_losses])


def test_run_errors(dataset, tmp_path):
    with pytest.raises(TrainingError, match="no anchor file"):
        train(dataset, tmp_path / "a", anchors=None)
    frame = manifest_io.read(dataset["manifest"])
    no_valid = frame.assign(split=frame["split"].replace("valid", "train"))
    manifest_io.write(no_valid, tmp_path / "novalid" / "manifest.tsv")
    (tmp_path / "novalid" / "summary.json").write_text((dataset["root"] / "summary.json").read_text())
    # The dataset's own key, from the manifest (it said datasets.<name>.valid_split, for the user to fill in).
    with pytest.raises(TrainingError, match=r"no 'valid' dialogues.*datasets\.synth\.valid_split: \{fraction: 0\.1, "
                                            r"seed: 0\}.*paper_compat"):
        train(dataset, tmp_path / "b", manifest=tmp_path / "novalid" / "manifest.tsv")
    with pytest.raises(anchor_io.AnchorFileError, match="expects ViT-B-32"):
        train(dataset, tmp_path / "c", {**TINY, "model": {**TINY["model"], "clip_model": "ViT-B-32"}})


# ------------------------------------------------------------------------------------------ resume

KILL_SCRIPT = """
import json, logging, os, signal, sys
from ercpipe.train import run_training
logging.basicConfig(level=logging.INFO)
a = json.loads(sys.argv[1])
def kill(epoch):
    if epoch == a["kill_at"]:
        os.kill(os.getpid(), a["signal"])
run_training(a["manifest"], a["features"], a["anchors"], a["experiment"], a["seed"], a["out"], device=a["device"],
             threads=1, on_epoch_end=kill)
"""


def kill_training_after(dataset, out: Path, epoch: int, checkpoint_every: int = 1, signum=signal.SIGKILL,
                        returncode: int = -9, train_settings: dict | None = None) -> subprocess.CompletedProcess:
    """Train TINY (with `train_settings` on top) with seed 0 (resume state every `checkpoint_every` epochs) into
    `out` in a child process that sends itself `signum` after `epoch`."""
    experiment = resolve_experiment({**TINY, "train": {**TINY["train"], **(train_settings or {}),
                                                       "checkpoint_every": checkpoint_every}})
    args = {"manifest": str(dataset["manifest"]), "features": {m: str(p) for m, p in dataset["features"].items()},
            "anchors": str(dataset["anchors"]), "experiment": experiment, "seed": 0, "out": str(out),
            "kill_at": epoch, "signal": int(signum), "device": TEST_DEVICE}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(args)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == returncode, result.stderr[-2000:]
    return result


def assert_same_run(out: Path, metrics: dict, reference_dir: Path, reference: dict) -> None:
    for key in ("protocol", "valid", "test", "temperatures"):
        assert metrics[key] == reference[key], key
    resumed = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    uninterrupted = torch.load(reference_dir / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.tsv", sep="\t").drop(columns="seconds"),
                                  pd.read_csv(reference_dir / "history.tsv", sep="\t").drop(columns="seconds"))


def test_the_resume_state_is_written_every_checkpoint_every_epochs(vega_run, dataset, tmp_path, monkeypatch):
    """K epochs with checkpoint_every = N write last.pt after epochs N, 2N, ... < K (the epoch that ends the run
    goes straight to model.pt), model.pt once, and nothing else; the result is the run's with any N."""
    from ercpipe.train import trainer

    saved = []
    real_save = trainer.save_torch

    def counting_save(obj, path):
        saved.append((Path(path).name, obj["state"]["epoch"] if "state" in obj else obj["epoch"]))
        real_save(obj, path)

    monkeypatch.setattr(trainer, "save_torch", counting_save)
    out = tmp_path / "run"
    metrics = train(dataset, out, {**TINY, "train": {**TINY["train"], "checkpoint_every": 3}})
    epochs_run = metrics["protocol"]["epochs_run"]
    assert epochs_run > 3
    assert [s for s in saved if s[0] == "last.pt"] == [("last.pt", e) for e in range(3, epochs_run, 3)]
    assert saved[-1] == ("model.pt", metrics["protocol"]["selected_epoch"])
    assert [name for name, _ in saved] == ["last.pt"] * ((epochs_run - 1) // 3) + ["model.pt"]
    assert sorted(p.name for p in out.iterdir()) == ["fused.npz", "history.tsv", "metrics.json", "model.pt",
                                                     "predictions.tsv"]
    assert_same_run(out, metrics, *vega_run)
    with pytest.raises(ValueError, match=r"train\.checkpoint_every"):
        resolve_experiment({**TINY, "train": {"checkpoint_every": 0}})


def test_resume_after_sigkill_gives_the_uninterrupted_result(vega_run, dataset, tmp_path, caplog):
    out = tmp_path / "killed"
    # Killed after epoch 3 with the state written every 2 epochs: epoch 3 is lost and done again.
    kill_training_after(dataset, out, epoch=3, checkpoint_every=2)
    assert (out / "last.pt").exists() and not (out / "best.pt").exists()
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()
    # No output looks complete: the history so far is under another name until the run ends.
    assert not (out / "history.tsv").exists() and len(pd.read_csv(out / "history.running.tsv", sep="\t")) == 3
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 2 and len(last["state"]["history"]) == 2
    assert last["best"]["epoch"] == last["state"]["best_epoch"] > 0  # the selected weights travel with the state
    # The resumed run writes its state at another interval: that does not make the state stale.
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        metrics = train(dataset, out)
    assert "resuming from" in caplog.text and "after epoch 2" in caplog.text
    assert_same_run(out, metrics, *vega_run)


def test_near_the_jobs_time_limit_the_state_is_written_after_every_epoch(vega_run, dataset, tmp_path, monkeypatch,
                                                                           caplog):
    """A scheduler's time limit (SLURM: squeue's time left; elsewhere ERCPIPE_JOB_END_TIME) that is less than
    two epochs and a minute away: every epoch's state is written whatever checkpoint_every says, so a job
    killed at its limit (SIGKILL after KillWait) resumes from its last epoch."""
    far, near = tmp_path / "far", tmp_path / "near"
    kill_training_after(dataset, far, epoch=3, checkpoint_every=100)
    assert not (far / "last.pt").exists()  # without a limit: nothing written before epoch 100
    monkeypatch.setenv("ERCPIPE_JOB_END_TIME", str(time.time() + 30))
    killed = kill_training_after(dataset, near, epoch=3, checkpoint_every=100)
    assert "the job's time limit ends in 0:00:" in killed.stderr
    assert "written after every epoch from now on" in killed.stderr
    assert torch.load(near / "last.pt", weights_only=True)["state"]["epoch"] == 3
    monkeypatch.delenv("ERCPIPE_JOB_END_TIME")
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        metrics = train(dataset, near)
    assert "after epoch 3" in caplog.text
    assert_same_run(near, metrics, *vega_run)


def test_the_time_left_squeue_reports_is_read_in_every_format():
    from ercpipe.runlog import _slurm_time_left

    assert _slurm_time_left("1-02:03:04\n") == ((24 + 2) * 60 + 3) * 60 + 4
    assert _slurm_time_left("11:59:58") == 11 * 3600 + 59 * 60 + 58
    assert _slurm_time_left("4:05") == 245
    assert _slurm_time_left("UNLIMITED") is None and _slurm_time_left("NOT_SET") is None


def test_sigterm_writes_the_state_after_the_current_epoch_and_resumes(vega_run, dataset, tmp_path, caplog):
    """SIGTERM (what Snakemake and schedulers send) between epochs 3 and 4: epoch 4 is finished, its state
    written although the interval (10) is not reached, the process exits 143; the re-run resumes there."""
    out = tmp_path / "terminated"
    result = kill_training_after(dataset, out, epoch=3, checkpoint_every=10, signum=signal.SIGTERM, returncode=143)
    assert "received SIGTERM: stopping after the current epoch" in result.stderr
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 4 and not last["state"]["finished"]
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        metrics = train(dataset, out)
    assert "after epoch 4" in caplog.text
    assert_same_run(out, metrics, *vega_run)
    assert not (out / "last.pt").exists()


FINISH_SCRIPT = """
import json, os, signal, sys
from ercpipe.runlog import rule_logging
from ercpipe.train import run_training, trainer
a = json.loads(sys.argv[1])
real = getattr(trainer, a["at"])
def signalled(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
setattr(trainer, a["at"], signalled)
with rule_logging(a["log"]):
    run_training(a["manifest"], a["features"], a["anchors"], a["experiment"], a["seed"], a["out"],
                 device=a["device"], threads=1)
"""


@pytest.mark.parametrize("at, logged", [
    ("_finish", "received SIGTERM during the final evaluation: the run finishes first"),
    ("remove_stale_temporaries", "SIGTERM after the job's outputs were complete: ignored; the job ends normally"),
])
def test_a_sigterm_once_the_epochs_are_done_lets_the_job_finish(vega_run, dataset, tmp_path, at, logged):
    """A SIGTERM during the final evaluation ended the job by the default action, without a word in its log, and
    its re-run repeated up to checkpoint_every epochs; one after metrics.json (the resume state then deleted) failed
    a job whose log said it was done: Snakemake deleted its outputs and the whole run was trained again."""
    out, log = tmp_path / "run", tmp_path / "train.log"
    args = {"manifest": str(dataset["manifest"]), "features": {m: str(p) for m, p in dataset["features"].items()},
            "anchors": str(dataset["anchors"]), "experiment": resolve_experiment(TINY), "seed": 0, "out": str(out),
            "device": TEST_DEVICE, "at": at, "log": str(log)}
    result = subprocess.run([sys.executable, "-c", FINISH_SCRIPT, json.dumps(args)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:] + log.read_text()[-2000:]
    assert logged in log.read_text() and "done in" in log.read_text()
    assert_same_run(out, json.loads((out / "metrics.json").read_text()), *vega_run)
    assert not (out / "last.pt").exists()


def test_an_exception_between_epochs_keeps_the_completed_epoch(dataset, tmp_path):
    class Stop(Exception):
        pass

    def stop(epoch):
        if epoch == 2:
            raise Stop

    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(dataset, out, {**TINY, "train": {**TINY["train"], "checkpoint_every": 5}}, on_epoch_end=stop)
    assert torch.load(out / "last.pt", weights_only=True)["state"]["epoch"] == 2


def test_stale_state_of_another_configuration_is_discarded(dataset, tmp_path, caplog):
    """Snakemake re-runs a job whose training settings changed in the same folder: start from scratch."""
    out = tmp_path / "run"
    kill_training_after(dataset, out, epoch=2)
    other = {**TINY, "train": {**TINY["train"], "epochs": 3}}
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        metrics = train(dataset, out, other)
    assert "not resuming from" in caplog.text and "differing sections: ['train']" in caplog.text
    assert "resuming from" not in caplog.text.replace("not resuming from", "")
    assert metrics["protocol"]["epochs_run"] == 3 and len(pd.read_csv(out / "history.tsv", sep="\t")) == 3


def test_a_state_trained_on_labels_fixed_since_is_discarded(dataset, tmp_path, caplog):
    """A label fixed in the raw data after a kill leaves every feature file as it was: the state must not be
    continued on the new labels (nor on other anchors)."""
    out = tmp_path / "run"
    kill_training_after(dataset, out, epoch=2)
    manifest = manifest_io.read(dataset["manifest"])
    first = manifest.index[manifest["split"] == "train"][0]
    classes = sorted(set(manifest["label"]))
    manifest.loc[first, "label"] = next(c for c in classes if c != manifest.loc[first, "label"])
    fixed = tmp_path / "manifest.tsv"
    manifest_io.write(manifest, fixed)
    shutil.copy(Path(dataset["manifest"]).with_name("summary.json"), tmp_path / "summary.json")
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        train(dataset, out, manifest=fixed)
    assert "not resuming from" in caplog.text and "it was trained on other inputs (labels changed since)" in caplog.text
    assert "resuming from" not in caplog.text.replace("not resuming from", "")
    caplog.clear()
    kill_training_after(dataset, out, epoch=2)  # and the anchors: other vectors, same classes
    other_anchors = write_anchor_file(tmp_path / "other_anchors.h5", seed=5)
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        train(dataset, out, anchors=other_anchors)
    assert "it was trained on other inputs (anchors changed since)" in caplog.text


def test_a_manifest_without_test_dialogues_writes_every_output(tmp_path, monkeypatch):
    """Every file the train_model rule declares is written, fused.npz with zero rows, and the aggregate plots
    say why there is no t-SNE (Snakemake would otherwise call the job failed and delete its outputs)."""
    manifest, features = write_dataset(tmp_path / "data", n_dialogues=(12, 4, 0))
    out = tmp_path / "run"
    run_training(manifest, features, None, resolve_experiment({**TINY, "preset": "sdt-vega-backbone",
                                                               "train": {**TINY["train"], "epochs": 2}}),
                 0, out, device=TEST_DEVICE, threads=1)
    for name in ("metrics.json", "model.pt", "history.tsv", "predictions.tsv", "fused.npz"):
        assert (out / name).is_file(), name
    fused = np.load(out / "fused.npz")
    assert fused["fused"].shape[0] == 0 and len(fused["classes"]) == len(IEMOCAP_CLASSES)
    texts = figure_texts(monkeypatch)
    aggregate([out], tmp_path / "summary")
    assert (tmp_path / "summary" / "tsne.png").stat().st_size > 0
    # The confusion figure says there is no test split (it used to plot the valid matrix under a test caption).
    assert texts["confusion.png"] == ["no test split: no test confusion matrix"]


def figure_texts(monkeypatch) -> dict[str, list[str]]:
    """The titles and texts of every figure `aggregate` saves, by file name (filled as it saves them)."""
    from ercpipe.train import aggregation

    texts: dict[str, list[str]] = {}
    save = aggregation._save

    def recording_save(fig, path):
        texts[Path(path).name] = [t for t in [fig._suptitle.get_text() if fig._suptitle else ""]
                                  + [ax.get_title() for ax in fig.axes] + [x.get_text() for ax in fig.axes
                                                                           for x in ax.texts] if t]
        texts[f"{Path(path).name} x ticks"] = [tick for ax in fig.axes for tick in ax.get_xticks().tolist()]
        save(fig, path)

    monkeypatch.setattr(aggregation, "_save", recording_save)
    return texts


def test_a_checkpoint_of_another_version_or_a_device_that_is_not_here_is_named(vega_run, tmp_path):
    from ercpipe.device import DeviceError, resolve_device

    payload = torch.load(vega_run[0] / "model.pt", weights_only=True)
    for name, change in (("v99.pt", {"version": 99}), ("nospec.pt", {"spec": None}),
                         ("newfield.pt", {"spec": {**payload["spec"], "new_field": 1}})):
        edited = {k: v for k, v in {**payload, **change}.items() if v is not None}
        torch.save(edited, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"{name}.*(another version of ercpipe|does not fit this version)"):
            load_model(tmp_path / name)
    with pytest.raises(DeviceError, match=r"device 'gpu' is not a device name; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    for name in ("mps", "meta", "xpu:0"):  # names torch knows; the pipeline computes on neither
        with pytest.raises(DeviceError, match=rf"device '{name}' is not supported; use auto, cpu, cuda or cuda:N"):
            resolve_device(name)
    if not torch.cuda.is_available():  # the message serves the command line and Python alike
        with pytest.raises(DeviceError, match=r"device cuda was requested but CUDA is not available here; use cpu or "
                                              r"auto \(--device on the command line, device= in Python\)"):
            resolve_device("cuda")


def test_a_gpu_job_without_a_gpu_stops_and_resume_keeps_only_the_training_gpus_generator(monkeypatch):
    """use_gpu only asked the scheduler for a GPU: a job that saw none (a CUDA build the driver cannot run) trained
    on the CPU without a word. The resume state held every visible GPU's generator, so resuming where fewer GPUs
    are visible failed with an IndexError. CUDA is simulated below where this machine has none."""
    from ercpipe import device as devices
    from ercpipe.device import DeviceError

    assert devices.job_device({"use_gpu": False}) == devices.job_device({}) == "auto"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match=r"use_gpu is true but this job sees no usable GPU \(torch .*, built for "
                                              r"CUDA .*\): check that the job got a GPU .* or set use_gpu: false"):
            devices.job_device({"use_gpu": True})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"device cuda:3 was requested but this process sees 1 GPU\(s\)"):
        devices.resolve_device("cuda:3")
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: f"generator of {device}")
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, str(device))))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    state = devices.rng_state(torch.device("cuda:0"))
    assert state["cuda"] == "generator of cuda:0"
    devices.set_rng_state(state, torch.device("cuda:0"))
    # A state of the earlier form (one generator per visible GPU): the training GPU's entry, if it has one.
    devices.set_rng_state({**state, "cuda": ["gpu0", "gpu1"]}, torch.device("cuda"))
    devices.set_rng_state({**state, "cuda": ["gpu0"]}, torch.device("cuda:1"))
    assert restored == [("generator of cuda:0", "cuda:0"), ("gpu0", "cuda")]


def test_resume_needs_the_selected_checkpoint(dataset, tmp_path, caplog):
    out = tmp_path / "run"
    kill_training_after(dataset, out, epoch=2)
    last = torch.load(out / "last.pt", weights_only=True)
    torch.save({**last, "best": None}, out / "last.pt")
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        metrics = train(dataset, out)
    assert "selected checkpoint (epoch" in caplog.text and "is missing; training from scratch" in caplog.text
    assert metrics["protocol"]["epochs_run"] == len(pd.read_csv(out / "history.tsv", sep="\t"))


def test_a_run_resumed_on_another_device_says_so_and_lists_both(dataset, tmp_path, caplog):
    """A GPU job's resume state continued on a CPU node in fp32 without a word, and metrics.json said only "cpu".
    The state here is marked as a GPU's (this machine has none); the weights are the same either way."""
    out = tmp_path / "run"
    kill_training_after(dataset, out, epoch=2)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["state"]["devices"] == ["cpu, off (fp32)"]
    gpu = "cuda:0 (NVIDIA H100 80GB HBM3), fp16 autocast"
    torch.save({**last, "state": {**last["state"], "devices": [gpu]}}, out / "last.pt")
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        metrics = train(dataset, out)
    assert (f"this run trained on {gpu} until epoch {last['state']['epoch']} and continues on cpu, off (fp32)"
            in caplog.text)
    assert metrics["devices"] == [gpu, "cpu, off (fp32)"] and metrics["device"] == "cpu"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        again = train(dataset, tmp_path / "uninterrupted")
    assert again["devices"] == ["cpu, off (fp32)"] and "continues on" not in caplog.text
    assert again["thread_counts"] == [1] and "continues with" not in caplog.text
    # The thread count too: a run killed under --cores 3 and resumed under --cores 1 (marked here as well) was
    # neither run, and metrics.json said 1 thread.
    out = tmp_path / "threads"
    kill_training_after(dataset, out, epoch=2)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["state"]["thread_counts"] == [1]
    torch.save({**last, "state": {**last["state"], "thread_counts": [3]}}, out / "last.pt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        metrics = train(dataset, out)
    assert (f"this run trained with 3 CPU thread(s) until epoch {last['state']['epoch']} and continues with 1: its "
            "weights differ from an uninterrupted run with either" in caplog.text)
    assert metrics["thread_counts"] == [3, 1] and metrics["threads"] == 1


def test_a_diverged_training_stops_naming_the_epoch_and_what_to_change(dataset, tmp_path):
    """A learning rate far too high made every weight NaN; the run finished, kept the NaN model (every prediction
    class 0, its accuracy reported as a result), and the aggregation then failed inside t-SNE."""
    out = tmp_path / "diverged"
    with pytest.raises(TrainingError, match=r"training diverged in epoch 1: \d+ weight tensor\(s\) became NaN or inf "
                                            r"\(e\.g\. .*; mean training losses: .*nan.*\); lower train\.lr, set "
                                            r"train\.grad_clip"):
        train(dataset, out, {**TINY, "train": {**TINY["train"], "lr": 1e9, "optimizer": "sgd"}})
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()


# ------------------------------------------------------------------------------------------ aggregation

def test_aggregate(vega_run, dataset, tmp_path, caplog):
    second = tmp_path / "seed1"
    train(dataset, second, seed=1)
    # A seed trained with other settings (a job that outlived a killed Snakemake) is named, not averaged in.
    stale = tmp_path / "stale"
    train(dataset, stale, {**TINY, "train": {**TINY["train"], "epochs": 3}}, seed=1)
    with pytest.raises(Exception, match=rf"{stale} was trained with train.epochs = 3, {vega_run[0]} with 10 \(1 "
                                        r"setting\(s\) differ\): one of them is left over"):
        aggregate([vega_run[0], stale], tmp_path / "refused")
    # With one seed, or every seed left over, the seeds agree: the experiment's settings now decide.
    with pytest.raises(Exception, match=rf"{stale} was trained with train.epochs = 3, but the experiment now sets 10 "
                                        r"\(1 setting\(s\) differ\): it is left over from earlier settings, "
                                        r"e.g. a run with --rerun-triggers that leave out params"):
        aggregate([stale], tmp_path / "refused", expected=resolve_experiment(TINY))
    # ... and so do the feature settings and anchors it was trained on (a changed `features:` is not a training key).
    with pytest.raises(Exception, match=r"was trained with features.text = None, but the experiment now sets "
                                        r"'minilm2'"):
        aggregate([vega_run[0]], tmp_path / "refused", expected=resolve_experiment({**TINY,
                                                                                    "features": {"text": "minilm2"}}))
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "summary"
    aggregate([vega_run[0], second], out, expected=resolve_experiment(TINY))
    for name in ("summary.json", "summary.tsv", "curves.png", "confusion.png", "tsne.png"):
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    runs = [json.loads((p / "metrics.json").read_text()) for p in (vega_run[0], second)]
    f1 = summary["metrics"]["test.weighted_f1"]
    values = [r["test"]["weighted_f1"] for r in runs]
    assert f1["values"] == values and f1["mean"] == pytest.approx(np.mean(values))
    assert f1["std"] == pytest.approx(np.std(values, ddof=1))
    assert "test.per_class.sad.f1" in summary["metrics"] and summary["seeds"] == [0, 1]
    np.testing.assert_allclose(summary["mean_confusion"]["test"],
                               np.mean([r["test"]["confusion"] for r in runs], axis=0))
    table = pd.read_csv(out / "summary.tsv", sep="\t")
    assert "valid.accuracy" in set(table["metric"])
    assert summary["mixed_provenance"] == [] and summary["provenance"][1]["seed"] == 1
    assert summary["provenance"][0]["ercpipe"] == runs[0]["versions"]["ercpipe"]
    assert "not all trained alike" not in (out / "summary.html").read_text()
    with pytest.raises(Exception, match="has not finished"):
        aggregate([tmp_path / "missing"], out)
    # A seed added after a `git pull`, with another thread count: averaged, and said (it used to be silent).
    added = json.loads((second / "metrics.json").read_text())
    added["versions"]["ercpipe"], added["threads"], added["thread_counts"] = "0.1.0+gdeadbeef", 7, [7]
    (second / "metrics.json").write_text(json.dumps(added))
    with caplog.at_level(logging.WARNING, logger="ercpipe.train.aggregation"):
        aggregate([vega_run[0], second], out, expected=resolve_experiment(TINY))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mixed_provenance"] == ["ercpipe", "threads"]
    said = (f"the seeds were not all trained alike: the ercpipe code (version and commit) "
            f"({runs[0]['versions']['ercpipe']}: seed(s) 0; 0.1.0+gdeadbeef: seed(s) 1), the thread count "
            f"({runs[0]['threads']}: seed(s) 0; 7: seed(s) 1); the mean mixes them")
    assert said in caplog.text
    assert html.escape("The" + said[3:]) in (out / "summary.html").read_text()
    # Only what changes results counts: threads on a GPU, a GPU's index, one count written as a number (older runs).
    from ercpipe.train.aggregation import _provenance

    older, newer = {"device": "cpu", "threads": 1}, {"device": "cpu", "threads": 1, "thread_counts": [1]}
    assert _provenance(older)["threads"] == _provenance(newer)["threads"] == [1]
    gpus = [_provenance({"device": f"cuda:{k}", "threads": 4 * (k + 1), "devices": [f"cuda:{k} (H100), off (fp32)"]})
            for k in (0, 1)]
    assert gpus[0]["threads"] is None and gpus[0]["devices"] == gpus[1]["devices"] == ["cuda (H100), off (fp32)"]


def test_keys_that_shape_no_training_neither_block_aggregation_nor_resume(tmp_path):
    """model.clip_model (a check of the anchor file) is in a run's metrics.json but not in the job's params, which
    aggregation compares it with: an experiment that set it could never be aggregated, and deleting the seed's
    metrics.json as told re-trained it into the same refusal."""
    from ercpipe.train.aggregation import _check_same_settings
    from ercpipe.train.presets import without_non_training_keys
    from ercpipe.train.trainer import training_config

    configured = resolve_experiment({**TINY, "model": {**TINY["model"], "clip_model": "ViT-B-32"},
                                     "train": {**TINY["train"], "checkpoint_every": 3}})
    params = without_non_training_keys(configured)  # what the job's params (and aggregation's `expected`) hold
    assert "clip_model" not in params["model"] and "clip_model" in configured["model"]
    assert training_config(params) == training_config(configured)
    runs = [{"config": configured}, {"config": configured}]
    _check_same_settings([tmp_path / "seed0", tmp_path / "seed1"], runs, expected=params)


def test_undefined_per_class_scores_are_none_and_summarised_over_the_runs_that_define_them():
    """A class with no test utterance used to score recall / F1 0 (and a never-predicted one precision 0), which
    pulled its mean towards 0 and read as a failure of the model."""
    from ercpipe.report import experiment_summary_sections
    from ercpipe.train.aggregation import summarize_runs
    from ercpipe.train.metrics import classification_metrics

    classes = ["a", "b", "c"]
    labels = np.array([0, 0, 1, 1])  # no "c" in the split
    first = classification_metrics(labels, np.array([0, 1, 1, 1]), classes)
    second = classification_metrics(labels, np.array([0, 0, 2, 2]), classes)  # "b" never predicted, "c" twice
    assert first["per_class"]["c"] == {"recall": None, "precision": None, "f1": None, "support": 0}
    assert second["per_class"]["c"] == {"recall": None, "precision": 0.0, "f1": 0.0, "support": 0}
    assert second["per_class"]["b"] == {"recall": 0.0, "precision": None, "f1": 0.0, "support": 2}
    assert first["per_class"]["a"]["recall"] == 50.0 and first["per_class"]["b"]["precision"] == pytest.approx(200 / 3)
    protocol = {"selection_split": "valid", "selection_metric": "weighted_f1", "paper_compat": False,
                "selected_epoch": 1, "epochs_run": 1}
    runs = [{"classes": classes, "seed": seed, "protocol": protocol, "valid": None, "test": metrics}
            for seed, metrics in enumerate((first, second))]
    summary = summarize_runs(runs, ["run0", "run1"])["metrics"]
    assert "test.per_class.c.recall" not in summary
    assert summary["test.per_class.c.f1"]["values"] == [0.0] and summary["test.per_class.c.f1"]["n"] == 1
    assert summary["test.per_class.b.precision"]["values"] == [pytest.approx(200 / 3)]
    assert summary["test.per_class.b.recall"]["values"] == [100.0, 0.0]
    assert summary["test.per_class.a.support"]["mean"] == 2
    sections = experiment_summary_sections({"metrics": summary, "classes": classes, "n_runs": 2, "seeds": [0, 1],
                                            "protocol": protocol, "paper_compat": False})
    table = {title: frame for title, frame, _ in sections}["Per class (test)"].set_index("class")
    assert table.loc["c", "accuracy (recall)"] == "–" and table.loc["c", "F1"] == "0.00 (1 of 2 runs)"
    assert table.loc["b", "accuracy (recall)"] == "50.00 ± 70.71" and table.loc["a", "utterances"] == "2"


def test_class_names_the_figure_font_cannot_draw_are_numbered():
    """CJK class names came out as rows of empty boxes in confusion.png and the t-SNE legend."""
    from ercpipe.train.aggregation import _drawable_names

    assert _drawable_names(["café", "Ärger", "neutral"]) == (["café", "Ärger", "neutral"], "")
    names, note = _drawable_names(["平静", "愤怒", "joy"])
    assert names == ["class 0", "class 1", "joy"] and "summary.json's classes" in note  # only those it cannot draw


def test_a_duplicate_sigterm_is_one_request_and_a_later_one_stops_at_once(monkeypatch):
    """Under SLURM slurmstepd and the job's Snakemake each send SIGTERM, 40 ms apart; the second used to skip
    writing the resume state."""
    from ercpipe.train import trainer

    clock = iter([100.0, 100.04, 100.04, 103.0])
    monkeypatch.setattr(trainer.time, "monotonic", lambda: next(clock))
    stop = trainer._StopSignals()
    stop._handle(signal.SIGTERM, None)
    stop._handle(signal.SIGTERM, None)  # 40 ms later: the same request
    assert stop.received == signal.SIGTERM
    with pytest.raises(SystemExit) as exit_info:
        stop._handle(signal.SIGTERM, None)  # 3 s later: stop now
    assert exit_info.value.code == 143
    interrupted = trainer._StopSignals()
    interrupted.received = signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C twice always stops at once
        interrupted._handle(signal.SIGINT, None)


def test_the_pipeline_features_choose_the_modalities():
    text_audio = {**TINY, "features": {"text": "minilm", "audio": "is10"}}
    assert resolve_experiment(text_audio)["model"]["modalities"] == ["text", "audio"]
    narrowed = {**text_audio, "model": {**TINY["model"], "modalities": ["text"]}}
    assert resolve_experiment(narrowed)["model"]["modalities"] == ["text"]
    with pytest.raises(ValueError, match=r"model.modalities: \['visual'\] have no feature setting"):
        resolve_experiment({**text_audio, "model": {"modalities": ["text", "visual"]}})


# ------------------------------------------------------------------------------------------ precision, memory

@pytest.mark.skipif(not TEST_DEVICE.startswith("cuda"), reason="fp16 autocast runs on CUDA only: ERCPIPE_TEST_DEVICE=cuda")
def test_fp16_on_cuda_learns_and_resumes_after_sigkill(dataset, tmp_path, caplog):
    """train.amp = fp16 on CUDA: autocast with one GradScaler, whose state travels in last.pt, so a run killed
    after epoch 3 (state written after epoch 2) and resumed ends with the uninterrupted run's weights."""
    fp16 = {"amp": "fp16"}
    experiment = {**TINY, "train": {**TINY["train"], **fp16}}
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        reference = train(dataset, tmp_path / "uninterrupted", experiment)
    assert "fp16 autocast" in caplog.text
    assert reference["test"]["accuracy"] > 60
    out = tmp_path / "killed"
    kill_training_after(dataset, out, epoch=3, checkpoint_every=2, train_settings=fp16)
    assert torch.load(out / "last.pt", weights_only=True)["scaler"]  # the scaler's state is saved
    assert_same_run(out, train(dataset, out, experiment), tmp_path / "uninterrupted", reference)


def test_bf16_on_the_cpu_trains_and_learns(dataset, tmp_path, caplog, monkeypatch):
    """train.amp = bf16 is bf16 autocast on a CPU with bf16 kernels (fp16 stays fp32 there); a seed gives the
    same run. The probe is told yes, so that the autocast path runs on any CPU (slowly without the kernels: the
    next test is what such a CPU does)."""
    from ercpipe.model import inference

    monkeypatch.setattr(inference, "cpu_has_bf16_kernels", lambda: True)
    experiment = {**TINY, "train": {**TINY["train"], "amp": "bf16"}}
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        metrics = train(dataset, tmp_path / "a", experiment)
    assert "bf16 autocast" in caplog.text
    assert metrics["test"]["accuracy"] > 60
    again = train(dataset, tmp_path / "b", experiment)
    assert again["test"] == metrics["test"]


def test_bf16_on_a_gpu_without_native_bf16_runs_in_fp32_in_training_and_text_extraction(monkeypatch, caplog):
    """GPUs before compute capability 8.0 (V100, T4) emulate bf16, and autocast accepts it without a word, slower
    than fp32: train.amp / finetune.amp bf16 and the text `dtype` bf16 run in fp32 there and say so. fp16 is
    unaffected. The GPU is simulated (its capability is what is asked)."""
    from ercpipe.features.settings import text_settings
    from ercpipe.features.text_encoder import TextEncoder
    from ercpipe.model.inference import effective_amp
    from ercpipe.train.trainer import amp_description

    capability = {"value": (7, 0)}
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability["value"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla V100")
    gpu = torch.device("cuda")
    encoder = TextEncoder.__new__(TextEncoder)  # its settings and device only: no model is moved to the GPU
    encoder.device, encoder.settings = gpu, text_settings({"dtype": "bf16"})
    assert effective_amp(gpu, "bf16") == "off" and effective_amp(gpu, "fp16") == "fp16"
    assert amp_description(gpu, "bf16") == "bf16 requested, fp32 on this GPU (no native bf16: compute capability " \
                                           "below 8.0)"
    with caplog.at_level(logging.WARNING, logger="ercpipe.features.text_encoder"):
        encoder.autocast_dtype = encoder._autocast_dtype()  # as __init__ sets it
    assert encoder.autocast_dtype is None and "cuda has no native bf16 (compute capability below 8.0), so the " \
                                              "encoder runs in fp32" in caplog.text
    assert encoder.computed_on == "cuda:0 (Tesla V100), bf16 requested, fp32 (no native bf16)"
    capability["value"] = (8, 0)
    assert effective_amp(gpu, "bf16") == "bf16" and amp_description(gpu, "bf16") == "bf16 autocast"
    assert encoder._autocast_dtype() is torch.bfloat16


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the CPU's bf16 kernels")
def test_bf16_on_a_cpu_without_bf16_kernels_trains_in_fp32_and_says_so(dataset, tmp_path, caplog, monkeypatch):
    """Without bf16 kernels (AVX2-only CPUs) torch's bf16 products run ~20x slower than fp32: the run trains in
    fp32, exactly as train.amp: off would, with a warning and the fact in metrics.json."""
    from ercpipe.model import inference

    monkeypatch.setattr(inference, "cpu_has_bf16_kernels", lambda: False)
    with caplog.at_level(logging.INFO, logger="ercpipe.train.trainer"):
        metrics = train(dataset, tmp_path / "bf16", {**TINY, "train": {**TINY["train"], "amp": "bf16"}})
    assert "this CPU has no bf16 kernels" in caplog.text and "trains in fp32" in caplog.text
    assert metrics["devices"] == ["cpu, bf16 requested, fp32 on this CPU (no bf16 kernels)"]
    fp32 = train(dataset, tmp_path / "fp32", {**TINY, "train": {**TINY["train"], "amp": "off"}})
    assert metrics["test"] == fp32["test"] and metrics["valid"] == fp32["valid"]


def test_a_new_selection_overwrites_the_previous_weights_in_place():
    from ercpipe.model import ModelSpec, build_model
    from ercpipe.model.checkpoint import checkpoint_payload

    spec = ModelSpec({"text": 5, "audio": 4, "visual": 3}, 4, 2, hidden_dim=8, n_heads=2, clip_dim=4)
    model = build_model(spec)
    fields = dict(spec=spec, config={}, classes=list("abcd"), seed=0, selection_split="valid", feature_stats=None,
                  features={})
    first = checkpoint_payload(model, epoch=1, **fields)
    held = {k: v.clone() for k, v in first["state_dict"].items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for k in held:  # the payload is a copy, not the live weights
        assert torch.equal(first["state_dict"][k], held[k])
    second = checkpoint_payload(model, epoch=3, into=first["state_dict"], **fields)
    assert second["epoch"] == 3 and second["classes"] == list("abcd")
    assert all(second["state_dict"][k] is first["state_dict"][k] for k in held)  # no second copy
    for k, v in model.state_dict().items():
        assert torch.equal(second["state_dict"][k], v)


def test_cpu_runs_limit_the_onednn_and_ideep_caches_unless_the_environment_says(monkeypatch):
    """docs/model.md, "Benchmarks": ideep's computation cache (LRU_CACHE_CAPACITY, 1024 by default) grew with
    every new batch shape under bf16 and took the whole-run peak RSS over 2.4 GiB."""
    from ercpipe.train import trainer

    monkeypatch.setenv("LRU_CACHE_CAPACITY", "")  # so that the value set below is undone after the test
    monkeypatch.delenv("LRU_CACHE_CAPACITY")
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 20))  # skips the mallopt call: nothing process-wide
    trainer.limit_allocator_caches()
    assert os.environ["LRU_CACHE_CAPACITY"] == "8"
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "16"


def test_loading_says_which_classes_and_speaker_slots_training_cannot_learn(dataset, tmp_path, caplog):
    frame = manifest_io.read(dataset["manifest"])
    frame.loc[(frame["split"] == "train") & (frame["label"] == "fru"), "label"] = "hap"  # fru: valid and test only
    frame.loc[(frame["split"] == "valid") & (frame["label"] == "ang"), "label"] = "sad"  # ang: no valid utterance
    test_dialogue = frame.loc[frame["split"] == "test", "dialogue_id"].iloc[0]
    frame.loc[frame["dialogue_id"] == test_dialogue, "speaker_slot"] = 2  # a third speaker, in test only
    manifest_io.write(frame, tmp_path / "manifest.tsv")
    with caplog.at_level(logging.WARNING, logger="ercpipe.train.data"):
        load_dialogues(tmp_path / "manifest.tsv", dataset["features"], ["text"], classes=IEMOCAP_CLASSES)
    assert "class(es) ['fru'] have no training utterance; the model cannot learn them" in caplog.text
    assert "class(es) ['ang'] have no validation utterance" in caplog.text
    assert f"speaker slot(s) [2] occur only outside training (dialogues ['{test_dialogue}'])" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ercpipe.train.data"):
        load_dialogues(dataset["manifest"], dataset["features"], ["text"])
    assert "have no" not in caplog.text and "speaker slot" not in caplog.text


def test_the_official_weights_on_a_csv_dataset_with_meld_class_names_are_said_to_be_meld_counts(tmp_path, caplog):
    from ercpipe.labels import MELD_CLASSES
    from ercpipe.train.data import DialogueData
    from ercpipe.train.trainer import class_weights_for

    cfg = {"loss": {"class_weights": "paper"}, "train": {"paper_compat": False}}
    for fmt, warned in (("csv", True), ("meld", False)):
        (tmp_path / fmt).mkdir()
        (tmp_path / fmt / "summary.json").write_text(json.dumps({"format": fmt, "classes": list(MELD_CLASSES)}))
        data = DialogueData([], list(MELD_CLASSES), ("text",), {"text": 4}, 9, str(tmp_path / fmt / "manifest.tsv"))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ercpipe.train.trainer"):
            weights, source = class_weights_for(cfg, data, ("train",))
        assert weights is not None and source.startswith("paper (official hard-coded MELD whole-dataset counts")
        assert ("the official vector is MELD's whole-dataset counts; this dataset (format csv)" in caplog.text) == warned
