"""Inference: a trained checkpoint on the pipeline's feature files and on a new raw conversation."""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ercpipe import config as pipeline_config
from ercpipe import infer
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io

DATASET, EXPERIMENT = "meld_demo", "meld_demo_sdt_vega"


@pytest.fixture(scope="module")
def trained(pipeline_run):
    workdir = pipeline_run[0]
    features = {m: workdir / f"features/{DATASET}/{m}/{s}.h5"
                for m, s in (("text", "minilm"), ("audio", "is10"), ("visual", "densenet121"))}
    return {"workdir": workdir, "checkpoint": workdir / f"results/{DATASET}/{EXPERIMENT}/seed0/model.pt",
            "manifest": workdir / f"features/{DATASET}/manifest.tsv", "features": features}


def _probabilities(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()


def test_predictions_run_in_the_precision_the_run_evaluated_in(trained, tmp_path, monkeypatch):
    """With train.amp fp16 on a GPU (the default) the run's predictions.tsv came from autocast and `ercpipe predict`
    from fp32: probabilities differed in the fifth digit, enough to flip a near tie. bf16 autocast, which a CPU
    with bf16 kernels runs, stands in for it here (on any CPU: the probe is told yes)."""
    from ercpipe.model import inference

    monkeypatch.setattr(inference, "cpu_has_bf16_kernels", lambda: True)
    payload = torch.load(trained["checkpoint"], weights_only=True)
    payload["config"]["train"]["amp"] = "bf16"
    torch.save(payload, tmp_path / "bf16.pt")
    fp32 = infer.predict_features(trained["checkpoint"], trained["manifest"], trained["features"], splits=["test"])
    bf16 = infer.predict_features(tmp_path / "bf16.pt", trained["manifest"], trained["features"], splits=["test"])
    assert not np.allclose(_probabilities(fp32), _probabilities(bf16), rtol=0, atol=1e-6)
    np.testing.assert_allclose(_probabilities(fp32), _probabilities(bf16), atol=0.05)  # the same model


def test_predictions_on_feature_files_match_the_training_run(trained):
    frame = infer.predict_features(trained["checkpoint"], trained["manifest"], trained["features"], splits=["test"])
    run = pd.read_csv(trained["checkpoint"].parent / "predictions.tsv", sep="\t", keep_default_na=False)
    run = run[run["split"] == "test"].reset_index(drop=True)
    assert frame["utterance_id"].tolist() == run["utterance_id"].tolist()
    assert frame["prediction"].tolist() == run["prediction"].tolist()
    np.testing.assert_allclose(_probabilities(frame), _probabilities(run), atol=1e-5)
    assert (frame["label"] == run["label"]).all()
    # Another dataset's labels: the checkpoint is the problem, not the labels (the message said "fix the label").
    other = {m: Path(str(p).replace(DATASET, "iemocap_demo")) for m, p in trained["features"].items()}
    with pytest.raises(infer.InferenceError, match=r"label\(s\) \['ang', .* are not among the classes \['neutral', "
                                                   r".* that .*model.pt was trained on; use a checkpoint trained on "
                                                   r"this dataset's classes"):
        infer.predict_features(trained["checkpoint"], Path(str(trained["manifest"]).replace(DATASET, "iemocap_demo")),
                               other)


def test_a_results_folder_predicts_with_its_runs_and_a_selected_ensemble_as_the_selection_did(trained, tmp_path,
                                                                                           monkeypatch):
    """A published experiment or selection (results/{dataset}/{name}) had no model.pt of its own: the user had to
    pick a seed's file, and a selection whose winner was an ensemble could not be used at all."""
    from ercpipe.train.ensemble import ensemble_predictions

    workdir = trained["workdir"]
    manifest, features = (workdir / "features/iemocap_demo/manifest.tsv",
                          {m: Path(str(p).replace(DATASET, "iemocap_demo")) for m, p in trained["features"].items()})
    folder = workdir / "results/iemocap_demo/iemocap_demo_sdt"
    seeds = json.loads((folder / "summary.json").read_text())["seeds"]
    assert infer.checkpoint_files(folder) == [folder / f"seed{s}/model.pt" for s in seeds]
    assert infer.checkpoint_files(folder, seed=seeds[-1]) == [folder / f"seed{seeds[-1]}/model.pt"]
    assert infer.checkpoint_files(folder / "seed0") == [folder / "seed0/model.pt"]
    # From another project's folder, whose results/ has a run of the same name: still the summary's own project.
    other = tmp_path / "other_project"
    (other / "results/iemocap_demo/iemocap_demo_sdt/seed0").mkdir(parents=True)
    (other / "results/iemocap_demo/iemocap_demo_sdt/seed0/model.pt").write_bytes(b"another model")
    monkeypatch.chdir(other)
    assert infer.checkpoint_files(folder, seed=0) == [folder / "seed0/model.pt"]
    monkeypatch.chdir(workdir)
    runs = [pd.read_csv(folder / f"seed{s}/predictions.tsv", sep="\t", keep_default_na=False) for s in seeds]
    every = infer.predict_features(folder, manifest, features, splits=["test"])
    tested = [run[run["split"] == "test"].set_index("utterance_id").loc[every["utterance_id"]] for run in runs]
    np.testing.assert_allclose(_probabilities(every), np.mean([_probabilities(t) for t in tested], axis=0), atol=1e-5)
    # A selection whose winner is an ensemble of the two iemocap experiments (as select_experiment writes it).
    members = {name: json.loads((workdir / f"results/iemocap_demo/{name}/summary.json").read_text())
               for name in ("iemocap_demo_sdt_vega", "iemocap_demo_sdt")}
    members = {name: {**m, "runs": [str(workdir / run) for run in m["runs"]]} for name, m in members.items()}
    selection = tmp_path / "results/iemocap_demo/picked"  # another project: the run paths are the workdir's
    selection.mkdir(parents=True)
    (selection / "summary.json").write_text(json.dumps({"seeds": seeds, "runs": ["ensemble of ..."] * len(seeds),
        "selection": {"chosen": "ensemble_top2", "ensembles": {"ensemble_top2": {
            "members": list(members), "summaries": [str(workdir / f"results/iemocap_demo/{m}/summary.json")
                                                    for m in members]}}}}))
    assert infer.checkpoint_files(selection, seed=0) == [
        workdir / f"results/iemocap_demo/{m}/seed0/model.pt" for m in members]
    frame = infer.predict_features(selection, manifest, features, splits=["valid", "test"], seed=0)
    published = ensemble_predictions(members, 0).set_index("utterance_id").loc[frame["utterance_id"]]
    assert frame["prediction"].tolist() == published["prediction"].tolist()
    np.testing.assert_allclose(_probabilities(frame), _probabilities(published), atol=1e-5)
    with pytest.raises(infer.InferenceError, match=r"picked/summary.json: iemocap_demo_sdt_vega ran seeds "
                                                   r"\[[0-9, ]+\], not 7"):
        infer.checkpoint_files(selection, seed=7)
    with pytest.raises(infer.InferenceError, match=r"is one run; a seed is chosen among the runs"):
        infer.checkpoint_files(folder / "seed0/model.pt", seed=0)
    with pytest.raises(infer.InferenceError, match=r"neither a model.pt nor a folder holding one or a summary.json"):
        infer.checkpoint_files(workdir / "results/iemocap_demo")
    # A dataset's folder also holds a summary.json (a KeyError: 'seeds' before), and a damaged one is named.
    with pytest.raises(infer.InferenceError, match=r"features/iemocap_demo/summary.json is a dataset's summary "
                                                   r"\(features/\{dataset\}/ or an import-pickle folder\), not a "
                                                   r"results folder's: --checkpoint takes a run's model.pt"):
        infer.checkpoint_files(workdir / "features/iemocap_demo")
    # A seed trained again after the summary (a killed re-run, a target of the experiment alone) was used silently
    # in place of the run the summary, or a selection copying it, had ranked.
    copy = tmp_path / "project/results/iemocap_demo/iemocap_demo_sdt"
    shutil.copytree(folder, copy)
    assert json.loads((copy / "summary.json").read_text())["run_metrics_sha256"]
    assert infer.checkpoint_files(copy) == [copy / f"seed{s}/model.pt" for s in seeds]
    retrained = copy / f"seed{seeds[0]}/metrics.json"
    retrained.write_text(retrained.read_text().replace('"seed"', '"seed" ', 1))
    with pytest.raises(infer.InferenceError, match=rf"seed{seeds[0]} was trained again after .*iemocap_demo_sdt/"
                                                   r"summary.json was written, so it is not the run iemocap_demo_sdt's "
                                                   r"results describe .*run Snakemake again"):
        infer.checkpoint_files(copy)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut/summary.json").write_text('{"seeds": [0],\n')
    with pytest.raises(infer.InferenceError, match=r"cut/summary.json cannot be read as JSON \(.*line 2.*\); it is "
                                                   r"damaged"):
        infer.checkpoint_files(tmp_path / "cut")


def test_a_selected_ensemble_whose_member_was_trained_again_is_refused(trained, tmp_path, monkeypatch):
    """A member's summary.json is written again when one of its seeds is re-trained (a target of that experiment
    alone), and predict took the new run's digest from it: the selection's ensemble was then predicted with a run it
    had never averaged, without a word. The runs it averaged are recorded in the selection."""
    from ercpipe.io.digest import file_digest
    from ercpipe.train.selection import select_experiment

    project = tmp_path / "project"
    shutil.copytree(trained["workdir"] / "results/iemocap_demo", project / "results/iemocap_demo")
    monkeypatch.chdir(project)
    # Members need the same seeds: the VEGA experiment and a copy of it under another name.
    names = ("iemocap_demo_sdt_vega", "twin")
    shutil.copytree("results/iemocap_demo/iemocap_demo_sdt_vega", "results/iemocap_demo/twin")
    twin = json.loads(Path("results/iemocap_demo/twin/summary.json").read_text())
    twin["runs"] = [run.replace("iemocap_demo_sdt_vega", "twin") for run in twin["runs"]]
    Path("results/iemocap_demo/twin/summary.json").write_text(json.dumps(twin))
    summaries = {name: Path(f"results/iemocap_demo/{name}/summary.json") for name in names}
    select_experiment(summaries, "results/iemocap_demo/picked", ensemble=2)
    picked = project / "results/iemocap_demo/picked"
    # Whether the ensemble wins the demo's dev scores is not this test's point: make it the winner.
    written = json.loads((picked / "summary.json").read_text())
    assert set(written["selection"]["ensembles"]["ensemble_top2"]["member_runs"]) == set(names)
    written["selection"]["chosen"] = "ensemble_top2"
    (picked / "summary.json").write_text(json.dumps(written))
    seeds = json.loads(summaries[names[1]].read_text())["seeds"]
    assert len(infer.checkpoint_files(picked)) == 2 * len(seeds)
    # The twin's first seed trained again, and its summary aggregated again with the new run.
    metrics = project / f"results/iemocap_demo/{names[1]}/seed{seeds[0]}/metrics.json"
    metrics.write_text(metrics.read_text().replace('"seed"', '"seed" ', 1))
    member = json.loads(summaries[names[1]].read_text())
    member["run_metrics_sha256"][0] = file_digest(metrics)
    summaries[names[1]].write_text(json.dumps(member))
    with pytest.raises(infer.InferenceError, match=rf"twin/seed{seeds[0]} was trained again after "
                                                   r".*picked/summary.json was written, so it is not the run "
                                                   r"twin's results describe .*run Snakemake again to "
                                                   r"bring .*picked up to date"):
        infer.checkpoint_files(picked)
    for other in seeds[1:]:  # the other seeds' runs are still those averaged
        assert infer.checkpoint_files(picked, seed=other) == [
            project / f"results/iemocap_demo/{name}/seed{other}/model.pt" for name in names]


def test_an_ensemble_of_models_on_other_features_predicts_a_conversation_with_each_ones_features(trained, tmp_path):
    """Members of a selection's ensemble may read other text settings (plain / speaker context, other fine-tuned
    encoders): each kind is extracted once, and the mean of the members' probabilities is the prediction."""
    payload = torch.load(trained["checkpoint"], weights_only=True)
    text = payload["features"]["text"]
    short = {**text, "settings": {**text["settings"], "max_length": 8}}
    short["setting_hash"] = feature_io.settings_hash(short["settings"])
    summaries = []
    for name, features in (("full", payload["features"]), ("short", {**payload["features"], "text": short})):
        (tmp_path / f"results/meld_demo/{name}/seed0").mkdir(parents=True)
        torch.save({**payload, "features": features}, tmp_path / f"results/meld_demo/{name}/seed0/model.pt")
        summaries.append(tmp_path / f"results/meld_demo/{name}/summary.json")
        run = str(tmp_path / f"results/meld_demo/{name}/seed0")
        summaries[-1].write_text(json.dumps({"seeds": [0], "runs": [run]}))
    selection = tmp_path / "results/meld_demo/picked"
    selection.mkdir()
    (selection / "summary.json").write_text(json.dumps({"seeds": [0], "runs": ["ensemble"], "selection": {
        "chosen": "ensemble_top2", "ensembles": {"ensemble_top2": {"members": ["full", "short"],
                                                                    "summaries": [str(s) for s in summaries]}}}}))
    rows = manifest_io.read(trained["manifest"])
    rows = rows[rows["split"] == "test"]
    path = tmp_path / "talk.csv"
    pd.DataFrame({"dialogue_id": rows["dialogue_id"], "utterance_id": rows["utterance_id"], "speaker": rows["speaker"],
                  "text": rows["text"]}).to_csv(path, index=False)
    alone = [infer.predict_conversation(tmp_path / f"results/meld_demo/{name}", path) for name in ("full", "short")]
    assert not np.allclose(_probabilities(alone[0]), _probabilities(alone[1]), atol=1e-6)  # other text features
    frame = infer.predict_conversation(selection, path, work_dir=tmp_path / "work")
    np.testing.assert_allclose(_probabilities(frame), (_probabilities(alone[0]) + _probabilities(alone[1])) / 2,
                               atol=1e-6)
    assert frame["prediction"].tolist() == [c[len("prob_"):] for c in
                                            frame.filter(like="prob_").idxmax(axis=1)]
    # One extraction per kind of features: the first where a single model keeps them, the second beside it.
    assert (tmp_path / "work/features").is_dir() and (tmp_path / "work/models2/features").is_dir()


def test_a_feature_file_only_some_ensemble_members_read_is_not_called_unread(tmp_path, monkeypatch, caplog):
    """--manifest with an ensemble whose members read other modalities warned, per member, that the files the
    other members read were "not read"."""
    reads = {"text_model": {"text"}, "audio_model": {"text", "audio"}}

    def one(checkpoint, manifest, features, splits, device, batch_size, loaded=None, unread=None):
        unread.append(set(features) - reads[checkpoint.name])
        return pd.DataFrame({"utterance_id": ["u0"], "prob_a": [1.0]})

    monkeypatch.setattr(infer, "checkpoint_files", lambda checkpoint, seed: [Path(name) for name in reads])
    monkeypatch.setattr(infer, "_predict_features_one", one)
    monkeypatch.setattr(infer, "_averaged", lambda frames, names: frames[0])
    given = {"text": "t.h5", "audio": "a.h5", "visual": "v.h5"}
    with caplog.at_level("WARNING"):
        infer.predict_features(tmp_path / "picked", tmp_path / "manifest.tsv", given)
    assert "the ['visual'] feature file(s) given are read by none of its model(s)" in caplog.text
    assert "audio" not in caplog.text


def _test_split_as_a_conversation(trained, path: Path) -> pd.DataFrame:
    """The pipeline's test utterances written to `path` as a raw conversation (media paths, no labels)."""
    rows = manifest_io.read(trained["manifest"])
    rows = rows[rows["split"] == "test"]
    workdir = trained["workdir"]
    conversation = pd.DataFrame({
        "dialogue_id": rows["dialogue_id"], "utterance_id": rows["utterance_id"], "speaker": rows["speaker"],
        "text": rows["text"],
        "audio_path": [str(workdir / p) if p else "" for p in rows["audio_path"]],
        "video_path": [str(workdir / p) if p else "" for p in rows["video_path"]]})
    conversation.to_csv(path, index=False)
    return conversation


def test_a_new_raw_conversation_gets_the_same_predictions_as_the_pipeline(trained, tmp_path, caplog):
    """Media + transcript in, emotions out: the checkpoint's extractors run again and agree exactly."""
    path = tmp_path / "talk.csv"
    conversation = _test_split_as_a_conversation(trained, path)
    expected = infer.predict_features(trained["checkpoint"], trained["manifest"], trained["features"], splits=["test"])
    with caplog.at_level("WARNING"):
        frame = infer.predict_conversation(trained["checkpoint"], path, tmp_path / "out.tsv",
                                           work_dir=tmp_path / "work")
    assert frame["utterance_id"].tolist() == expected["utterance_id"].tolist()
    assert frame["prediction"].tolist() == expected["prediction"].tolist()
    np.testing.assert_allclose(_probabilities(frame), _probabilities(expected), atol=1e-4)
    assert (frame["label"] == "").all()  # the conversation carried no labels
    # The clip without an audio track is recorded, not dropped, as in the pipeline.
    silent = frame["flags"].str.contains("no_audio_stream")
    assert silent.sum() == 1 and frame.loc[silent, "absent"].iat[0] == "audio"
    # ... and said, with the conversation file's line and the reader's reason (the staged copy is not named).
    line = 2 + conversation["utterance_id"].tolist().index(frame.loc[silent, "utterance_id"].iat[0])
    assert f"{path}, line {line}: utterance {frame.loc[silent, 'utterance_id'].iat[0]}: no_audio_stream" in caplog.text
    assert "conversation.csv" not in caplog.text
    # What training cannot learn is no news when predicting (the labels are empty, the speakers new).
    assert "have no training utterance" not in caplog.text and "occur only outside training" not in caplog.text
    assert frame["absent"].tolist() == expected["absent"].tolist()
    written = pd.read_csv(tmp_path / "out.tsv", sep="\t", keep_default_na=False)
    assert written["prediction"].tolist() == frame["prediction"].tolist()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl_c"])
def test_a_conversation_stopped_leaves_no_working_files(trained, tmp_path, stop):
    """`kill`, `timeout` and `scancel` send SIGTERM, Ctrl-C SIGINT: the command stops with one line, and its
    working folder (a copy of the conversation, the utterances' audio) does not stay in TMPDIR."""
    path = tmp_path / "talk.csv"
    _test_split_as_a_conversation(trained, path)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    command = [str(Path(sys.executable).with_name("ercpipe")), "predict", "--checkpoint", str(trained["checkpoint"]),
               "--conversation", str(path), "--out", str(tmp_path / "out.tsv")]
    # torch keeps its per-user cache folder in TMPDIR (made when transformers imports torch._dynamo) unless a
    # process imported it before: this test's own may have, and its environment would carry the folder's path.
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    process = subprocess.Popen(command, env={**env, "TMPDIR": str(tmp)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    # Stopped once the conversation's audio is being cut: the working folder holds files, openSMILE is loaded.
    while not list(tmp.glob("ercpipe-infer-*/**/*.wav")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None and time.monotonic() < deadline, "no WAV appeared while predict ran"
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + stop, stderr[-2000:]
    assert f"ercpipe: stopped by {'SIGTERM' if stop == signal.SIGTERM else 'SIGINT (Ctrl-C)'}" in stderr
    assert "Traceback" not in stderr, stderr[-2000:]
    # openSMILE's config stays in its one folder per user (ercpipe.features.audio._stream_source_conf), and so
    # does torch's cache folder.
    kept = {f"ercpipe-opensmile-{os.getuid()}", f"torchinductor_{getpass.getuser()}"}
    assert {p.name for p in tmp.iterdir()} <= kept
    assert not (tmp_path / "out.tsv").exists()


def test_a_minimal_transcript_without_ids_or_media(trained, tmp_path, caplog):
    model_classes = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
    path = tmp_path / "chat.csv"
    path.write_text("speaker,text,label\nAnn,I can't believe you did that!,anger\nBob,Oh wow that's great,joy\n"
                    "Ann,,\n")
    with caplog.at_level("INFO", logger="ercpipe"):
        frame = infer.predict_conversation(trained["checkpoint"], path)
    # The extractors' lines name the user's file, not the staged copy in a folder deleted when predict ends.
    assert f"utterance audio of {path}: 3 of 3 rows without audio" in caplog.text
    assert "ercpipe-infer-" not in caplog.text, caplog.text
    caplog.clear()
    assert frame["utterance_id"].tolist() == ["chat_u000", "chat_u001", "chat_u002"]
    assert frame["label"].tolist() == ["anger", "joy", ""]
    assert set(frame["prediction"]) <= set(model_classes)
    assert frame["flags"].str.contains("missing_audio").all() and frame["flags"].str.contains("no_video").all()
    assert "empty_text" in frame["flags"].iat[2]
    assert frame["absent"].tolist() == ["audio;visual", "audio;visual", "text;audio;visual"]
    # A reader warning names the user's file, not the staged copy that is deleted when the command ends.
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("dialogue_id,speaker,text\nd1,Ann,hi\nd2,Bob,hello\nd1,Bob,bye\nd2,Ann,yo\n")
    with caplog.at_level("WARNING"):
        predicted = infer.predict_conversation(trained["checkpoint"], mixed)
    assert f"csv {mixed}: the rows of 2 dialogue(s) are not next to each other" in caplog.text
    # The rows come back in the file's order (they came grouped by dialogue), each dialogue numbered in itself.
    assert predicted["utterance_id"].tolist() == ["d1_u000", "d2_u000", "d1_u001", "d2_u001"]
    assert predicted["speaker"].tolist() == ["Ann", "Bob", "Bob", "Ann"]
    assert predicted["flags"].str.contains("scattered_dialogue").all()
    assert "conversation.csv" not in caplog.text


def test_generated_utterance_ids_are_numbered_within_each_dialogue(tmp_path):
    path = tmp_path / "talk.csv"
    path.write_text("dialogue_id,speaker,text\nd1,Ann,hi\nd1,Bob,hello\nd2,Ann,bye\n,Cy,yo\n")
    rows = infer.read_conversation(path, ["joy", "anger"]).rows
    assert rows["utterance_id"].tolist() == ["d1_u000", "d1_u001", "d2_u000", "talk_u000"]


def test_an_iemocap_model_gives_a_known_speaker_its_training_slot(pipeline_run, tmp_path, caplog):
    """IEMOCAP's slots are 0 = the male, 1 = the female actor, not the order of first appearance: a conversation
    without a speaker_slot column used to swap them for about half the rows, silently."""
    workdir = pipeline_run[0]
    checkpoint = workdir / "results/iemocap_demo/iemocap_demo_sdt_vega/seed0/model.pt"
    manifest = workdir / "features/iemocap_demo/manifest.tsv"
    rows = manifest_io.read(manifest)
    rows = rows[rows["split"] == "test"]
    by_first_appearance = rows.groupby("dialogue_id", sort=False)["speaker"].transform(
        lambda names: names.map({n: i for i, n in enumerate(dict.fromkeys(names))}))
    assert (by_first_appearance != rows["speaker_slot"]).any()  # the case that went wrong
    conversation = pd.DataFrame({
        "dialogue_id": rows["dialogue_id"], "utterance_id": rows["utterance_id"], "speaker": rows["speaker"],
        "text": rows["text"], "audio_path": [str(workdir / p) if p else "" for p in rows["audio_path"]],
        "audio_start": rows["audio_start"], "audio_end": rows["audio_end"],
        "video_path": [str(workdir / p) if p else "" for p in rows["video_path"]],
        "video_start": rows["video_start"], "video_end": rows["video_end"]})
    conversation.to_csv(tmp_path / "talk.csv", index=False)
    features = {m: workdir / f"features/iemocap_demo/{m}/{s}.h5"
                for m, s in (("text", "minilm"), ("audio", "is10"), ("visual", "densenet121"))}
    expected = infer.predict_features(checkpoint, manifest, features, splits=["test"])
    with caplog.at_level("INFO"):
        frame = infer.predict_conversation(checkpoint, tmp_path / "talk.csv", work_dir=tmp_path / "work")
    assert "speaker slots from the training data's table" in caplog.text
    assert frame["prediction"].tolist() == expected["prediction"].tolist()
    np.testing.assert_allclose(_probabilities(frame), _probabilities(expected), atol=1e-4)
    # Faces were picked by side from the letter ending each name: "Pam" (a woman) would get the man's face.
    rows = conversation.iloc[:2].assign(speaker=["Pam", "Rolf"])
    rows.to_csv(tmp_path / "names.csv", index=False)
    with pytest.raises(infer.InferenceError, match=r"names.csv: the model picks each speaker's face by the side of the "
                                                   r"frame \(F: left, M: right\).*\['Pam', 'Rolf'\] do not end in"):
        infer.predict_conversation(checkpoint, tmp_path / "names.csv", work_dir=tmp_path / "refused")
    assert not (tmp_path / "refused" / "features").exists()  # refused before any extraction
    # Speakers named by the letter alone: the training table's rule (M = 0, F = 1), not first appearance.
    caplog.clear()
    rows = conversation.iloc[:4].assign(speaker=lambda f: f["speaker"].str[-1])
    rows.to_csv(tmp_path / "letters.csv", index=False)
    with caplog.at_level("INFO"):
        predicted = infer.predict_conversation(checkpoint, tmp_path / "letters.csv", work_dir=tmp_path / "letters")
    assert "speaker slots by the letter ending each name" in caplog.text
    # The output says which slot each utterance's speaker was given.
    assert predicted["speaker"].tolist() == rows["speaker"].tolist()
    assert predicted["speaker_slot"].tolist() == [{"M": 0, "F": 1}[k] for k in rows["speaker"]]


def test_a_marked_actor_model_needs_iemocap_dialogue_ids_before_any_extraction(tmp_path):
    path = tmp_path / "talk.csv"
    path.write_text("speaker,text\nSes01_F,hi\nSes01_M,hello\n")
    rule = {"mode": "side", "marked_actor": "left"}
    with pytest.raises(infer.InferenceError, match=r"talk.csv: the model picks faces by which actor wears the "
                                                   r"motion-capture markers.*\['talk'\] are not such ids: add a "
                                                   r"dialogue_id column"):
        infer.conversation_manifest(path, ["hap", "sad"], tmp_path, modalities=["text"], face_selection=rule)
    path.write_text("dialogue_id,speaker,text\nSes01M_impro01,Ses01_F,hi\nSes01M_impro01,Jim M,hello\n")
    infer.conversation_manifest(path, ["hap", "sad"], tmp_path, modalities=["text"], face_selection=rule)


def test_speakers_a_fixed_slot_table_does_not_know_are_warned_about(tmp_path, caplog):
    path = tmp_path / "new.csv"
    path.write_text("speaker,text\nAnn,I am so happy\nBob,me too\n")
    with caplog.at_level("WARNING"):
        infer.conversation_manifest(path, ["hap", "sad"], tmp_path, modalities=["text"], n_speakers=2,
                                    speaker_slots={"Ses01_F": 1, "Ses01_M": 0})
    assert "trained with a fixed slot per speaker (e.g. Ses01_F=1" in caplog.text
    assert "Give a speaker_slot column" in caplog.text


@pytest.mark.parametrize("table", [{"Ses01_F": 1, "Ses01_M": 0}, {"Ses01_F": 1, "Ses01_M": 0, "Joey": 2}])
def test_known_speakers_keep_their_training_slot_beside_unknown_ones(tmp_path, caplog, table):
    """One unknown speaker in a file used to send every speaker to first-appearance slots: Ses01_M (slot 0 in
    training) became 1, the female actor's. Known speakers, by name or by the letter the table follows, keep their
    slots; the unknown take the lowest free ones per dialogue."""
    path = tmp_path / "mixed.csv"
    path.write_text("dialogue_id,speaker,text\n"
                    "d1,Alice,hello\nd1,Ses01_M,hi\nd1,Bob,hey\n"
                    "d2,Ses02_F,so glad\nd2,Alice,me too\n"
                    "d3,Carol,who\nd3,Dan,knows\n")
    with caplog.at_level("INFO"):
        manifest = infer.conversation_manifest(path, ["hap", "sad"], tmp_path, modalities=["text"], n_speakers=9,
                                               speaker_slots=table)
    frame = manifest_io.read(manifest)
    if "Joey" in table:  # a table that no letter rule explains: Ses02_F is unknown too
        expected = [1, 0, 2, 0, 1, 0, 1]
    else:
        expected = [1, 0, 2, 1, 0, 0, 1]
    assert frame["speaker_slot"].tolist() == expected
    assert "speaker slots from the training data's table (Ses01_M=0)" in caplog.text
    assert "are not in the training data's slot table; in each dialogue they take the slots" in caplog.text
    assert ("by the letter ending each name" in caplog.text) == ("Joey" not in table)
    assert "one slot are in one dialogue" not in caplog.text
    # Two known speakers of one slot in a dialogue are one speaker to the model: said.
    path.write_text("dialogue_id,speaker,text\nd1,Ses01_M,hello\nd1,Ses01_M,hi\nd1,Joey,hey\nd2,Joey,yo\n")
    table = {**table, "Joey": 0}
    caplog.clear()
    with caplog.at_level("INFO"):
        manifest = infer.conversation_manifest(path, ["hap", "sad"], tmp_path, modalities=["text"], n_speakers=9,
                                               speaker_slots=table)
    assert manifest_io.read(manifest)["speaker_slot"].tolist() == [0, 0, 0, 0]
    assert "speakers that the training data's table gives one slot are in one dialogue (d1: Joey, Ses01_M)" in \
        caplog.text


def test_cells_are_keyed_as_the_reader_keys_them(tmp_path):
    """"Ses05_F " (a spreadsheet's trailing space) took the male actor's slot while the output showed "Ses05_F", and a
    face-by-side model refused it; an id " a1 " or one spelt with a combining accent (as macOS writes file names)
    crashed predict after the whole extraction, when the rows were put back in the file's order."""
    accent = "Re\u0301ne_1"  # "Réne_1" spelt "e" + a combining mark
    path = tmp_path / "Cafe\u0301.csv"
    path.write_text(f"utterance_id,speaker,text\n a1 ,Ses05_F ,hello\n{accent},Ses05_M,hi\n,Ses05_F,bye\n",
                    encoding="utf-8")
    rows = infer.read_conversation(path, ["hap", "sad"]).rows
    assert rows["speaker"].tolist() == ["Ses05_F", "Ses05_M", "Ses05_F"]
    assert rows["utterance_id"].tolist() == ["a1", "R\u00e9ne_1", "Caf\u00e9_u002"]
    side = {"mode": "side", "sides": {"F": "left", "M": "right"}}
    manifest = infer.conversation_manifest(path, ["hap", "sad"], tmp_path, modalities=["text"], n_speakers=2,
                                           speaker_slots={"Ses01_F": 1, "Ses01_M": 0}, face_selection=side)
    frame = manifest_io.read(manifest)
    assert frame["speaker_slot"].tolist() == [1, 0, 1]  # the table's letter rule: F 1, M 0
    assert frame["utterance_id"].tolist() == rows["utterance_id"].tolist()


def test_quoted_text_over_lines_with_commas_is_read_and_an_open_quote_still_refused(tmp_path, caplog):
    """What pandas or a spreadsheet writes for a text with a line break: its second line holds a comma, so in a
    two-column file it parsed as a row, and the file was refused as having a quote "not closed"."""
    path = tmp_path / "talk.csv"
    path.write_text('speaker,text\nAnn,"Well, I have to finish\nthe report, by Monday."\nBob,ok\n')
    with caplog.at_level("WARNING"):
        rows = infer.read_conversation(path, ["hap", "sad"]).rows
    assert rows["speaker"].tolist() == ["Ann", "Bob"]
    assert rows["text"].tolist() == ["Well, I have to finish\nthe report, by Monday.", "ok"]
    assert "line 2: the quoted text field that starts on this line runs to line 3, and its line 'the report, by " \
           "Monday.' reads like a row of the file; it is taken as text" in caplog.text
    # A quote left open, closed by a stray one further down: the line it swallowed names a speaker of the file.
    path.write_text('speaker,text\nAnn,"Well, I\nBob,no way"\nAnn,fine\nBob,ok\n')
    with pytest.raises(infer.InferenceError, match=r"talk.csv, line 2: the quoted text field .* holds what looks like "
                                                   r"a row \('Bob,no way'\): a quote on line 2 is not closed"):
        infer.read_conversation(path, ["hap", "sad"])


def test_a_text_model_reads_no_media_and_an_unlabelled_conversation_warns_of_no_class(tmp_path, caplog):
    """Only the model's modalities are looked for; the placeholder labels of an unlabelled file are no labels."""
    (tmp_path / "chat.csv").write_text("speaker,text\nAnn,hello\nBob,hi\n")
    with caplog.at_level("WARNING"):
        path = infer.conversation_manifest(tmp_path / "chat.csv", ["neutral", "joy", "anger"], tmp_path, ("text",))
    frame = manifest_io.read(path)
    assert (frame["flags"] == "").all() and (frame["label"] == "").all()
    assert "label no row" not in caplog.text
    (tmp_path / "all").mkdir()
    full = infer.conversation_manifest(tmp_path / "chat.csv", ["neutral", "joy"], tmp_path / "all",
                                       ("text", "audio", "visual"))
    assert manifest_io.read(full)["flags"].str.contains("missing_audio").all()


def test_a_conversations_utterance_index_orders_it_as_the_csv_reader_does(tmp_path):
    """A manifest CSV reused as the conversation: its utterance_index was ignored with an INFO line, so the model
    read the dialogue in file order, with other neighbours as context than the pipeline gave it."""
    (tmp_path / "chat.csv").write_text("speaker,text,utterance_index\nBob,second,1\nAnn,first,0\nAnn,third,2\n")
    frame = manifest_io.read(infer.conversation_manifest(tmp_path / "chat.csv", ["neutral", "joy"], tmp_path,
                                                         ("text",)))
    assert frame["text"].tolist() == ["first", "second", "third"]
    # A cell over two lines of the file: the lines named are the file's, not the staged copy's (2, 3, 4).
    (tmp_path / "half.csv").write_text('speaker,text,utterance_index\nBob,"second\nline two",1\nAnn,first,\n'
                                       "Ann,third,2\n")
    with pytest.raises(infer.InferenceError, match=r"half.csv: dialogue half \(lines 2, 4, 5\): utterance_index must "
                                                   r"be given for every row"):
        infer.conversation_manifest(tmp_path / "half.csv", ["neutral", "joy"], tmp_path, ("text",))


def test_a_conversation_line_that_is_not_utf8_is_flagged_as_the_csv_reader_flags_it(tmp_path, caplog):
    """The staged copy is UTF-8, so the reader saw nothing to repair and the row lost its text_fixed flag."""
    (tmp_path / "old.csv").write_bytes(b"speaker,text\nAnn,How\x92d it go?\nBob,fine\n")
    with caplog.at_level("WARNING"):
        frame = manifest_io.read(infer.conversation_manifest(tmp_path / "old.csv", ["neutral", "joy"], tmp_path,
                                                             ("text",)))
    assert frame["text"].tolist() == ["How\u2019d it go?", "fine"]
    assert frame["flags"].tolist() == ["text_fixed", ""]
    assert f"{tmp_path / 'old.csv'}, line 2: utterance old_u000: not UTF-8, read as cp1252" in caplog.text


def test_a_conversation_column_in_other_capitals_is_refused_and_label_cells_are_stripped(tmp_path, caplog):
    """"Dialogue_ID" was ignored with an INFO line: two conversations were predicted as one and "Label" dropped the
    labels, silently. A spreadsheet's " joy" was refused although every other cell is stripped."""
    path = tmp_path / "talk.csv"
    for header, column in (("Dialogue_ID,speaker,text", "Dialogue_ID"), ("dialogue id,speaker,text", "dialogue id"),
                           ("dialogue_id,speaker,text,Label", "Label")):
        path.write_text(header + "\n" + "\n".join(["d1,Ann,hi", "d2,Bob,hey"]) + (",joy\n" if "Label" in header
                                                                                 else "\n"))
        meant = column.lower().replace(" ", "_")
        with pytest.raises(infer.InferenceError, match=rf"talk.csv: column '{column}' is not read \(column names are "
                                                       rf"lower case\); rename it to '{meant}'"):
            infer.read_conversation(path, ["neutral", "joy"])
    path.write_text("speaker,text,label,Notes\nAnn,hi, joy \nBob,hey,neutral\n")
    with caplog.at_level("INFO"):
        conversation = infer.read_conversation(path, ["neutral", "joy"])
    assert conversation.rows["label"].tolist() == ["joy", "neutral"]
    path.write_text("speaker,text,label\nAnn,hi,Neutral\n")
    with pytest.raises(infer.InferenceError, match=r"line 2: label 'Neutral' is not one of the model's classes "
                                                   r"\['neutral', 'joy'\] \(it differs from 'neutral' only in case\)"):
        infer.read_conversation(path, ["neutral", "joy"])
    assert "ignoring column(s) ['Notes']" in caplog.text  # a column of the user's own is only mentioned
    with pytest.raises(infer.InferenceError, match=r"conversation file .* is a folder; give a CSV"):
        infer.read_conversation(tmp_path, ["neutral", "joy"])


def test_a_fine_tuned_encoder_recorded_relative_to_the_project_is_found_from_any_folder(tmp_path, monkeypatch):
    """Text features record their fine-tuned encoder relative to the pipeline folder (features/{dataset}/encoders/
    ...): predicting a conversation from outside that folder stopped, saying the encoder does not exist."""
    from ercpipe.testing.tiny_models import write_tiny_roberta

    project = tmp_path / "project"
    write_tiny_roberta(project / "features/d/encoders/ft0", ["hello there", "so happy today", "I am angry"] * 4)
    run = project / "results/d/exp/seed0/model.pt"
    run.parent.mkdir(parents=True)
    run.write_bytes(b"")
    assert infer.checkpoint_project(run) == project.resolve()
    assert infer.checkpoint_project(tmp_path / "model.pt") is None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (elsewhere / "talk.csv").write_text("speaker,text\nAnn,hello there\nBob,so happy\n")
    manifest = infer.conversation_manifest(elsewhere / "talk.csv", ["neutral", "joy"], elsewhere, ("text",))
    sources = {"text": {"extractor": "transformers", "encoder_dir": "features/d/encoders/ft0",
                        "settings": {"model": "packaged:minilm", "pooling": "mean"}}}
    with pytest.raises(infer.InferenceError, match=r"fine-tuned encoder features/d/encoders/ft0, which does not "
                                                   r"exist here; run the pipeline again"):
        infer.extract_conversation_features(manifest, sources, ["text"], elsewhere / "f", device="cpu")
    paths = infer.extract_conversation_features(manifest, sources, ["text"], elsewhere / "g", device="cpu",
                                                project=infer.checkpoint_project(run))
    assert feature_io.read(paths["text"]).features.shape == (2, 32)  # the tiny encoder's width, not MiniLM's 384
    # Run from another project holding an encoder of the same name: the checkpoint's own is taken, not this one.
    write_tiny_roberta(elsewhere / "features/d/encoders/ft0", ["something else entirely"] * 4, hidden_size=16)
    paths = infer.extract_conversation_features(manifest, sources, ["text"], elsewhere / "h", device="cpu",
                                                project=infer.checkpoint_project(run))
    assert feature_io.read(paths["text"]).features.shape == (2, 32)


def test_files_the_settings_name_relative_to_the_project_are_taken_from_the_checkpoints_project(tmp_path,
                                                                                                  monkeypatch):
    """A visual `weights` file or a local text `model` folder written relative to the project was looked up under
    the current folder: from elsewhere predict failed saying the config is wrong, and from another project holding
    a file of the same name it predicted with that file's weights, silently. results/ may be a link to scratch.
    The setting keeps its spelling (its hash is what the checkpoint compares the new features with)."""
    import torchvision

    from ercpipe.features.visual import load_embedder
    from ercpipe.io.digest import file_digest
    from ercpipe.testing.tiny_models import write_tiny_roberta

    project, scratch, elsewhere = tmp_path / "project", tmp_path / "scratch", tmp_path / "elsewhere"
    (scratch / "d/exp/seed0").mkdir(parents=True)
    (scratch / "d/exp/seed0/model.pt").write_bytes(b"")
    (project / "models").mkdir(parents=True)
    (project / "results").symlink_to(scratch)
    torch.save(torchvision.models.densenet121(weights=None).state_dict(), project / "models/dn.pth")
    write_tiny_roberta(project / "models/tiny", ["hello there", "so happy today", "I am angry"] * 4)
    (elsewhere / "models").mkdir(parents=True)
    (elsewhere / "models/dn.pth").write_bytes(b"another project's weights")
    monkeypatch.chdir(elsewhere)
    run = project / "results/d/exp/seed0/model.pt"
    assert infer.checkpoint_project(run) == project  # the link's side, not the scratch folder's
    # Text, end to end from another folder: the project's model is read, the setting as recorded is stored.
    (elsewhere / "talk.csv").write_text("speaker,text\nAnn,hello there\nBob,so happy\n")
    manifest = infer.conversation_manifest(elsewhere / "talk.csv", ["neutral", "joy"], elsewhere, ("text",))
    recorded_text = {"model": "models/tiny", "pooling": "mean"}
    paths = infer.extract_conversation_features(manifest, {"text": {"extractor": "text", "settings": recorded_text}},
                                                ["text"], elsewhere / "f", device="cpu", project=project)
    written = feature_io.read(paths["text"])
    assert written.features.shape == (2, 32)  # the tiny model's width
    settings = written.attrs["settings"]
    assert (json.loads(settings) if isinstance(settings, str) else settings)["model"] == "models/tiny"
    with pytest.raises(infer.InferenceError, match=r"model folder models/r/gone \(features.text.\*.model\), which "
                                                   r"exists neither under .*project nor under the current folder"):
        infer._check_text_model("models/r/gone", project)  # (models/gone would be a hub id)
    # The features record the model's files' digest; another model saved in that folder was used silently.
    recorded = {"model_sha256": written.attrs["model_sha256"]}
    assert len(recorded["model_sha256"]) == 16 and written.attrs["model_commit"] == ""
    infer._check_text_identity("models/tiny", None, recorded, project)
    infer._check_text_identity("models/tiny", None, {}, project)  # a checkpoint from before: nothing to compare
    write_tiny_roberta(project / "models/tiny", ["other words entirely", "and more"] * 6)
    with pytest.raises(infer.InferenceError, match=r"text model .*project/models/tiny is not the one the model's "
                                                   r"text features were made with \(files' digest \w+ recorded, \w+ "
                                                   r"here\)"):
        infer._check_text_identity("models/tiny", None, recorded, project)
    infer._check_text_model("packaged:minilm", project)
    # Visual: the embedder loads the project's file, and one that differs from the recorded digest is refused.
    embedder = load_embedder({"backbone": "densenet121", "weights": "models/dn.pth"}, "cpu", base_dir=project)
    assert embedder.weights_source.startswith(str(project / "models/dn.pth"))
    recorded = f"models/dn.pth (sha256 {file_digest(project / 'models/dn.pth')})"
    infer._check_visual_weights("models/dn.pth", recorded, project)
    with pytest.raises(infer.InferenceError, match=r"weights file models/dn.pth is not the one the model's visual "
                                                   r"features were made with \(sha256 \w+ recorded, \w+ here\)"):
        infer._check_visual_weights("models/dn.pth", recorded, None)  # a copied model.pt: the current folder's
    with pytest.raises(infer.InferenceError, match=r"weights file models/other.pth \(features.visual.\*.weights\), "
                                                   r"which exists neither under .*project nor under the current"):
        infer._check_visual_weights("models/other.pth", None, project)
    with pytest.raises(infer.InferenceError, match=r"weights file /nowhere/dn.pth .*, which does not exist;"):
        infer._check_visual_weights("/nowhere/dn.pth", None, project)


def test_every_model_file_is_checked_before_any_extraction(tmp_path):
    """A wrong face-embedding file is found before the audio is cut and its features computed (it used to be found
    after them, minutes later on a long recording)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models/dn.pth").write_bytes(b"not the weights the features were made with")
    sources = {"audio": {"extractor": "opensmile", "settings": {"feature_set": "IS10", "level": "functionals"}},
               "visual": {"extractor": "mtcnn+densenet121",
                          "settings": {"backbone": "densenet121", "weights": "models/dn.pth"},
                          "weights_source": "models/dn.pth (sha256 0123456789abcdef)"}}
    with pytest.raises(infer.InferenceError, match=r"weights file .*models/dn.pth is not the one"):
        infer.extract_conversation_features(tmp_path / "no_manifest.tsv", sources, ["audio", "visual"],
                                            tmp_path / "work", device="cpu", project=tmp_path)
    assert not (tmp_path / "work").exists()


def test_conversation_errors_name_the_problem(trained, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("who,text\nAnn,hello\n")
    with pytest.raises(infer.InferenceError, match=r"bad.csv: header lacks column\(s\) \['speaker'\]"):
        infer.predict_conversation(trained["checkpoint"], bad)
    # An unquoted comma in the text: refused naming the line, never read with shifted columns.
    bad.write_text("speaker,text\nAnn,Well, I am angry\nBob,fine\n")
    with pytest.raises(infer.InferenceError, match=r"bad.csv, line 2: 3 fields but the header has 2"):
        infer.predict_conversation(trained["checkpoint"], bad)
    bad.write_text("speaker\nAnn\nBob\n")  # the model reads text
    with pytest.raises(infer.InferenceError, match=r"bad.csv: the model reads text, but the file has no 'text' column"):
        infer.predict_conversation(trained["checkpoint"], bad)
    # The reader's errors name the user's file and line, not the staged copy.
    bad.write_text('speaker,text,utterance_id\nAnn,"two\nlines",a\nBob,hey,a\n')
    with pytest.raises(infer.InferenceError, match=r"bad.csv, line 4: utterance_id 'a' already used on line 2"):
        infer.predict_conversation(trained["checkpoint"], bad)
    bad.write_text("speaker,text\n" + "".join(f"S{k},hi\n" for k in range(12)))
    with pytest.raises(infer.InferenceError, match=r"bad.csv: dialogue bad has 12 speakers, but the model was "
                                                   r"trained with \d+ speaker slots"):
        infer.predict_conversation(trained["checkpoint"], bad)
    # A slot the file gives was said to be the dialogue's count of speakers (2 speakers, slot 40: "41 speakers").
    bad.write_text("speaker,text,speaker_slot\nAnn,hello,0\nBob,hi,40\n")
    with pytest.raises(infer.InferenceError, match=r"bad.csv, line 3: speaker_slot 40 is not one of the model's \d+ "
                                                   r"speaker slots \(0 to \d+\); give slots in that range"):
        infer.predict_conversation(trained["checkpoint"], bad)
    bad.write_text("speaker,text,label\nAnn,hello,angry-ish\n")
    with pytest.raises(infer.InferenceError, match=r"line 2: label 'angry-ish' is not one of the model's classes"):
        infer.predict_conversation(trained["checkpoint"], bad)
    with pytest.raises(infer.InferenceError, match="does not exist"):
        infer.predict_conversation(trained["checkpoint"], tmp_path / "nothing.csv")


def test_command_line(trained, tmp_path):
    exe = str(Path(sys.executable).with_name("ercpipe"))
    features = [f"{m}={p}" for m, p in trained["features"].items()]
    out = tmp_path / "predictions.tsv"
    result = subprocess.run([exe, "predict", "--checkpoint", str(trained["checkpoint"]), "--manifest",
                             str(trained["manifest"]), "--features", *features, "--split", "test", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    written = pd.read_csv(out, sep="\t", keep_default_na=False)
    accuracy = (written["label"] == written["prediction"]).mean()
    # With --out, one line (a whole split's table went to the terminal too); without, the table.
    assert result.stdout == (f"{len(written)} utterance(s) predicted; accuracy on the {len(written)} labelled: "
                             f"{accuracy:.1%}; written to {out}\n")
    printed = subprocess.run([exe, "predict", "--checkpoint", str(trained["checkpoint"]), "--manifest",
                              str(trained["manifest"]), "--features", *features, "--split", "test"],
                             capture_output=True, text=True, timeout=300)
    assert len(printed.stdout.strip().splitlines()) == len(written) + 1 and "prediction" in printed.stdout
    assert set(written["split"]) == {"test"}  # as the pipeline's predictions.tsv has it
    infer.write_predictions(written, tmp_path / "predictions.csv")  # a .csv name gets commas (it got tabs)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "predictions.csv", keep_default_na=False), written,
                                  check_exact=False, atol=1e-5)
    # An option of the other mode is refused, not ignored.
    for extra, message in ((["--conversation", str(out), "--split", "test"], "--split goes with --manifest"),
                           (["--manifest", str(trained["manifest"]), "--features", *features, "--work-dir",
                             str(tmp_path)], "--work-dir goes with --conversation")):
        refused = subprocess.run([exe, "predict", "--checkpoint", str(trained["checkpoint"]), *extra],
                                 capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    result = subprocess.run([exe, "predict", "--checkpoint", str(trained["checkpoint"]), "--manifest",
                             str(trained["manifest"]), "--features", features[0]],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "give a feature file for ['audio', 'visual']" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_pipeline_feature_files_match_their_config_settings(pipeline_run):
    """What training checks (ercpipe.io.features.expect for each experiment's feature setting and its
    dataset's face selection) holds for every file the pipeline made, and the checkpoints record it."""
    workdir, configfile = pipeline_run[0], pipeline_run[1]
    cfg = yaml.safe_load(Path(configfile).read_text())
    for name, exp in cfg["experiments"].items():
        face_selection = pipeline_config.face_selection(cfg["datasets"][exp["dataset"]])
        checkpoint = workdir / f"results/{exp['dataset']}/{name}/seed{exp['seeds'][0]}/model.pt"
        recorded = torch.load(checkpoint, map_location="cpu", weights_only=True)["features"]
        for modality, setting in exp["features"].items():
            path = workdir / f"features/{exp['dataset']}/{modality}/{setting}.h5"
            expected = feature_io.expect(modality, cfg["features"][modality][setting], face_selection=face_selection,
                                         name=setting)
            assert expected.setting_hash is not None
            assert feature_io.mismatches(feature_io.read(path), expected) == [], path
            assert recorded[modality]["setting_hash"] == expected.setting_hash


def test_a_selection_written_before_it_recorded_its_members_summaries_finds_its_siblings(tmp_path, monkeypatch):
    """Its ensemble's members are the experiments beside it (results/{dataset}/{member}), from any folder."""
    for name in ("a", "b"):
        run = tmp_path / f"proj/results/ds/{name}/seed0"
        run.mkdir(parents=True)
        (run / "model.pt").write_bytes(b"a model")
        (run.parent / "summary.json").write_text(json.dumps({"seeds": [0], "runs": [f"results/ds/{name}/seed0"]}))
    selection = tmp_path / "proj/results/ds/picked"
    selection.mkdir()
    (selection / "summary.json").write_text(json.dumps({"seeds": [0], "runs": ["ensemble"], "selection": {
        "chosen": "ensemble_top2", "ensembles": {"ensemble_top2": {"members": ["a", "b"]}}}}))
    expected = [tmp_path / f"proj/results/ds/{name}/seed0/model.pt" for name in ("a", "b")]
    for where, given in ((tmp_path, "proj/results/ds/picked"), (tmp_path / "proj", "results/ds/picked")):
        monkeypatch.chdir(where)
        assert infer.checkpoint_files(given) == expected
