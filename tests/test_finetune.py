"""Text-encoder fine-tuning on a tiny learnable manifest with the tiny random RoBERTa."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TEST_DEVICE

from ercpipe.features import finetune, text
from ercpipe.features.interface import ExtractionContext
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.testing.tiny_models import write_tiny_roberta
from test_text_features import make_manifest

KEYWORDS = {"hap": ["happy", "wonderful", "delighted", "great"], "sad": ["sad", "crying", "lonely", "miserable"],
            "ang": ["angry", "furious", "hate", "annoyed"]}
FILLERS = ["well I am", "honestly this is", "you know I feel", "today it is", "oh that was", "and now I am"]


def learnable_dialogues(count: int, offset: int) -> tuple[dict, dict]:
    """Dialogues of three utterances whose label is given away by one keyword."""
    dialogues, labels = {}, {}
    for d in range(count):
        utterances, utterance_labels = [], []
        for u in range(3):
            label = list(KEYWORDS)[(d + u) % 3]
            word = KEYWORDS[label][(d * 3 + u + offset) % 4]
            utterances.append(("Ses01_F" if u % 2 else "Ses01_M", f"{FILLERS[(d + 2 * u + offset) % 6]} {word}"))
            utterance_labels.append(label)
        dialogues[f"x{offset}_{d}"], labels[f"x{offset}_{d}"] = utterances, utterance_labels
    return dialogues, labels


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """manifest.tsv (train / valid / test) and a tiny RoBERTa whose tokenizer saw train + valid text only."""
    root = tmp_path_factory.mktemp("finetune")
    train, train_labels = learnable_dialogues(16, 0)
    valid, valid_labels = learnable_dialogues(6, 1)
    # Test rows carry a label outside every class list: reading them anywhere in fine-tuning would show.
    test = {"t0": [("Ses05_F", "zzyzx never seen"), ("Ses05_M", "qwv unknown words")]}
    dialogues = {**train, **valid, **test}
    splits = {**{d: "train" for d in train}, **{d: "valid" for d in valid}, "t0": "test"}
    frame = make_manifest(dialogues, splits=splits, labels={**train_labels, **valid_labels, "t0": ["zzz", "zzz"]},
                          flags={"x0_0_2": "empty_text"})
    manifest_io.write(frame, root / "manifest.tsv")
    texts = [t for d in (train, valid) for utterances in d.values() for _, t in utterances]
    model = write_tiny_roberta(root / "tiny", texts * 3, hidden_size=32, layers=2)
    return root, frame, model


TRAINING = {"epochs": 6, "lr": 3e-3, "batch_size": 8, "warmup": 0.1, "head_dropout": 0.0, "weight_decay": 0.0,
            "max_length": 64, "seed": 0}


def test_finetuning_improves_valid_accuracy_and_never_reads_test(corpus):
    root, frame, model = corpus
    out = root / "encoder"
    settings = {"model": str(model), "pooling": "mean", "finetune": TRAINING}  # one text setting for both steps
    finetune.finetune_text_encoder(root / "manifest.tsv", settings, out, threads=1, device=TEST_DEVICE)
    metrics = json.loads((out / "metrics.json").read_text())
    before = metrics["history"][0]["valid"]["accuracy"]
    after = metrics["valid_at_selected_epoch"]["accuracy"]
    assert metrics["selected_epoch"] >= 1 and after > before and after >= 0.8, metrics["history"]
    assert metrics["classes"] == ["hap", "sad", "neu", "ang", "exc", "fru"]  # IEMOCAP ids, not the test's "zzz"
    assert metrics["splits_read"] == ["train", "valid"]
    n_train = int((frame["split"] == "train").sum())
    assert metrics["utterances"] == {"train": n_train - 1, "valid": int((frame["split"] == "valid").sum())}
    assert metrics["skipped_empty_text"] == {"train": 1, "valid": 0}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temporary directory left

    assert metrics["settings"] == finetune.training_view(settings)

    # The saved encoder is what extraction loads in place of settings["model"]; the file's settings say so.
    text.extract_shard(root / "manifest.tsv", settings, root / "tuned.h5", device=TEST_DEVICE,
                       context=ExtractionContext(encoder_dir=out))
    plain_settings = {"model": str(model), "pooling": "mean"}
    text.extract_shard(root / "manifest.tsv", plain_settings, root / "plain.h5", device=TEST_DEVICE)
    tuned = feature_io.read(root / "tuned.h5", expected_ids=frame["utterance_id"].tolist(), expected_dim=32,
                            expected_hash=feature_io.settings_hash(text.stored_settings(settings)))
    plain = feature_io.read(root / "plain.h5")
    assert tuned.attrs["encoder_dir"] == str(out) and tuned.attrs["settings"]["finetune"]["lr"] == 3e-3
    assert tuned.attrs["setting_hash"] != plain.attrs["setting_hash"]
    assert not np.allclose(tuned.features, plain.features)
    with pytest.raises(ValueError, match="run finetune_text_encoder first"):
        text.extract_shard(root / "manifest.tsv", settings, root / "x.h5", device=TEST_DEVICE)
    # A stale encoder (one a job that outlived a killed Snakemake finished) is refused, naming the key and the way out.
    with pytest.raises(ValueError, match=r"was fine-tuned with other settings \(finetune.lr 0.003 there, 0.001 here\)"
                                         r", e.g. by a job that outlived a killed Snakemake; delete .* --forcerun "
                                         r"finetune_text_encoder"):
        text.extract_shard(root / "manifest.tsv", {**settings, "finetune": {**TRAINING, "lr": 1e-3}},
                           root / "x.h5", device=TEST_DEVICE, context=ExtractionContext(encoder_dir=out))
    assert not (root / "x.h5").exists()

    # Fine-tuned vectors separate the valid classes: nearest train-class centroid is mostly right.
    def centroid_accuracy(fs) -> float:
        train = (frame["split"] == "train").to_numpy() & fs.present
        valid = (frame["split"] == "valid").to_numpy()
        classes = sorted(set(frame.loc[train, "label"]))
        centroids = np.stack([fs.features[train & (frame["label"] == c).to_numpy()].mean(0) for c in classes])
        nearest = np.argmin(((fs.features[valid][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
        return float((np.array(classes)[nearest] == frame.loc[valid, "label"].to_numpy()).mean())

    assert centroid_accuracy(tuned) >= 0.8 and centroid_accuracy(tuned) > centroid_accuracy(plain)


def test_finetune_settings_and_splits_are_checked(corpus, tmp_path):
    root, frame, model = corpus
    with pytest.raises(ValueError, match=r"unknown text fine-tuning setting\(s\) \['epoch'\]"):
        text.text_settings({"finetune": {"epoch": 3}})
    with pytest.raises(ValueError, match="lr must be a number"):
        finetune.finetune_settings({"lr": "fast"})
    # YAML 1.1 reads 1e-4 (no dot) as a string; training keys accepted it, fine-tuning refused it.
    assert finetune.finetune_settings({"lr": "1e-4"})["lr"] == 1e-4
    assert text.text_settings({"finetune": True})["finetune"] == finetune.DEFAULT_SETTINGS
    assert text.text_settings({"finetune": False})["finetune"] is None
    with pytest.raises(ValueError, match="no finetune entry"):
        finetune.finetune_text_encoder(root / "manifest.tsv", {"model": str(model)}, tmp_path / "encoder")
    no_valid = frame[frame["split"] != "valid"]
    manifest_io.write(no_valid, tmp_path / "manifest.tsv")
    with pytest.raises(ValueError, match=r"no valid rows.*datasets\.(?!<name>)[^. ]+\.valid_split: \{fraction: 0.1, seed: 0\}"):
        finetune.finetune_text_encoder(tmp_path / "manifest.tsv", {"model": str(model), "finetune": TRAINING},
                                       tmp_path / "encoder", device=TEST_DEVICE)
    assert not (tmp_path / "encoder").exists()


def test_class_weighted_finetuning_weights_the_loss_by_train_frequency(corpus, tmp_path):
    root, frame, model = corpus
    # Few "sad" in train, many in valid: the weights must come from the train split alone.
    frame = frame.copy()
    train = (frame["split"] == "train").to_numpy()
    sad_train = np.flatnonzero(train & (frame["label"] == "sad").to_numpy())
    frame.loc[sad_train[3:], "label"] = "hap"
    manifest_io.write(frame, tmp_path / "manifest.tsv")
    one_epoch = {**TRAINING, "epochs": 1}
    runs = {}
    for weights in ("none", "train"):
        settings = {"model": str(model), "pooling": "mean", "finetune": {**one_epoch, "class_weights": weights}}
        finetune.finetune_text_encoder(tmp_path / "manifest.tsv", settings, tmp_path / weights, device=TEST_DEVICE)
        runs[weights] = json.loads((tmp_path / weights / "metrics.json").read_text())
    used = train & ~frame["flags"].str.contains("empty_text").to_numpy()
    counts = frame.loc[used, "label"].value_counts()
    classes = runs["train"]["classes"]
    expected = [counts.max() / counts[c] if c in counts else counts.max() / counts.min() for c in classes]
    assert runs["train"]["class_weights"]["source"] == "inverse frequency over train"
    assert np.allclose(runs["train"]["class_weights"]["values"], expected)
    assert runs["train"]["class_weights"]["values"][classes.index("sad")] > 4
    assert runs["none"]["class_weights"] == {"source": "none", "values": None}
    assert runs["train"]["history"][1]["train_loss"] != pytest.approx(runs["none"]["history"][1]["train_loss"])
    assert runs["train"]["settings"]["finetune"]["class_weights"] == "train"
    # An encoder made before the key existed (no class_weights stored) still matches an unweighted setting.
    assert "class_weights" not in runs["none"]["settings"]["finetune"]
    with pytest.raises(ValueError, match="was fine-tuned with other settings"):
        text.extract_shard(tmp_path / "manifest.tsv", {"model": str(model), "pooling": "mean", "finetune": one_epoch},
                           tmp_path / "x.h5", device=TEST_DEVICE, context=ExtractionContext(encoder_dir=tmp_path / "train"))
    with pytest.raises(ValueError, match=r"'paper' exists only for IEMOCAP's and MELD's class lists.*use 'train'"):
        finetune.loss_class_weights("paper", ["joyful", "mad"], np.array([0, 1]), "m.tsv")
    with pytest.raises(ValueError, match="class_weights must be one of"):
        finetune.finetune_settings({"class_weights": "inverse"})


@pytest.mark.parametrize("group_by_length", [True, False])
def test_epoch_batches_use_every_input_once(group_by_length):
    import torch

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1003).tolist()
    batches = finetune._epoch_batches(lengths, 16, group_by_length, torch.Generator().manual_seed(1))
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert all(1 <= len(b) <= 16 for b in batches)
    # Padding per batch: grouping cuts it to a fraction of random batching's.
    padding = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert (padding < 0.1 * sum(lengths)) == group_by_length
    again = finetune._epoch_batches(lengths, 16, group_by_length, torch.Generator().manual_seed(1))
    assert again == batches
    other = finetune._epoch_batches(lengths, 16, group_by_length, torch.Generator().manual_seed(2))
    assert other != batches
    with pytest.raises(ValueError, match="group_by_length must be true or false"):
        finetune.finetune_settings({"group_by_length": "yes"})


def _old_warmup_factor(step: int, warmup_steps: int, steps: int) -> float:
    """The warm-up factor finetune_text_encoder built inline with LambdaLR before warmup_linear_decay (copied)."""
    return ((step + 1) / max(1, warmup_steps) if step < warmup_steps
            else max(0.0, (steps - step) / max(1, steps - warmup_steps)))


def _lrs_per_step(make_scheduler, steps: int, lr: float = 3e-3) -> list[float]:
    """The learning rate each of `steps` optimizer steps runs with (the training loop's order of calls)."""
    import torch

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    scheduler = make_scheduler(optimizer)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("warmup_steps,steps", [(0, 1), (0, 12), (1, 1), (1, 10), (3, 12), (6, 60), (5, 5), (7, 9)])
def test_warmup_schedule_learning_rate_per_step(warmup_steps, steps):
    from transformers import get_linear_schedule_with_warmup

    lr = 3e-3
    ours = _lrs_per_step(lambda o: finetune.warmup_linear_decay(o, warmup_steps, steps), steps, lr)
    assert ours == [lr * _old_warmup_factor(s, warmup_steps, steps) for s in range(steps)]  # exactly, step by step
    # transformers' schedule starts the warm-up at lr 0 (s / warmup_steps): the same only without a warm-up.
    # If this starts failing, transformers' function gives these rates and can replace warmup_linear_decay.
    theirs = _lrs_per_step(lambda o: get_linear_schedule_with_warmup(o, warmup_steps, steps), steps, lr)
    assert theirs[warmup_steps:] == pytest.approx(ours[warmup_steps:], rel=1e-12, abs=0)
    if warmup_steps == 0:
        assert theirs == ours
    else:
        assert theirs[0] == 0.0 and ours[0] == pytest.approx(lr / warmup_steps, rel=1e-12)
        assert theirs[1:warmup_steps] == pytest.approx(ours[:warmup_steps - 1], rel=1e-12, abs=0)


def test_the_datasets_declared_classes_are_the_heads_classes(corpus, tmp_path):
    """A dataset whose labels happen to be a subset of MELD's or IEMOCAP's but that declares its own class list
    (summary.json beside the manifest) fine-tunes on that list; so `paper` weights are refused for it."""
    root, frame, model = corpus
    manifest = tmp_path / "manifest.tsv"
    manifest_io.write(frame, manifest)
    declared = ["ang", "hap", "sad"]  # the labels the train rows use, in the dataset's own order
    (tmp_path / "summary.json").write_text(json.dumps({"classes": declared}))
    settings = {"model": str(model), "finetune": {**TRAINING, "epochs": 1}}
    finetune.finetune_text_encoder(manifest, settings, tmp_path / "encoder", threads=1, device=TEST_DEVICE)
    assert json.loads((tmp_path / "encoder" / "metrics.json").read_text())["classes"] == declared
    with pytest.raises(ValueError, match="paper"):
        finetune.finetune_text_encoder(manifest, {**settings, "finetune": {**settings["finetune"],
                                                                           "class_weights": "paper"}},
                                       tmp_path / "paper", threads=1, device=TEST_DEVICE)


class StopAfter(Exception):
    pass


def test_an_interrupted_finetuning_resumes_with_the_uninterrupted_result(corpus, tmp_path, caplog):
    """A fine-tuning killed after epoch 2 (a SLURM time limit) continues from its state beside the output folder and
    gives the uninterrupted run's weights and history; a state made with other settings is not used."""
    import torch
    from safetensors.torch import load_file

    root, _, model = corpus
    settings = {"model": str(model), "pooling": "mean", "finetune": {**TRAINING, "epochs": 4, "head_dropout": 0.3}}
    whole = tmp_path / "whole"
    finetune.finetune_text_encoder(root / "manifest.tsv", settings, whole, threads=1, device=TEST_DEVICE)

    def stop_at(epoch):
        def callback(done):
            if done == epoch:
                raise StopAfter
        return callback

    out = tmp_path / "tuned"
    with pytest.raises(StopAfter):
        finetune.finetune_text_encoder(root / "manifest.tsv", settings, out, threads=1, device=TEST_DEVICE,
                                       on_epoch_end=stop_at(2))
    state = finetune.resume_path(out)
    assert state.is_file() and not out.exists()
    epochs_run = []
    with caplog.at_level("INFO", logger="ercpipe"):
        finetune.finetune_text_encoder(root / "manifest.tsv", settings, out, threads=1, device=TEST_DEVICE,
                                       on_epoch_end=epochs_run.append)
    assert epochs_run == [3] and "resuming from" in caplog.text  # epoch 4 is the last: no state after it
    assert not state.exists()
    resumed, uninterrupted = (json.loads((d / "metrics.json").read_text()) for d in (out, whole))
    for key in ("history", "selected_epoch", "valid_at_selected_epoch"):
        assert resumed[key] == uninterrupted[key]
    weights, expected = load_file(out / "model.safetensors"), load_file(whole / "model.safetensors")
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)

    # A state of another learning rate (the setting was changed after the kill) is deleted, not continued.
    with pytest.raises(StopAfter):
        finetune.finetune_text_encoder(root / "manifest.tsv", settings, out, threads=1, device=TEST_DEVICE,
                                       on_epoch_end=stop_at(1))
    changed = {**settings, "finetune": {**settings["finetune"], "lr": 1e-3, "epochs": 2}}
    epochs_run.clear()
    caplog.clear()
    finetune.finetune_text_encoder(root / "manifest.tsv", changed, out, threads=1, device=TEST_DEVICE,
                                   on_epoch_end=epochs_run.append)
    assert epochs_run == [1] and "made with other settings; fine-tuning from the start" in caplog.text
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 3

    # A state that cannot be read names itself and the way out.
    state.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"tuned.resume.pt \(the state of an interrupted fine-tuning\) cannot be "
                                         r"read .*delete it to fine-tune from the start"):
        finetune.finetune_text_encoder(root / "manifest.tsv", settings, tmp_path / "tuned", threads=1,
                                       device=TEST_DEVICE)


_STOPPED_AS_IT_ENDS = """
import json, os, pathlib, signal, sys
from ercpipe.features import finetune
from ercpipe.runlog import rule_logging
manifest, settings, out, log, device = json.loads(sys.argv[1])
real_unlink = pathlib.Path.unlink
def unlink(self, missing_ok=False):
    if self.name.endswith(".resume.pt"):  # the encoder is saved; its resume state goes next
        os.kill(os.getpid(), signal.SIGTERM)
    return real_unlink(self, missing_ok=missing_ok)
pathlib.Path.unlink = unlink
with rule_logging(log):
    finetune.finetune_text_encoder(manifest, settings, pathlib.Path(out), threads=1, device=device)
"""


def test_a_sigterm_after_the_encoder_is_saved_does_not_fail_the_job(corpus, tmp_path):
    """The log said "fine-tuned encoder saved", then a SIGTERM ended the job by the default action: Snakemake
    deleted the encoder, and the resume state was gone, so the re-run fine-tuned from the first epoch."""
    import subprocess
    import sys

    root, _, model = corpus
    settings = {"model": str(model), "pooling": "mean", "finetune": {**TRAINING, "epochs": 2}}
    out, log = tmp_path / "tuned", tmp_path / "finetune.log"
    arguments = json.dumps([str(root / "manifest.tsv"), settings, str(out), str(log), TEST_DEVICE])
    result = subprocess.run([sys.executable, "-c", _STOPPED_AS_IT_ENDS, arguments], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:] + log.read_text()[-2000:]
    assert "SIGTERM after the job's outputs were complete: ignored" in log.read_text()
    assert (out / "metrics.json").is_file() and not finetune.resume_path(out).exists()


def test_mixed_precision_finetuning_learns_resumes_and_is_recorded(corpus, tmp_path, caplog, monkeypatch):
    """finetune.amp autocasts the encoder as train.amp does the SDT; the weights stay fp32, a killed run resumes with
    the uninterrupted result, and an encoder is only used by a setting of its own precision."""
    import torch
    from safetensors.torch import load_file

    from ercpipe.model import inference

    monkeypatch.setattr(inference, "cpu_has_bf16_kernels", lambda: True)  # the autocast path on any CPU
    root, _, model = corpus
    settings = {"model": str(model), "pooling": "mean", "finetune": {**TRAINING, "epochs": 4, "amp": "bf16"}}
    whole = tmp_path / "whole"
    finetune.finetune_text_encoder(root / "manifest.tsv", settings, whole, threads=1, device=TEST_DEVICE)
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["precision"] == "bf16 autocast" and metrics["settings"]["finetune"]["amp"] == "bf16"
    assert metrics["skipped_steps"] == 0  # no GradScaler outside fp16 on CUDA
    assert metrics["valid_at_selected_epoch"]["accuracy"] >= 0.8, metrics["history"]
    assert all(w.dtype == torch.float32 for w in load_file(whole / "model.safetensors").values())

    out = tmp_path / "tuned"
    with pytest.raises(StopAfter):
        finetune.finetune_text_encoder(root / "manifest.tsv", settings, out, threads=1, device=TEST_DEVICE,
                                       on_epoch_end=lambda epoch: (_ for _ in ()).throw(StopAfter()))
    finetune.finetune_text_encoder(root / "manifest.tsv", settings, out, threads=1, device=TEST_DEVICE)
    assert json.loads((out / "metrics.json").read_text())["history"] == metrics["history"]
    weights, expected = load_file(out / "model.safetensors"), load_file(whole / "model.safetensors")
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert metrics["devices"] == json.loads((out / "metrics.json").read_text())["devices"]  # resumed: one entry
    assert len(metrics["devices"]) == 1 and metrics["devices"][0].startswith(TEST_DEVICE)
    assert metrics["devices"][0].endswith(", bf16 autocast")

    if TEST_DEVICE == "cpu":  # resumed where bf16 runs as fp32 (another node): said, and both are recorded
        moved = tmp_path / "moved"
        with pytest.raises(StopAfter):
            finetune.finetune_text_encoder(root / "manifest.tsv", settings, moved, threads=1, device=TEST_DEVICE,
                                           on_epoch_end=lambda epoch: (_ for _ in ()).throw(StopAfter()))
        monkeypatch.setattr(inference, "cpu_has_bf16_kernels", lambda: False)
        caplog.clear()
        with caplog.at_level("INFO", logger="ercpipe"):
            finetune.finetune_text_encoder(root / "manifest.tsv", settings, moved, threads=1, device=TEST_DEVICE)
        assert "this fine-tuning ran on cpu, bf16 autocast until epoch 1 and continues on cpu, fp32" in caplog.text
        assert json.loads((moved / "metrics.json").read_text())["devices"] == ["cpu, bf16 autocast", "cpu, fp32"]
        monkeypatch.setattr(inference, "cpu_has_bf16_kernels", lambda: True)

    # An fp32 setting does not take the bf16 encoder (nor the other way round).
    with pytest.raises(ValueError, match=r"fine-tuned with other settings \(finetune.amp 'bf16' there, 'off' here\)"):
        text.extract_shard(root / "manifest.tsv", {**settings, "finetune": {**settings["finetune"], "amp": "off"}},
                           tmp_path / "x.h5", device=TEST_DEVICE, context=ExtractionContext(encoder_dir=whole))
    with pytest.raises(ValueError, match="amp must be one of"):
        finetune.finetune_settings({"amp": "fp8"})
    # amp: off is the default and stored as before the key existed: encoders fine-tuned then stay valid.
    assert "amp" not in finetune.training_view({"model": str(model), "finetune": {"amp": "off"}})["finetune"]

    if TEST_DEVICE == "cpu":  # fp16 runs as fp32 on a CPU, said in the log: the fp32 run's very weights
        runs = {}
        for amp in ("off", "fp16"):
            caplog.clear()
            with caplog.at_level("INFO", logger="ercpipe"):
                finetune.finetune_text_encoder(root / "manifest.tsv", {**settings, "finetune": {
                    **TRAINING, "epochs": 2, "amp": amp}}, tmp_path / amp, threads=1, device=TEST_DEVICE)
            runs[amp] = load_file(tmp_path / amp / "model.safetensors")
        assert "finetune.amp is fp16, which runs as fp32 on cpu" in caplog.text
        assert all(torch.equal(runs["off"][k], runs["fp16"][k]) for k in runs["off"])
        assert json.loads((tmp_path / "fp16" / "metrics.json").read_text())["precision"] == "fp32"
