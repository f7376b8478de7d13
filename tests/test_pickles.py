"""Community feature pickles: VEGA 7-tuple and SDT 12/13-tuple -> manifest + HDF5 -> VEGA 7-tuple."""
from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from ercpipe.features import pickles
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.labels import IEMOCAP_CLASSES, MELD_CLASSES

DIMS = {"text": 8, "audio": 5, "visual": 3}


def _arrays(rng, n: int) -> dict[str, np.ndarray]:
    return {m: rng.normal(size=(n, d)).astype(np.float32) for m, d in DIMS.items()}


def iemocap_parts(seed: int = 0) -> dict:
    """Dicts keyed like the IEMOCAP release: Ses05 dialogues are test."""
    rng = np.random.default_rng(seed)
    sizes = {"Ses01F_impro01": 4, "Ses02M_script01_1": 3, "Ses05F_impro03": 5}
    parts = {"speakers": {}, "labels": {}, "text": {}, "audio": {}, "visual": {}, "names": {}, "sentences": {}}
    for vid, n in sizes.items():
        parts["speakers"][vid] = ["F", "M", "F", "M", "M"][:n]
        parts["labels"][vid] = [int(x) for x in rng.integers(0, len(IEMOCAP_CLASSES), n)]
        for m, array in _arrays(rng, n).items():
            parts[m][vid] = array
        parts["names"][vid] = [f"{vid}_{g}{k:03d}" for k, g in enumerate(parts["speakers"][vid])]
        parts["sentences"][vid] = [f"sentence {k} of {vid}" for k in range(n)]
    parts["visual"]["Ses02M_script01_1"][1] = 0.0  # a face-less utterance: zeros in the pickle
    parts["train"] = ["Ses01F_impro01", "Ses02M_script01_1"]
    parts["test"] = ["Ses05F_impro03"]
    return parts


def vega_tuple(parts: dict) -> tuple:
    return (parts["speakers"], parts["labels"], parts["text"], parts["audio"], parts["visual"],
            parts["train"], parts["test"])


def sdt12_tuple(parts: dict) -> tuple:
    roberta = [{vid: a + i for vid, a in parts["text"].items()} for i in (1, 2, 3)]  # the unused RoBERTa sets
    return (parts["names"], parts["speakers"], parts["labels"], parts["text"], *roberta, parts["audio"],
            parts["visual"], parts["sentences"], parts["train"], parts["test"])


def meld_13_tuple(seed: int = 1) -> tuple:
    """MELD layout: integer dialogue ids, 9-dim one-hot speakers, id lists stored as sets."""
    rng = np.random.default_rng(seed)
    sizes = {0: 3, 1: 2, 7: 4}
    speakers, labels, names, sentences = {}, {}, {}, {}
    feats = {m: {} for m in DIMS}
    for vid, n in sizes.items():
        slots = rng.integers(0, 9, n)
        speakers[vid] = [[1 if s == j else 0 for j in range(9)] for s in slots]
        labels[vid] = [int(x) for x in rng.integers(0, len(MELD_CLASSES), n)]
        names[vid] = list(range(n))  # MELD stores utterance numbers, not names
        sentences[vid] = [f"meld {vid}/{k}" for k in range(n)]
        for m, array in _arrays(rng, n).items():
            feats[m][vid] = array
    roberta = [feats["text"]] * 3
    return (names, speakers, labels, feats["text"], *roberta, feats["audio"], feats["visual"], sentences,
            {0, 1}, {7}, None)


def _dump(obj, path: Path) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def _paths(root: Path) -> dict[str, Path]:
    return {m: root / f"{m}.h5" for m in DIMS}


def _round_trip(tmp_path: Path, obj: tuple, **import_kw) -> tuple[tuple, Path, dict]:
    source = _dump(obj, tmp_path / "in.pkl")
    manifest = tmp_path / "manifest.tsv"
    summary = pickles.import_pickle(source, manifest, _paths(tmp_path), allow_pickle=True, **import_kw)
    pickles.export_vega(manifest, _paths(tmp_path), tmp_path / "out.pkl")
    return pickles.load_pickle(tmp_path / "out.pkl", allow_pickle=True), manifest, summary


def _assert_same_vega(got: tuple, expected: tuple) -> None:
    """Equal up to dialogue ids becoming strings (id sets come back sorted, numbers numerically)."""
    assert len(got) == 7
    for index in range(5):
        want_by_id = {str(k): v for k, v in expected[index].items()}
        assert set(got[index]) == set(want_by_id)
        for vid, value in want_by_id.items():
            if index >= 2:  # feature arrays: float32 [N, D] (a stored 1 x N x D comes back squeezed)
                want = np.asarray(value, np.float32)
                np.testing.assert_array_equal(got[index][vid], want[0] if want.ndim == 3 else want)
            else:
                assert np.array_equal(np.asarray(got[index][vid]), np.asarray(value)), (index, vid)
    for index in (5, 6):
        ids = expected[index]
        assert got[index] == [str(v) for v in (sorted(ids) if isinstance(ids, set) else ids)]


def test_vega_7_tuple_round_trip(tmp_path):
    parts = iemocap_parts()
    parts["text"]["Ses01F_impro01"] = parts["text"]["Ses01F_impro01"][None]  # 1 x N x D, as VEGA tolerates
    original = vega_tuple(parts)
    got, manifest, summary = _round_trip(tmp_path, original)
    _assert_same_vega(got, original)
    assert got[2]["Ses01F_impro01"].shape == (4, DIMS["text"])  # the leading axis was squeezed
    assert summary["layout"] == "vega7" and summary["format"] == "iemocap"
    assert summary["dims"] == DIMS

    frame = manifest_io.read(manifest)
    assert frame["dialogue_id"].unique().tolist() == ["Ses01F_impro01", "Ses02M_script01_1", "Ses05F_impro03"]
    assert frame.groupby("dialogue_id", sort=False)["split"].first().tolist() == ["train", "train", "test"]
    first = frame.iloc[0]
    assert (first["speaker"], first["speaker_slot"], first["text"]) == ("Ses01_F", 1, "")
    assert frame.iloc[1]["speaker_slot"] == 0  # 'M' -> 0, the model's convention
    assert first["label"] == IEMOCAP_CLASSES[parts["labels"]["Ses01F_impro01"][0]]
    assert first["utterance_id"] == "Ses01F_impro01_u0"

    visual = feature_io.read(tmp_path / "visual.h5", expected_ids=frame["utterance_id"].tolist())
    assert visual.attrs["extractor"] == "pickle" and visual.attrs["modality"] == "visual"
    assert visual.present.sum() == len(frame) - 1
    assert json.loads(visual.attrs["absent"]) == {"Ses02M_script01_1_u1": "all_zero_in_pickle"}
    assert len(visual.attrs["source_sha256"]) == 64


def test_a_pickle_of_tensors_saved_on_a_gpu_imports_on_a_machine_without_one(tmp_path, monkeypatch):
    """Features kept as torch tensors in a GPU session are pickled with their device: torch's unpickling then needs
    CUDA, and the import stopped with "not a pickle of the expected layout". They are rebuilt on the CPU. The GPU
    is simulated: every storage is written as if it were on cuda:0."""
    import torch
    import torch.serialization

    parts = iemocap_parts()
    for modality in DIMS:
        parts[modality] = {vid: torch.from_numpy(array) for vid, array in parts[modality].items()}
    with monkeypatch.context() as patched:
        patched.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        source = _dump(vega_tuple(parts), tmp_path / "gpu.pkl")
    assert b"cuda:0" in source.read_bytes()
    if not torch.cuda.is_available():  # what the file does to torch's own unpickling here
        with pytest.raises(RuntimeError, match="CUDA"):
            pickle.loads(source.read_bytes())
    loaded = pickles.load_pickle(source, allow_pickle=True)
    assert loaded[2]["Ses01F_impro01"].device.type == "cpu"
    summary = pickles.import_pickle(source, tmp_path / "manifest.tsv", _paths(tmp_path), allow_pickle=True)
    assert summary["layout"] == "vega7"
    frame = manifest_io.read(tmp_path / "manifest.tsv")
    text = feature_io.read(tmp_path / "text.h5", expected_ids=frame["utterance_id"].tolist())
    np.testing.assert_array_equal(text.rows(frame["utterance_id"].tolist()[:4])[0],
                                  parts["text"]["Ses01F_impro01"].numpy())


def test_a_re_import_stopped_between_its_feature_files_leaves_no_manifest_beside_the_mix(tmp_path):
    """The manifest means "these files are one import": a second pickle imported into the same folder that
    stops after its text and audio files (a kill; here the visual file cannot be written) must not leave
    the first import's manifest beside them, or export-vega and predict take the mix of both pickles."""
    first = _dump(vega_tuple(iemocap_parts(seed=0)), tmp_path / "first.pkl")
    pickles.import_pickle(first, tmp_path / "manifest.tsv", _paths(tmp_path), allow_pickle=True)
    (tmp_path / "blocker").write_text("a file where the visual file's folder would be")
    second = _dump(vega_tuple(iemocap_parts(seed=1)), tmp_path / "second.pkl")
    paths = {**_paths(tmp_path), "visual": tmp_path / "blocker" / "visual.h5"}
    with pytest.raises(OSError):
        pickles.import_pickle(second, tmp_path / "manifest.tsv", paths, allow_pickle=True)
    assert feature_io.read(tmp_path / "text.h5").attrs["source_file"] == str(second)  # the mix is on disk
    assert not (tmp_path / "manifest.tsv").exists()
    with pytest.raises(manifest_io.ManifestError, match="does not exist"):
        pickles.export_vega(tmp_path / "manifest.tsv", _paths(tmp_path), tmp_path / "out.pkl")
    with pytest.raises(ValueError, match="written as manifest.tsv"):
        pickles.import_pickle(first, tmp_path / "other.tsv", {}, allow_pickle=True)


def test_sdt_12_tuple_imports_names_and_sentences_and_exports_the_vega_subset(tmp_path):
    parts = iemocap_parts(seed=3)
    original = sdt12_tuple(parts)
    got, manifest, summary = _round_trip(tmp_path, original)
    assert summary["layout"] == "sdt12"
    _assert_same_vega(got, tuple(original[i] for i in (1, 2, 3, 7, 8, 10, 11)))  # roberta1 is the text
    frame = manifest_io.read(manifest)
    assert frame["utterance_id"].tolist() == [u for vid in parts["train"] + parts["test"] for u in parts["names"][vid]]
    assert frame["text"].tolist()[:2] == ["sentence 0 of Ses01F_impro01", "sentence 1 of Ses01F_impro01"]


def test_meld_13_tuple_round_trip_with_a_carved_valid_split(tmp_path):
    original = meld_13_tuple()
    got, manifest, summary = _round_trip(tmp_path, original, valid_dialogues=["1"], dataset="meld_pkl")
    assert summary["format"] == "meld" and summary["splits"] == {"test": 1, "train": 1, "valid": 1}
    _assert_same_vega(got, tuple(original[i] for i in (1, 2, 3, 7, 8, 10, 11)))  # valid rejoins train
    frame = manifest_io.read(manifest)
    assert set(frame["dataset"]) == {"meld_pkl"}
    assert frame.loc[frame["dialogue_id"] == "1", "split"].unique().tolist() == ["valid"]
    hot = [int(np.argmax(v)) for v in original[1][0]]
    assert frame.loc[frame["dialogue_id"] == "0", "speaker_slot"].tolist() == hot
    assert frame.loc[frame["dialogue_id"] == "0", "label"].tolist() == [MELD_CLASSES[i] for i in original[2][0]]

    pickles.export_vega(manifest, _paths(tmp_path), tmp_path / "no_valid.pkl", valid_as="drop")
    dropped = pickles.load_pickle(tmp_path / "no_valid.pkl", allow_pickle=True)
    assert dropped[5] == ["0"] and dropped[6] == ["7"] and "1" not in dropped[1]
    assert dropped[0]["0"] == [list(v) for v in original[1][0]]  # 9-dim one-hot lists


def test_loading_needs_explicit_consent_and_never_runs_the_payload(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    source = _dump(Payload(), tmp_path / "evil.pkl")
    with pytest.raises(pickles.PickleNotAllowedError, match="allow_pickle=True"):
        pickles.import_pickle(source, tmp_path / "m.tsv", _paths(tmp_path))
    assert not marker.exists() and not (tmp_path / "m.tsv").exists()
    with pytest.raises(pickles.PickleNotAllowedError, match="arbitrary code"):
        pickles.load_pickle(source, allow_pickle="yes")  # only the literal True opts in
    assert not marker.exists()


def test_bad_content_is_named(tmp_path):
    parts = iemocap_parts()
    parts["labels"]["Ses02M_script01_1"][2] = 6  # IEMOCAP has ids 0..5
    with pytest.raises(pickles.PickleFormatError, match=r"dialogue Ses02M_script01_1 utterance 2: label id 6"):
        pickles.parse_pickle(vega_tuple(parts))

    parts = iemocap_parts()
    parts["audio"]["Ses05F_impro03"] = parts["audio"]["Ses05F_impro03"][:4]
    with pytest.raises(pickles.PickleFormatError, match=r"dialogue Ses05F_impro03 audio: .*\(4, 5\) for 5 utterances"):
        pickles.parse_pickle(vega_tuple(parts))

    meld = list(meld_13_tuple())
    meld[1][7][0] = [0] * 9
    with pytest.raises(pickles.PickleFormatError, match="dialogue 7 utterance 0: MELD speaker"):
        pickles.to_project(pickles.parse_pickle(tuple(meld)))

    with pytest.raises(pickles.PickleFormatError, match="7-tuple"):
        pickles.load_pickle(_dump((1, 2, 3), tmp_path / "short.pkl"), allow_pickle=True)
    with pytest.raises(ValueError, match="not train dialogues"):
        pickles.to_project(pickles.parse_pickle(vega_tuple(iemocap_parts())), valid_dialogues=["Ses05F_impro03"])


def _with(change) -> tuple:
    parts = iemocap_parts()
    change(parts)
    return vega_tuple(parts)


@pytest.mark.parametrize("change, message", [
    (lambda p: p["labels"].update(Ses01F_impro01=[1.7, 2.0, 0.0, 3.0]),
     r"dialogue Ses01F_impro01 utterance 0: label 1.7 is not a whole number; labels are class ids 0..5"),
    (lambda p: p["labels"].update(Ses01F_impro01=[0.0, float("nan"), 1.0, 1.0]), r"utterance 1: label nan"),
    (lambda p: p["labels"].update(Ses01F_impro01=["hap", "sad", "neu", "ang"]),
     r"dialogue Ses01F_impro01: labels \['hap', 'sad', 'neu', 'ang'\] are not numbers.*set the dataset's `classes`"),
    (lambda p: p["labels"].update(Ses01F_impro01=np.eye(6)[[0, 1, 2, 3]]), r"labels of shape \(4, 6\).*not one-hot"),
    (lambda p: p["labels"].update(Ses01F_impro01=None), r"dialogue Ses01F_impro01: labels \[None\] are not numbers"),
    (lambda p: p["speakers"].update(Ses01F_impro01=None),
     r"dialogue Ses01F_impro01: TypeError: .*does not follow a VEGA 7-tuple's layout there"),
    (lambda p: p["text"].update(Ses01F_impro01=[[0.0] * 8, [0.0] * 8, [0.0] * 8, [0.0] * 7]),
     r"dialogue Ses01F_impro01 text: utterance 3 has 7 feature values, utterance 0 has 8; every utterance"),
    (lambda p: p["audio"].update(Ses05F_impro03=np.zeros((5, 7), np.float32)),
     r"audio features have different widths across dialogues \[5, 7\]: dialogue Ses05F_impro03 has 7, dialogue "
     r"Ses01F_impro01 5"),
    (lambda p: p.update(train="Ses01F_impro01"), r"the train id list is a str; expected a list of dialogue ids"),
    (lambda p: p.update(train=None), r"the train id list is a NoneType"),
    (lambda p: p["train"].append("Ses01F_impro01"),
     r"dialogue\(s\) \['Ses01F_impro01'\] appear more than once in the train id list"),
])
def test_malformed_content_names_the_dialogue_and_what_to_fix(change, message):
    with pytest.raises(pickles.PickleFormatError, match=message):
        pickles.parse_pickle(_with(change), source="x.pkl")


def test_a_gzipped_pickle_and_values_beyond_float32_are_named_as_such(tmp_path):
    import gzip

    path = tmp_path / "IEMOCAP.pkl"
    path.write_bytes(gzip.compress(pickle.dumps(vega_tuple(iemocap_parts()))))
    with pytest.raises(pickles.PickleFormatError, match=r"it is gzip-compressed: decompress it first"):
        pickles.load_pickle(path, allow_pickle=True)
    parts = iemocap_parts()  # a finite float64 that float32 cannot hold was called "non-finite"
    first = next(iter(parts["audio"]))
    parts["audio"][first] = np.array(parts["audio"][first], dtype=np.float64)
    parts["audio"][first][1, 0] = 1e40
    with pytest.raises(pickles.PickleFormatError, match=rf"dialogue {first} audio: utterance 1 has feature values "
                                                        r"beyond float32's range"):
        pickles.parse_pickle(vega_tuple(parts))


def test_speakers_of_the_other_dataset_and_unlisted_dialogues_are_named(tmp_path):
    declared_meld = (r"declared MELD \(labels: meld, or --format meld\), but every dialogue id is IEMOCAP's .*Set the "
                     r"dataset's labels: iemocap")
    with pytest.raises(pickles.PickleFormatError, match=declared_meld):
        pickles.to_project(pickles.parse_pickle(vega_tuple(iemocap_parts()), fmt="meld"))
    # Its speakers as one-hot vectors passed as MELD's: every label was renamed (frustrated read as disgust), silently.
    parts = iemocap_parts()
    parts["speakers"] = {d: [[1, 0] if s == "M" else [0, 1] for s in v] for d, v in parts["speakers"].items()}
    with pytest.raises(pickles.PickleFormatError, match=declared_meld):
        pickles.parse_pickle(vega_tuple(parts), fmt="meld")
    assert pickles.parse_pickle(vega_tuple(parts)).fmt == "iemocap"  # undeclared: guessed right
    parts = iemocap_parts()
    parts["train"] = ["Ses01F_impro01"]
    _, manifest, _ = _round_trip(tmp_path, vega_tuple(parts))
    summary = json.loads((manifest.parent / "summary.json").read_text())
    assert summary["not_imported"]["dialogues"] == 1 and summary["not_imported"]["first"] == ["Ses02M_script01_1"]


def test_an_iemocap_tuple_with_one_hot_speakers_is_read_as_iemocap():
    """Some conversions store IEMOCAP's speakers one-hot ([1, 0] = M, [0, 1] = F); such a tuple was guessed to be
    MELD's, its label ids renamed with MELD's classes."""
    parts = iemocap_parts()
    letters = copy.deepcopy(parts["speakers"])
    renamed = {str(k): v for k, v in enumerate(parts["train"] + parts["test"])}
    for key in ("speakers", "labels", "text", "audio", "visual"):
        parts[key] = {next(k for k, v in renamed.items() if v == vid): value for vid, value in parts[key].items()}
    parts["speakers"] = {vid: [[1, 0] if g == "M" else [0, 1] for g in genders]
                         for vid, genders in parts["speakers"].items()}
    parts["train"], parts["test"] = ["0", "1"], ["2"]
    ds = pickles.parse_pickle(vega_tuple(parts))
    assert ds.fmt == "iemocap"
    frame, _ = pickles.to_project(ds)
    expected = [{"M": 0, "F": 1}[g] for vid in ("Ses01F_impro01", "Ses02M_script01_1", "Ses05F_impro03")
                for g in letters[vid]]
    assert frame["speaker_slot"].tolist() == expected


def test_export_refuses_speakers_the_layout_cannot_hold(tmp_path):
    original = vega_tuple(iemocap_parts())
    _round_trip(tmp_path, original)
    frame = manifest_io.read(tmp_path / "manifest.tsv")
    frame.loc[0, "speaker_slot"] = 2
    manifest_io.write(frame, tmp_path / "manifest.tsv")
    with pytest.raises(ValueError, match="Ses01F_impro01_u0: IEMOCAP speaker_slot 2"):
        pickles.export_vega(tmp_path / "manifest.tsv", _paths(tmp_path), tmp_path / "bad.pkl")
    assert not (tmp_path / "bad.pkl").exists()


def test_export_checks_each_files_modality_and_zeros_absent_rows(tmp_path):
    _round_trip(tmp_path, vega_tuple(iemocap_parts()))
    paths = _paths(tmp_path)
    with pytest.raises(ValueError, match=r"text.h5 holds 'text' features but was given as the 'audio' file"):
        pickles.export_vega(tmp_path / "manifest.tsv", {**paths, "audio": paths["text"]}, tmp_path / "bad.pkl")
    with pytest.raises(ValueError, match=r"no audio or visual feature file was given \(--features on the command "
                                         r"line, feature_paths in Python\); .* a text-only dataset cannot be exported"):
        pickles.export_vega(tmp_path / "manifest.tsv", {"text": paths["text"]}, tmp_path / "bad.pkl")
    visual = feature_io.read(paths["visual"])
    absent = ~visual.present
    assert absent.any()  # the pickle's all-zero row
    visual.features[absent] = 99.0  # a file from elsewhere may hold anything at its absent rows
    feature_io.write(paths["visual"], visual)
    pickles.export_vega(tmp_path / "manifest.tsv", paths, tmp_path / "out.pkl")
    exported = pickles.load_pickle(tmp_path / "out.pkl", allow_pickle=True)[4]
    assert not any((np.asarray(rows) == 99.0).any() for rows in exported.values())


# ------------------------------------------------------------------------------------------ summary.json, valid split

def test_the_command_line_import_writes_summary_json_and_a_validation_split_so_it_trains(tmp_path, capsys):
    from ercpipe import cli
    from ercpipe.train.data import read_classes

    obj = meld_13_tuple()
    source = _dump(obj, tmp_path / "MELD.pkl")
    out = tmp_path / "features" / "meld_pkl"
    assert cli.main(["import-pickle", str(source), "--allow-pickle", "--out-dir", str(out),
                     "--valid-fraction", "0.5", "--valid-seed", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == list(MELD_CLASSES) and summary["format"] == "sdt_pickle"
    assert read_classes(out / "manifest.tsv") == list(MELD_CLASSES)  # what training reads
    assert summary["valid_split"]["protocol"] == "fraction" and summary["valid_split"]["seed"] == 3
    assert summary["dialogues_per_split"] == {"train": 1, "valid": 1, "test": 1}
    frame = manifest_io.read(out / "manifest.tsv")
    assert sorted(frame.loc[frame["split"] == "valid", "dialogue_id"].unique()) == summary["valid_split"]["dialogues"]
    assert (out / "issues.tsv").exists() and (out / "text" / "pickle.h5").exists()
    # export-vega's --valid-as: the valid dialogue joins the train list (default) or is left out.
    valid = summary["valid_split"]["dialogues"]
    features = [f"{m}={out / m / 'pickle.h5'}" for m in ("text", "audio", "visual")]
    for valid_as, in_train in (("train", True), ("drop", False)):
        exported = tmp_path / f"vega_{valid_as}.pkl"
        assert cli.main(["export-vega", "--manifest", str(out / "manifest.tsv"), "--features", *features,
                         "--out", str(exported), "--valid-as", valid_as]) == 0
        vega = pickle.loads(exported.read_bytes())
        assert (set(valid) <= set(vega[5])) == in_train and not set(valid) & set(vega[6])
    # The same seed draws the same dialogues; another seed may not, and is recorded.
    again = tmp_path / "again"
    assert cli.main(["import-pickle", str(source), "--allow-pickle", "--out-dir", str(again),
                     "--valid-fraction", "0.5", "--valid-seed", "3"]) == 0
    assert json.loads((again / "summary.json").read_text())["valid_split"] == summary["valid_split"]
    # Options that contradict each other are refused by the parser.
    with pytest.raises(SystemExit):
        cli.main(["import-pickle", str(source), "--allow-pickle", "--out-dir", str(again), "--valid-standard",
                  "--no-valid"])
    with pytest.raises(SystemExit):
        cli.main(["import-pickle", str(source), "--allow-pickle", "--out-dir", str(again), "--valid-seed", "1"])


def test_default_validation_split_of_the_command_line(tmp_path, capsys):
    from ercpipe import cli

    # IEMOCAP labels: the standard validation dialogues, which this small file does not hold -> the fix is named.
    source = _dump(vega_tuple(iemocap_parts()), tmp_path / "IEMOCAP.pkl")
    assert cli.main(["import-pickle", str(source), "--allow-pickle", "--out-dir", str(tmp_path / "a")]) == 2
    assert "standard IEMOCAP validation dialogue(s)" in capsys.readouterr().err
    assert cli.main(["import-pickle", str(source), "--allow-pickle", "--out-dir", str(tmp_path / "b"),
                     "--valid-dialogues", "Ses01F_impro01"]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["dialogues_per_split"] == {"train": 1, "valid": 1, "test": 1}
    assert cli.main(["import-pickle", str(source), "--allow-pickle", "--out-dir", str(tmp_path / "c"),
                     "--no-valid"]) == 0
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["valid_split"]["protocol"] == "none"


def test_own_class_names_for_the_label_ids(tmp_path):
    parts = iemocap_parts()
    for vid in parts["labels"]:
        parts["labels"][vid] = [x % 4 for x in parts["labels"][vid]]
    source = _dump(vega_tuple(parts), tmp_path / "four.pkl")
    classes = ["neu", "hap", "sad", "ang"]
    pickles.import_pickle(source, tmp_path / "manifest.tsv", {}, allow_pickle=True, classes=classes)
    frame = manifest_io.read(tmp_path / "manifest.tsv")
    assert frame["label"].tolist() == [classes[x] for v in parts["train"] + parts["test"] for x in parts["labels"][v]]
    assert json.loads((tmp_path / "summary.json").read_text())["classes"] == classes
    with pytest.raises(pickles.PickleFormatError, match=r"label id [23] is not a class id of \['neu', 'hap'\]"):
        pickles.parse_pickle(vega_tuple(parts), classes=["neu", "hap"])
    with pytest.raises(ValueError, match=r"has duplicate names \(compared after Unicode NFC normalization\)"):
        pickles.parse_pickle(vega_tuple(parts), classes=["caf\u00e9", "cafe\u0301", "sad", "ang"])


def test_guessed_class_names_that_the_labels_do_not_fill_are_warned_about(caplog):
    """Four label ids under IEMOCAP's six guessed names: the import used to say nothing."""
    parts = iemocap_parts()
    for vid in parts["labels"]:
        parts["labels"][vid] = [x % 3 for x in parts["labels"][vid]]
    with caplog.at_level("WARNING"):
        pickles.parse_pickle(vega_tuple(parts))
    assert "the labels use class ids 0..2 only, but the class names are iemocap's 6" in caplog.text
    assert "give them in label-id order as the dataset's `classes:`" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        pickles.parse_pickle(vega_tuple(parts), classes=["neu", "hap", "sad", "ang"])
    assert "label ids" not in caplog.text and "class ids" not in caplog.text


def test_the_standard_split_file_is_the_iemocap_readers():
    from ercpipe.datasets.iemocap import DEFAULT_SPLIT_FILE

    assert pickles.STANDARD_SPLIT_FILE == DEFAULT_SPLIT_FILE


def test_a_standard_test_dialogue_in_the_train_list_is_named_and_warned_about(tmp_path, caplog):
    """With the standard validation dialogues taken out of the train list, a standard test dialogue left in
    it would be trained on: the check used to look only at the pickle's test list."""
    valid, test = pickles._standard_valid()
    rng = np.random.default_rng(3)
    train_ids, test_ids = [*valid, test[0]], test[1:3]
    parts = {"speakers": {}, "labels": {}, "text": {}, "audio": {}, "visual": {}}
    for vid in train_ids + test_ids:
        parts["speakers"][vid], parts["labels"][vid] = ["F", "M"], [0, 1]
        for m, array in _arrays(rng, 2).items():
            parts[m][vid] = array
    source = _dump((parts["speakers"], parts["labels"], parts["text"], parts["audio"], parts["visual"], train_ids,
                    test_ids), tmp_path / "IEMOCAP.pkl")
    with caplog.at_level("WARNING"):
        pickles.import_pickle(source, tmp_path / "manifest.tsv", {}, allow_pickle=True, valid_split="default")
    assert f"1 standard IEMOCAP test dialogue(s) are in the pickle's train list and will be trained on: {test[0]}" \
        in caplog.text
    checks = {c["check"]: c for c in json.loads((tmp_path / "summary.json").read_text())["checks"]}
    inside = checks["no standard IEMOCAP test dialogue in the pickle's train list"]
    assert not inside["ok"] and inside["extra"] == [test[0]]
    # Lists are kept whole, so the report's count is the real one (it used to count a list cut to 10).
    assert len(checks["test dialogues are the standard IEMOCAP test split"]["missing"]) == len(test) - 3
    from ercpipe.report import release_checks

    table = release_checks(list(checks.values())).set_index("check")
    assert table.loc["no standard IEMOCAP test dialogue in the pickle's train list", "extra"] == test[0]
    assert table.loc["test dialogues are the standard IEMOCAP test split", "missing"].endswith(
        f"... ({len(test) - 3} in all)")


def test_numbered_utterances_of_sdt_meld_pickles_are_not_warned_about(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        _round_trip(tmp_path, meld_13_tuple(), valid_dialogues=["1"], dataset="meld_pkl")
    assert "does not name its" not in caplog.text


def test_an_empty_dialogue_is_said_and_listed_not_dropped_silently(tmp_path, caplog):
    parts = iemocap_parts()
    parts["train"].append("Ses02F_impro01")
    for key in ("speakers", "labels"):
        parts[key]["Ses02F_impro01"] = []
    for m in DIMS:
        parts[m]["Ses02F_impro01"] = []  # as lists; (0, D) arrays are read the same way
    with caplog.at_level("WARNING"):
        summary = pickles.import_pickle(_dump(vega_tuple(parts), tmp_path / "in.pkl"), tmp_path / "manifest.tsv",
                                        _paths(tmp_path), allow_pickle=True, valid_dialogues=["Ses01F_impro01"])
    assert "1 dialogue(s) hold no utterances and are not imported: ['Ses02F_impro01']" in caplog.text
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["not_imported"]["first"] == ["Ses02F_impro01"] and summary["dialogues"] == 3
    assert "Ses02F_impro01" not in set(manifest_io.read(tmp_path / "manifest.tsv")["dialogue_id"])


def test_a_full_disk_during_the_command_line_import_names_the_file_and_what_to_do(tmp_path):
    """`ercpipe import-pickle` onto a full disk printed `[Errno 28] Can't close file`, without a file name, and then
    crashed with a segmentation fault (HDF5 could not close the file it had failed to write). Here: a file size
    limit of 4 KiB, below a feature file's size."""
    import resource
    import subprocess
    import sys

    source = _dump(meld_13_tuple(), tmp_path / "MELD.pkl")
    out = tmp_path / "features" / "meld_pkl"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = subprocess.run([str(Path(sys.executable).with_name("ercpipe")), "import-pickle", str(source),
                             "--allow-pickle", "--out-dir", str(out), "--valid-fraction", "0.5"],
                            capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert result.returncode == 2, result.stderr[-2000:]  # not -11 (SIGSEGV)
    last = result.stderr.splitlines()[-1]  # (after the import's INFO lines)
    assert last.startswith(f"ercpipe: error: could not write {out}/"), result.stderr
    assert "ulimit -f" in last and "Traceback" not in result.stderr
    assert not [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".")]  # no temporary file left
    assert not (out / "manifest.tsv").exists()
