"""Training and prediction check every feature file against what they ask for (issue 14, item 3).

The expected setting hash of a config setting is computed without the extractors (so the training job's
environment needs neither transformers nor openSMILE nor OpenCV) and must agree with what the extractors
write. A file made with another setting, of another width or for other utterances stops training and
prediction with one message naming the file, the differing keys and the fix.
"""
from __future__ import annotations

import glob
import json
import logging
import subprocess
import sys
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
from ercpipe.labels import IEMOCAP_CLASSES
from ercpipe.train import CheckpointError, load_dialogues, load_model, predict, resolve_experiment, run_training

REPO = Path(__file__).resolve().parents[1]
WORDS = {"neu": "okay see you tomorrow", "fru": "why again this is annoying", "sad": "i feel sad and alone",
         "ang": "stop it i am furious", "hap": "what a wonderful day", "exc": "wow this is amazing news"}
TEXT_MEAN = {"model": "packaged:minilm", "pooling": "mean"}
TEXT_CLS = {"model": "packaged:minilm", "pooling": "cls"}
AUDIO_IS10, AUDIO_EGEMAPS = {"feature_set": "IS10"}, {"feature_set": "eGeMAPSv02"}
VISUAL = {"fps": 1, "backbone": "denseface", "weights": "random"}
LARGEST = {"mode": "largest_central"}
SIDE = {"mode": "side", "sides": {"F": "left", "M": "right"}}
SDT = {"preset": "sdt", "model": {"hidden_dim": 32, "n_heads": 2},
       "train": {"epochs": 3, "batch_size": 4, "lr": 1e-3}}


# ------------------------------------------------------------------------------------------ data

def write_manifest(root: Path, n_dialogues=(12, 4, 4), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in zip(("train", "valid", "test"), n_dialogues):
        for k in range(n):
            dialogue = f"{split}_d{k:02d}"
            for j in range(int(rng.integers(2, 5))):
                label, slot = IEMOCAP_CLASSES[int(rng.integers(len(IEMOCAP_CLASSES)))], int(rng.integers(2))
                rows.append(dict(dataset="demo", split=split, dialogue_id=dialogue, utterance_index=j,
                                 utterance_id=f"{dialogue}_u{j}", speaker="MF"[slot], speaker_slot=slot, label=label,
                                 text=WORDS[label], audio_path="", audio_start=np.nan, audio_end=np.nan,
                                 video_path="", video_start=np.nan, video_end=np.nan, flags=""))
    root.mkdir(parents=True, exist_ok=True)
    manifest_io.write(pd.DataFrame(rows), root / "manifest.tsv")
    (root / "summary.json").write_text(json.dumps({"classes": list(IEMOCAP_CLASSES)}))
    return root / "manifest.tsv"


def write_like_extractor(path: Path, manifest: Path, modality: str, settings: dict, dim: int, *,
                         extractor: str = "", ids: list[str] | None = None, seed: int = 0) -> Path:
    """A feature file with the attributes the real extractor writes for `settings` (openSMILE and the
    face pipeline are too slow for these tests; their settings resolution is what matters here)."""
    frame = manifest_io.read(manifest)
    ids = ids if ids is not None else frame["utterance_id"].tolist()
    rng = np.random.default_rng(seed)
    label_index = {c: i for i, c in enumerate(IEMOCAP_CLASSES)}
    protos = rng.normal(size=(len(IEMOCAP_CLASSES), dim))
    labels = dict(zip(frame["utterance_id"], frame["label"]))
    values = np.stack([protos[label_index[labels.get(u, "neu")]] + rng.normal(size=dim) for u in ids])
    feature_io.write(path, feature_io.FeatureSet(ids, values.astype(np.float32), np.ones(len(ids), bool), {
        "modality": modality, "extractor": extractor or modality, "model": "test", "settings": settings}))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """features/demo/ as the pipeline lays it out: real MiniLM text files (mean and cls pooling), an IS10 and
    an eGeMAPS audio file and a DenseFace visual file with the attributes their extractors write."""
    from ercpipe.features import audio, text, visual

    root = tmp_path_factory.mktemp("checks")
    features = root / "features" / "demo"
    manifest = write_manifest(features)
    paths = {"text_mean": features / "text" / "minilm.h5", "text_cls": features / "text" / "minilm_cls.h5",
             "audio": features / "audio" / "is10.h5", "egemaps": features / "audio" / "egemaps.h5",
             "visual": features / "visual" / "denseface.h5"}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    n = len(manifest_io.read(manifest))
    text.extract_shard(manifest, TEXT_MEAN, paths["text_mean"], threads=1, device="cpu")
    text.extract_shard(manifest, TEXT_CLS, paths["text_cls"], threads=1, device="cpu")
    write_like_extractor(paths["audio"], manifest, "audio", audio.audio_settings(AUDIO_IS10), 1582,
                         extractor="opensmile")
    write_like_extractor(paths["egemaps"], manifest, "audio", audio.audio_settings(AUDIO_EGEMAPS), 88,
                         extractor="opensmile")
    write_like_extractor(paths["visual"], manifest, "visual", visual.stored_settings(VISUAL, LARGEST), 342,
                         extractor="mtcnn+denseface")
    assert n > 20
    return {"root": root, "manifest": manifest, "paths": paths}


def feature_paths(corpus, text_key: str = "text_mean") -> dict[str, Path]:
    return {"text": corpus["paths"][text_key], "audio": corpus["paths"]["audio"], "visual": corpus["paths"]["visual"]}


SETTINGS = {"text": TEXT_MEAN, "audio": AUDIO_IS10, "visual": VISUAL}


def train(corpus, out: Path, paths: dict, settings: dict | None = SETTINGS, face_selection=LARGEST, **kw) -> dict:
    if settings is not None:
        kw.update(feature_settings=settings, face_selection=face_selection)
    return run_training(corpus["manifest"], paths, None, resolve_experiment(SDT), 0, out, device="cpu", threads=1,
                        **kw)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A checkpoint trained through the Python API's default (no feature settings given)."""
    out = tmp_path_factory.mktemp("run")
    return out, train(corpus, out, feature_paths(corpus), settings=None, face_selection=None)


# ------------------------------------------------------------------------------------------ expected hashes

def _configured_settings():
    """(modality, setting, face_selection) for every feature setting of every shipped config and dataset."""
    cases = []
    for path in [REPO / "config.yaml", *sorted(glob.glob(str(REPO / "workflow/configs/*.yaml")))]:
        cfg = yaml.safe_load(Path(path).read_text())
        selections = [pipeline_config.face_selection(ds) for ds in cfg["datasets"].values()]
        for modality, settings in cfg.get("features", {}).items():
            for setting in settings.values():
                cases += [(modality, setting, fs) for fs in selections]
    return cases


VARIANTS = [
    ("text", {}, None), ("text", TEXT_CLS, None),
    ("text", {"pooling": "cls", "last_layers": 2, "context": {"previous": 2, "speaker_names": True}}, None),
    ("text", {"model": "roberta-large", "normalize": None, "finetune": True}, None),
    ("text", {"finetune": {"epochs": 1, "lr": 1, "warmup": 0, "max_length": 64}, "dtype": "bf16"}, None),
    ("text", {"finetune": False, "normalize": False, "max_length": 128}, None),
    ("audio", {}, None), ("audio", AUDIO_EGEMAPS, None), ("audio", {"feature_set": "ComParE_2016"}, None),
    ("visual", {}, None), ("visual", {}, SIDE), ("visual", VISUAL, LARGEST),
    ("visual", {"fps": 3, "thresholds": [1, 0.5, 0], "image_size": 160, "face_margin": 0}, {}),
]


def test_expected_settings_of_every_shipped_setting_and_variant(tmp_path):
    local = tmp_path / "st-model"  # a local sentence-transformers directory that normalizes
    local.mkdir()
    (local / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Normalize"}]))
    (local / "config.json").write_text(json.dumps({"hidden_size": 48}))
    cases = _configured_settings() + VARIANTS + [("text", {"model": str(local)}, None)]
    for modality, setting, face_selection in cases:
        expected = feature_io.expected_settings(modality, setting, face_selection=face_selection)
        if modality == "visual" and face_selection is None:  # not given: left out (not defaulted), no hash
            assert "face_selection" not in expected
            assert feature_io.expected_hash(modality, setting) is None
        else:
            assert feature_io.expected_hash(modality, setting, face_selection=face_selection) == \
                feature_io.settings_hash(expected), (modality, setting, face_selection)
    assert feature_io.expected_settings("text", {"model": str(local)})["normalize"] is True
    assert feature_io.expected_settings("visual", {}, face_selection={})["face_selection"] == LARGEST
    assert feature_io.expected_dim("text", {"model": str(local)}) == 48
    assert feature_io.expected_dim("text", {}) == 384
    assert feature_io.expected_dim("text", {"model": "roberta-large"}) is None  # a hub name: not known offline
    assert feature_io.expected_dim("audio", {}) == 1582 and feature_io.expected_dim("visual", VISUAL) == 342
    # One setting however its numbers are written (the params compare reprs: 1 re-extracted where 1.0 ran).
    assert repr(feature_io.expected_settings("visual", {"face_margin": 1, "fps": 2})) == repr(
        feature_io.expected_settings("visual", {"face_margin": 1.0, "fps": 2.0}))
    with pytest.raises(ValueError, match=r"unknown text feature setting\(s\) \['poolin'\]"):
        feature_io.expected_hash("text", {"poolin": "cls"})


def test_the_hash_training_expects_is_the_hash_each_extractor_writes(corpus, tmp_path):
    """Through the real extractors (packaged MiniLM, openSMILE IS10, MTCNN + random densenet121): the file each
    writes passes the check training and prediction make (feature_io.expect), hash and width included."""
    from ercpipe.features import audio, visual
    from ercpipe.features.interface import ExtractionContext
    from ercpipe.io.media import SAMPLE_RATE, write_wav

    manifest = write_manifest(tmp_path / "manifest", n_dialogues=(1, 0, 0))
    ids = manifest_io.read(manifest)["utterance_id"].tolist()
    audio_dir = tmp_path / "audio"
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    write_wav(audio_dir / f"{ids[0]}.wav", tone.astype(np.float32))  # 1 s; the other rows have no WAV
    audio_setting, visual_setting = AUDIO_IS10, {"backbone": "densenet121", "weights": "random", "fps": 1}
    audio.extract_shard(manifest, audio_setting, tmp_path / "audio.h5", threads=1,
                        context=ExtractionContext(audio_dir=audio_dir))
    visual.extract_shard(manifest, visual_setting, tmp_path / "visual.h5", threads=1, device="cpu",
                         context=ExtractionContext(face_selection=SIDE))
    made = [("text", TEXT_MEAN, None, corpus["paths"]["text_mean"]),
            ("text", TEXT_CLS, None, corpus["paths"]["text_cls"]),
            ("audio", audio_setting, None, tmp_path / "audio.h5"),
            ("visual", visual_setting, SIDE, tmp_path / "visual.h5")]
    for modality, setting, face_selection, path in made:
        expected = feature_io.expect(modality, setting, face_selection=face_selection)
        fs = feature_io.read(path, expected=expected)  # raises FeatureFileError on any mismatch
        assert expected.setting_hash is not None and not expected.partial and expected.dim is not None
        assert fs.attrs["setting_hash"] == expected.setting_hash, modality
        assert fs.attrs["settings"] == expected.settings, modality
    assert feature_io.read(tmp_path / "audio.h5").present.tolist() == [True] + [False] * (len(ids) - 1)


def test_the_expected_hash_needs_no_extractor_library():
    code = ("import sys; from ercpipe.io import features as f; "
            "[f.expected_hash(m, {}, face_selection={}) for m in ('text', 'audio', 'visual')]; "
            "f.expected_dim('text', {}); "
            "heavy = ('torch', 'transformers', 'opensmile', 'cv2', 'torchvision'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


def test_settings_difference_names_the_differing_keys():
    made = feature_io.expected_settings("text", {"pooling": "cls", "context": {"previous": 2}})
    expected = feature_io.expected_settings("text", {})
    assert feature_io.settings_difference(made, expected) == \
        "context.previous: 2, pooling: cls instead of context.previous: 0, pooling: mean"
    assert feature_io.settings_difference(expected, expected) == ""


# ------------------------------------------------------------------------------------------ training

def test_a_cls_pooled_file_at_the_path_of_a_mean_setting_stops_training(corpus, tmp_path):
    # The cls-pooled file placed where the mean setting's file belongs (what a stale or copied file looks like).
    stale = corpus["root"] / "features" / "other_demo" / "text" / "minilm.h5"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(corpus["paths"]["text_cls"].read_bytes())
    paths = {**feature_paths(corpus), "text": stale}
    with pytest.raises(feature_io.FeatureFileError) as err:
        train(corpus, tmp_path / "run", paths)
    message = str(err.value)
    assert message.count("\n") == 0, message  # one message
    assert message.startswith(f"{stale} does not match the config's text setting 'minilm'")
    assert "made with pooling: cls instead of pooling: mean" in message
    assert "Fix: delete it" in message and f"rm -rf {stale} {stale.with_suffix('')}" in message
    assert "text_features_shard and merge_features" in message
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing was trained
    # Today's behaviour without the settings (the Python API's default): no settings check.
    assert feature_io.read(stale).attrs["settings"]["pooling"] == "cls"


def test_matching_files_train_and_the_checkpoint_records_their_settings(corpus, tmp_path):
    out = tmp_path / "run"
    metrics = train(corpus, out, feature_paths(corpus))
    assert metrics["test"]["n"] > 0 and metrics["protocol"]["epochs_run"] == SDT["train"]["epochs"]
    payload = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    text = payload["features"]["text"]
    assert text["settings"]["pooling"] == "mean" and text["dim"] == 384
    assert text["setting_hash"] == feature_io.expected_hash("text", TEXT_MEAN)
    assert text["path"] == str(corpus["paths"]["text_mean"])
    assert payload["features"]["visual"]["setting_hash"] == feature_io.expected_hash("visual", VISUAL,
                                                                                     face_selection=LARGEST)
    assert payload["features"]["audio"]["dim"] == 1582


def test_width_face_selection_and_wrong_modality_settings_are_named(corpus, tmp_path):
    paths = {**feature_paths(corpus), "audio": corpus["paths"]["egemaps"]}
    with pytest.raises(feature_io.FeatureFileError) as err:
        train(corpus, tmp_path / "a", paths, face_selection=SIDE)
    lines = str(err.value).splitlines()
    assert len(lines) == 2  # every file that does not match, one line each
    egemaps, visual = lines
    assert egemaps.startswith(f"{corpus['paths']['egemaps']} does not match the config's audio setting 'egemaps'")
    assert "feature_set: eGeMAPSv02 instead of feature_set: IS10" in egemaps and "width 88 instead of 1582" in egemaps
    assert "face_selection.mode: largest_central" in visual and "face_selection.mode: side" in visual
    assert "visual_features_shard and merge_features" in visual


def test_utterance_ids_that_differ_from_the_manifest_stop_training(corpus, tmp_path):
    frame = manifest_io.read(corpus["manifest"])
    ids = frame["utterance_id"].tolist()
    short = tmp_path / "features" / "demo" / "audio" / "is10.h5"
    short.parent.mkdir(parents=True)
    from ercpipe.features import audio

    write_like_extractor(short, corpus["manifest"], "audio", audio.audio_settings(AUDIO_IS10), 1582,
                         ids=ids[:-1] + ["other_u0"])
    with pytest.raises(feature_io.FeatureFileError) as err:
        train(corpus, tmp_path / "run", {**feature_paths(corpus), "audio": short})
    message = str(err.value)
    assert str(short) in message and f"the manifest {corpus['manifest']}" in message
    assert f"1 missing (e.g. ['{ids[-1]}']), 1 extra (e.g. ['other_u0'])" in message
    assert "Fix: delete it" in message
    reordered = tmp_path / "reordered.h5"
    write_like_extractor(reordered, corpus["manifest"], "audio", audio.audio_settings(AUDIO_IS10), 1582,
                         ids=ids[::-1])
    with pytest.raises(feature_io.FeatureFileError, match="utterance ids are in another order"):
        train(corpus, tmp_path / "run", {**feature_paths(corpus), "audio": reordered})


def test_imported_pickle_features_train_under_an_imported_setting(corpus, tmp_path):
    frame = manifest_io.read(corpus["manifest"])
    imported = {}
    for m, dim in (("text", 20), ("audio", 12)):
        imported[m] = tmp_path / "features" / "demo" / m / "pickle.h5"
        imported[m].parent.mkdir(parents=True)
        settings = {"source": "pickle", "layout": "vega7", "modality": m}
        write_like_extractor(imported[m], corpus["manifest"], m, settings, dim, extractor="pickle")
    experiment = {**SDT, "model": {**SDT["model"], "modalities": ["text", "audio"]}}
    declared = {"text": {"source": "pickle"}, "audio": {"source": "pickle", "layout": "vega7"}}
    metrics = run_training(corpus["manifest"], imported, None, resolve_experiment(experiment), 0, tmp_path / "ok",
                           device="cpu", threads=1, feature_settings=declared)
    assert metrics["test"]["n"] == int((frame["split"] == "test").sum())
    # An imported file where an extractor setting's file belongs is not that setting.
    with pytest.raises(feature_io.FeatureFileError, match=r"pickle\.h5 does not match the config's text setting "
                                                         r"'pickle': made with .*source: pickle"):
        run_training(corpus["manifest"], imported, None, resolve_experiment(experiment), 0, tmp_path / "no",
                     device="cpu", threads=1, feature_settings={"text": TEXT_MEAN, "audio": declared["audio"]})
    with pytest.raises(feature_io.FeatureFileError, match=r"layout: vega7 instead of layout: sdt12.*import-pickle"):
        run_training(corpus["manifest"], imported, None, resolve_experiment(experiment), 0, tmp_path / "no",
                     device="cpu", threads=1, feature_settings={**declared, "audio": {"source": "pickle",
                                                                                      "layout": "sdt12"}})


def test_resume_state_of_other_feature_files_is_discarded(corpus, tmp_path, caplog):
    class Killed(Exception):
        pass

    def kill(epoch):
        raise Killed

    out = tmp_path / "run"
    paths = {**feature_paths(corpus), "audio": tmp_path / "is10.h5"}
    from ercpipe.features import audio

    write_like_extractor(paths["audio"], corpus["manifest"], "audio", audio.audio_settings(AUDIO_IS10), 1582)
    with pytest.raises(Killed):
        train(corpus, out, paths, on_epoch_end=kill)
    assert (out / "last.pt").exists()
    # The file is made again (e.g. after a fixed clip): same setting, other values.
    write_like_extractor(paths["audio"], corpus["manifest"], "audio", audio.audio_settings(AUDIO_IS10), 1582, seed=5)
    with caplog.at_level(logging.WARNING, logger="ercpipe.train.trainer"):
        metrics = train(corpus, out, paths)
    assert "trained on other inputs (audio changed since)" in caplog.text
    assert metrics["protocol"]["epochs_run"] == SDT["train"]["epochs"]


def test_a_feature_file_write_that_runs_out_of_room_names_the_file_and_leaves_nothing(tmp_path):
    """A full disk or a file size limit while HDF5 wrote a feature file ended the job in a segmentation fault
    (HDF5 could not close the file it had failed to write), after a message naming only the temporary file."""
    out = tmp_path / "features" / "d" / "audio" / "is10.h5"
    code = (
        "import resource, signal\n"
        "import numpy as np\n"
        "from ercpipe.io import features\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "ids = [f'u{i}' for i in range(2000)]\n"
        "values = np.random.default_rng(0).normal(size=(2000, 1582)).astype(np.float32)\n"
        "fs = features.FeatureSet(ids, values, np.ones(2000, bool), {'modality': 'audio', 'extractor': 'x', "
        "'model': 'x', 'settings': {}})\n"
        f"features.write({str(out)!r}, fs)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])  # not -11 (SIGSEGV)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ercpipe.io.atomic.WriteFailedError: could not write {out}: the write stopped after 1 MiB "
                           "with "), last
    assert "ulimit -f" in last and "File too large" in last
    assert list(out.parent.iterdir()) == []


# ------------------------------------------------------------------------------------------ prediction

def test_predict_with_a_file_of_another_width_names_the_file(trained, corpus, tmp_path):
    out, _ = trained
    paths = {**feature_paths(corpus), "audio": corpus["paths"]["egemaps"]}
    with pytest.raises(feature_io.FeatureFileError) as err:
        infer.predict_features(out / "model.pt", corpus["manifest"], paths, device="cpu")
    message = str(err.value)
    assert message.count("\n") == 0
    assert message.startswith(f"{corpus['paths']['egemaps']} does not match the checkpoint {out / 'model.pt'}, "
                              "trained on audio features of width 1582 (setting is10: {feature_set: IS10, "
                              "level: functionals})")
    assert "width 88 instead of 1582" in message and "feature_set: eGeMAPSv02 instead of feature_set: IS10" in message
    assert "give the audio file made with that setting" in message
    # A file that claims the training setting but has another width (today: a bare RuntimeError from torch).
    from ercpipe.features import audio

    narrow = tmp_path / "is10_narrow.h5"
    write_like_extractor(narrow, corpus["manifest"], "audio", audio.audio_settings(AUDIO_IS10), 88)
    with pytest.raises(feature_io.FeatureFileError, match=r"is10_narrow\.h5 does not match the checkpoint .*: "
                                                         r"width 88 instead of 1582\. Fix: give the audio file"):
        infer.predict_features(out / "model.pt", corpus["manifest"], {**feature_paths(corpus), "audio": narrow},
                               device="cpu")
    # The file the checkpoint was trained on predicts as before.
    frame = infer.predict_features(out / "model.pt", corpus["manifest"], feature_paths(corpus), device="cpu",
                                   splits=["test"])
    assert len(frame) == int((manifest_io.read(corpus["manifest"])["split"] == "test").sum())


def test_predict_with_another_setting_or_other_ids_names_the_file(trained, corpus, tmp_path):
    out, _ = trained
    with pytest.raises(feature_io.FeatureFileError, match=r"minilm_cls\.h5 does not match the checkpoint .*"
                                                         r"made with pooling: cls instead of pooling: mean"):
        infer.predict_features(out / "model.pt", corpus["manifest"], feature_paths(corpus, "text_cls"), device="cpu")
    frame = manifest_io.read(corpus["manifest"])
    manifest_io.write(frame.iloc[:-2], tmp_path / "manifest.tsv")
    (tmp_path / "summary.json").write_text(json.dumps({"classes": list(IEMOCAP_CLASSES)}))
    with pytest.raises(feature_io.FeatureFileError) as err:
        infer.predict_features(out / "model.pt", tmp_path / "manifest.tsv", feature_paths(corpus), device="cpu")
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all("0 missing" in line and "2 extra" in line for line in lines)


def test_predict_refuses_features_made_by_another_model_file_under_the_same_setting(trained, corpus, tmp_path):
    """Another text model or face-embedding file saved under the path a setting names gives features with the same
    setting hash; the checkpoint's record of the files' digests tells them apart (predict --manifest took them)."""
    out, _ = trained
    made = feature_io.read(corpus["paths"]["text_mean"])
    assert len(made.attrs["model_sha256"]) == 16  # the packaged MiniLM's files
    other = tmp_path / "minilm.h5"
    feature_io.write(other, feature_io.FeatureSet(made.utterance_ids, made.features, made.present,
                                                  {**made.attrs, "model_sha256": "0123456789abcdef"}))
    with pytest.raises(feature_io.FeatureFileError) as err:
        infer.predict_features(out / "model.pt", corpus["manifest"], {**feature_paths(corpus), "text": other},
                               device="cpu")
    message = str(err.value)
    assert message.startswith(f"{other} does not match the checkpoint {out / 'model.pt'}, trained on text features")
    assert (f"made with another text model (files' digest 0123456789abcdef instead of {made.attrs['model_sha256']})"
            in message)
    assert "give the text file made with that setting and model" in message
    # The face embedder's weights: only the digest is compared, not the path's spelling.
    visual = feature_io.read(corpus["paths"]["visual"])
    recorded, another = tmp_path / "recorded.h5", tmp_path / "another.h5"
    for path, source in ((recorded, "weights/dn.pth (sha256 aaaaaaaaaaaaaaaa)"),
                         (another, "/elsewhere/weights/dn.pth (sha256 bbbbbbbbbbbbbbbb)")):
        feature_io.write(path, feature_io.FeatureSet(visual.utterance_ids, visual.features, visual.present,
                                                     {**visual.attrs, "weights_source": source}))
    checkpoint = tmp_path / "visual_run"
    train(corpus, checkpoint, {**feature_paths(corpus), "visual": recorded}, settings=None, face_selection=None)
    model, _, _ = load_model(checkpoint / "model.pt")
    assert model.feature_sources["visual"]["weights_source"].endswith("(sha256 aaaaaaaaaaaaaaaa)")
    with pytest.raises(feature_io.FeatureFileError, match=r"another\.h5 does not match the checkpoint .*: made with "
                                                         r"another face-embedding weights file \(sha256 "
                                                         r"bbbbbbbbbbbbbbbb instead of aaaaaaaaaaaaaaaa\)"):
        infer.predict_features(checkpoint / "model.pt", corpus["manifest"],
                               {**feature_paths(corpus), "visual": another}, device="cpu")
    moved = tmp_path / "moved.h5"  # the same file recorded under another path: accepted
    feature_io.write(moved, feature_io.FeatureSet(visual.utterance_ids, visual.features, visual.present, {
        **visual.attrs, "weights_source": "/x/dn.pth (sha256 aaaaaaaaaaaaaaaa)"}))
    infer.predict_features(checkpoint / "model.pt", corpus["manifest"], {**feature_paths(corpus), "visual": moved},
                           device="cpu", splits=["test"])


def test_predict_on_dialogues_of_another_width_is_a_clear_error(trained, corpus):
    out, _ = trained
    model, _, classes = load_model(out / "model.pt")
    paths = {**feature_paths(corpus), "audio": corpus["paths"]["egemaps"]}
    data = load_dialogues(corpus["manifest"], paths, ["text", "audio", "visual"], classes=classes)
    with pytest.raises(CheckpointError, match=r"the audio features have width 88, but the model .*model\.pt was "
                                              r"trained on audio features of width 1582 \(setting is10"):
        predict(model, data.dialogues)


def test_the_command_line_prints_one_line_naming_the_file(trained, corpus):
    out, _ = trained
    exe = str(Path(sys.executable).with_name("ercpipe"))
    paths = {**feature_paths(corpus), "audio": corpus["paths"]["egemaps"]}
    result = subprocess.run([exe, "predict", "--checkpoint", str(out / "model.pt"), "--manifest",
                             str(corpus["manifest"]), "--features", *[f"{m}={p}" for m, p in paths.items()]],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "RuntimeError" not in result.stderr
    assert str(corpus["paths"]["egemaps"]) in result.stderr and "width 88 instead of 1582" in result.stderr


# ------------------------------------------------------------------------------------------ the rule's script

class _Named(dict):
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def run_train_script(corpus, out: Path, paths: dict, params: dict) -> None:
    """scripts/train_model.py as the train_model rule runs it (a stand-in for the `snakemake` object)."""
    import runpy
    from types import SimpleNamespace

    experiment = {"dataset": "demo", "features": {m: Path(p).stem for m, p in paths.items()}, "anchors": None, **SDT}
    snake = SimpleNamespace(
        input=_Named(manifest=str(corpus["manifest"]), **{f"features_{m}": str(p) for m, p in paths.items()}),
        params=_Named(experiment=experiment, **params), wildcards=SimpleNamespace(seed="0", experiment="exp"),
        config={"experiments": {"exp": experiment}},
        output=SimpleNamespace(metrics=str(out / "metrics.json")), log=[str(out / "train.log")], threads=1)
    runpy.run_path(str(REPO / "scripts" / "train_model.py"), init_globals={"snakemake": snake})


def test_the_rule_script_passes_the_feature_settings_on(corpus, tmp_path):
    stale = {**feature_paths(corpus), "text": corpus["paths"]["text_cls"]}
    params = {"feature_settings": SETTINGS, "face_selection": LARGEST}
    with pytest.raises(feature_io.FeatureFileError, match=r"minilm_cls\.h5 does not match the config's text "
                                                         r"setting 'minilm_cls': made with pooling: cls instead of "
                                                         r"pooling: mean"):
        run_train_script(corpus, tmp_path / "stale", stale, params)
    assert "pooling: cls instead of pooling: mean" in (tmp_path / "stale" / "train.log").read_text()
    run_train_script(corpus, tmp_path / "ok", feature_paths(corpus), params)
    assert (tmp_path / "ok" / "model.pt").exists()
    # A rule that does not pass them (yet) trains without the settings check.
    run_train_script(corpus, tmp_path / "old", stale, {})
    assert (tmp_path / "old" / "model.pt").exists()
