"""IEMOCAP reader on small hand-written release trees (real wav / avi files, real split file)."""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import python_as_a_user
from ercpipe import config as pipeline_config
from ercpipe.datasets import iemocap
from ercpipe.datasets.build import build_manifest
from ercpipe.io import manifest as manifest_io
from ercpipe.io.manifest import ManifestError
from ercpipe.labels import IEMOCAP_CLASSES

SHARED_SPLIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "iemocap" / "standard_split.json"

# (utterance suffix, start, end, label, text); written to EmoEvaluation in this (not time) order.
DIALOGUES = {
    "Ses01F_impro01": [
        ("F002", 7.0, 8.0, "hap", "I am glad."),
        ("F000", 1.0, 2.0, "neu", "Excuse me."),
        ("M000", 2.5, 3.5, "fru", "Yeah?"),
        ("F001", 4.0, 5.0, "xxx", "Do you have a form?"),
        ("M001", 5.5, 6.5, "sur", "Oh!"),
    ],
    "Ses01M_impro01": [  # valid in the standard split
        ("M000", 0.5, 1.5, "ang", "No."),
        ("F000", 2.0, 3.0, "sad", "Sorry."),
        ("M001", 3.5, 4.5, "exc", "Great!"),
    ],
    "Ses05F_impro01": [  # test
        ("F000", 0.2, 1.2, "neu", "Hi."),
        ("M000", 1.4, 2.0, "hap", "Hello there."),
    ],
}


def write_wav(path: Path, seconds: float = 0.3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)


def write_avi(path: Path, frames: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i % 256, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def emo_block(uid: str, start: float, end: float, label: str) -> str:
    return (f"[{start:.4f} - {end:.4f}]\t{uid}\t{label}\t[2.5000, 2.5000, 2.5000]\n"
            f"C-E1:\tNeutral;\t()\nC-E2:\tNeutral;\t()\nA-E1:\tval 3; act 2; dom  2;\t()\n\n")


def make_release(root: Path, dialogues: dict = DIALOGUES) -> Path:
    for dialogue, utterances in dialogues.items():
        session = root / f"Session{int(dialogue[3:5])}"
        emo = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        emo += "".join(emo_block(f"{dialogue}_{u}", s, e, lab) for u, s, e, lab, _ in utterances)
        (session / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        (session / "dialog" / "EmoEvaluation" / f"{dialogue}.txt").write_text(emo)
        # Transcriptions are in time order and hold a line without an utterance id, as the real ones do.
        lines = [f"{dialogue}_{u} [{s:08.4f}-{e:08.4f}]: {text}" for u, s, e, _, text in sorted(
            utterances, key=lambda x: x[1])]
        (session / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
        (session / "dialog" / "transcriptions" / f"{dialogue}.txt").write_text(
            "\n".join(lines[:1] + ["M: [BREATHING]"] + lines[1:]) + "\n")
        # Longer than every utterance, as the release's are (4 frames per second).
        write_avi(session / "dialog" / "avi" / "DivX" / f"{dialogue}.avi", frames=4 * int(max(
            e for _, _, e, _, _ in utterances) + 3))
        for u, *_ in utterances:
            write_wav(session / "sentences" / "wav" / dialogue / f"{dialogue}_{u}.wav")
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release")


@pytest.fixture
def fresh_release(tmp_path) -> Path:
    return make_release(tmp_path / "IEMOCAP_full_release")


def cfg(root: Path, **extra) -> dict:
    return {"format": "iemocap", "root": str(root), "split_file": str(SHARED_SPLIT), **extra}


def read_outputs(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    issues = pd.read_csv(out / "issues.tsv", sep="\t", dtype=str, keep_default_na=False)
    return manifest_io.read(out / "manifest.tsv"), issues, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def built(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    build_manifest("iemocap_test", cfg(release), out)
    return read_outputs(out)


def test_rows_order_speakers_and_media(built, release):
    df, _, _ = built
    # train, valid, test dialogues in that order; utterances in time order, not file order.
    assert df["dialogue_id"].unique().tolist() == ["Ses01F_impro01", "Ses01M_impro01", "Ses05F_impro01"]
    first = df[df["dialogue_id"] == "Ses01F_impro01"]
    assert first["utterance_id"].tolist() == ["Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_F002"]
    assert first["utterance_index"].tolist() == [0, 1, 2]
    assert first["speaker"].tolist() == ["Ses01_F", "Ses01_M", "Ses01_F"]
    assert first["speaker_slot"].tolist() == [1, 0, 1]
    assert first["text"].tolist() == ["Excuse me.", "Yeah?", "I am glad."]
    row = first.iloc[0]
    assert row["audio_path"] == str(release / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav")
    assert math.isnan(row["audio_start"]) and math.isnan(row["audio_end"])
    assert row["video_path"] == str(release / "Session1/dialog/avi/DivX/Ses01F_impro01.avi")
    assert (row["video_start"], row["video_end"]) == (1.0, 2.0)
    assert (df["flags"] == "").all()
    assert df.groupby("dialogue_id")["split"].first().to_dict() == {
        "Ses01F_impro01": "train", "Ses01M_impro01": "valid", "Ses05F_impro01": "test"}


def test_dropped_labels_recorded_with_file_and_line(built, release):
    df, issues, summary = built
    assert "xxx" not in set(df["label"]) and "sur" not in set(df["label"])
    rejected = issues[issues["action"] == "rejected"].set_index("utterance_id")
    assert set(rejected.index) == {"Ses01F_impro01_F001", "Ses01F_impro01_M001"}
    assert (rejected["reason"] == "label_not_in_classes").all()
    emo_file = release / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    lines = emo_file.read_text().splitlines()
    row = rejected.loc["Ses01F_impro01_F001"]
    assert row["file"] == str(emo_file)
    assert "Ses01F_impro01_F001\txxx" in lines[int(row["line"]) - 1]
    assert summary["rejected_counts"] == {"label_not_in_classes": 2}


def test_summary_counts_and_reference_checks(built):
    df, _, summary = built
    assert summary["format"] == "iemocap"
    assert summary["classes"] == list(IEMOCAP_CLASSES)
    assert summary["counts_per_split"] == {"train": 3, "valid": 3, "test": 2}
    assert summary["dialogues_per_split"] == {"train": 1, "valid": 1, "test": 1}
    assert summary["counts_per_label"] == {"hap": 2, "sad": 1, "neu": 2, "ang": 1, "exc": 1, "fru": 1}
    assert summary["flag_counts"] == {}
    checks = {c["check"]: c for c in summary["checks"]}
    assert checks["dialogues"] == {"check": "dialogues", "ok": False, "expected": 151, "found": 3}
    assert checks["train+valid utterances"]["found"] == 6 and checks["test utterances"]["found"] == 2
    present = checks["split-file dialogues present in the raw tree"]
    assert present["found"] == 3 and len(present["missing"]) == 148 and "Ses05F_impro02" in present["missing"]
    # Per-dialogue counts are compared with the split file's utterances_per_dialogue.
    assert checks["utterances in Ses01F_impro01"] == {"check": "utterances in Ses01F_impro01", "ok": False,
                                                      "expected": 26, "found": 3}
    assert summary["checks_ok"] is False


def test_a_split_file_of_ones_own_is_the_reference_of_the_checks(release, tmp_path):
    """With a split file of one's own the totals were still the standard release's (151 dialogues, 5810 / 1623
    utterances), so a complete subset never passed its checks; per-dialogue counts were shown only when wrong."""
    split = {"train": ["Ses01F_impro01"], "valid": ["Ses01M_impro01"], "test": ["Ses05F_impro01"],
             "utterances_per_dialogue": {"Ses01F_impro01": 3, "Ses01M_impro01": 3, "Ses05F_impro01": 2}}
    (tmp_path / "split.json").write_text(json.dumps(split))
    build_manifest("d", cfg(release, split_file=str(tmp_path / "split.json")), tmp_path / "own")
    summary = json.loads((tmp_path / "own/summary.json").read_text())
    checks = {c["check"]: (c["expected"], c["found"]) for c in summary["checks"]}
    assert checks == {"dialogues": (3, 3), "train+valid utterances": (6, 6), "test utterances": (2, 2),
                      "split-file dialogues present in the raw tree": (3, 3),
                      "dialogues whose utterance count matches the split file": (3, 3)}
    assert summary["checks_ok"] is True
    split["utterances_per_dialogue"]["Ses05F_impro01"] = 5
    del split["utterances_per_dialogue"]["Ses01M_impro01"]  # no count for a train+valid dialogue: no such total
    (tmp_path / "split.json").write_text(json.dumps(split))
    build_manifest("d", cfg(release, split_file=str(tmp_path / "split.json")), tmp_path / "wrong")
    summary = json.loads((tmp_path / "wrong/summary.json").read_text())
    checks = {c["check"]: (c["expected"], c["found"]) for c in summary["checks"]}
    assert "train+valid utterances" not in checks and checks["test utterances"] == (5, 2)
    assert "dialogues whose utterance count matches the split file" not in checks  # a difference has its row
    assert checks["utterances in Ses05F_impro01"] == (5, 2) and summary["checks_ok"] is False


def test_default_split_file_is_the_standard_split(release, tmp_path):
    assert iemocap.DEFAULT_SPLIT_FILE.read_text() == SHARED_SPLIT.read_text()
    build_manifest("d", {"format": "iemocap", "root": str(release)}, tmp_path)
    # Named by what it is: its absolute path is the checkout's, and a moved project must read the same.
    assert json.loads((tmp_path / "summary.json").read_text())["split_file"] == "the standard split"
    from ercpipe.datasets.fingerprint import dataset_fingerprint

    sources = dataset_fingerprint("d", {"format": "iemocap", "root": str(release)}, 1).sources
    assert sources and str(iemocap.DEFAULT_SPLIT_FILE) not in sources  # no input of the manifest jobs either
    own = tmp_path / "split.json"
    own.write_text(SHARED_SPLIT.read_text())
    assert str(own) in dataset_fingerprint("d", {"format": "iemocap", "root": str(release), "split_file": str(own)},
                                           1).sources


def test_relabel_and_dialogue_outside_split(release, tmp_path, caplog):
    split = {"train": ["Ses01F_impro01"], "valid": [], "test": ["Ses05F_impro01"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        build_manifest("d", cfg(release, split_file=str(tmp_path / "split.json"), relabel={"sur": "hap"}), out)
    assert (f"dialogue Ses01M_impro01 ({release}/Session1/dialog/EmoEvaluation/Ses01M_impro01.txt) is not in the "
            f"split file {tmp_path / 'split.json'}: its utterances are not used") in caplog.text
    df, issues, summary = read_outputs(out)
    row = df.set_index("utterance_id").loc["Ses01F_impro01_M001"]
    assert row["label"] == "hap" and row["flags"] == "relabelled"
    assert summary["flag_counts"] == {"relabelled": 1}
    outside = issues[issues["reason"] == "dialogue_not_in_split"]
    assert sorted(outside["utterance_id"]) == ["Ses01M_impro01_F000", "Ses01M_impro01_M000", "Ses01M_impro01_M001"]
    assert "Ses01M_impro01" not in set(df["dialogue_id"])
    flagged = issues[issues["action"] == "flagged"]
    assert flagged[["reason", "utterance_id"]].values.tolist() == [["relabelled", "Ses01F_impro01_M001"]]


def test_relabel_keys_match_labels_in_any_case_and_a_key_matching_nothing_is_warned_about(release, tmp_path,
                                                                                          caplog):
    """Labels are lower-cased before lookup; a key written `Sur` used to match nothing, silently."""
    split = {"train": ["Ses01F_impro01"], "valid": [], "test": ["Ses05F_impro01"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    build_manifest("d", cfg(release, split_file=str(tmp_path / "split.json"), relabel={"Sur": "hap"}), tmp_path / "a")
    assert manifest_io.read(tmp_path / "a/manifest.tsv").set_index("utterance_id").loc[
        "Ses01F_impro01_M001", "label"] == "hap"
    with caplog.at_level("WARNING"):
        build_manifest("d", cfg(release, split_file=str(tmp_path / "split.json"), relabel={"surprise": "hap"}),
                       tmp_path / "b")
    assert "relabel key(s) ['surprise'] match no label" in caplog.text
    with pytest.raises(ValueError, match=r"relabel: keys \['Sur', 'sur'\] name the same label more than once"):
        build_manifest("d", cfg(release, relabel={"Sur": "hap", "sur": "neu"}), tmp_path / "c")


def test_an_indented_block_header_and_repaired_transcript_text(fresh_release, tmp_path):
    """An EmoEvaluation block header with leading whitespace used to be skipped (its utterance then reported as
    having no block); transcriptions were not repaired or flagged as MELD's and CSV rows are."""
    emo = fresh_release / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    emo.write_text(emo.read_text().replace("[", " [", 1))
    transcript = fresh_release / "Session1/dialog/transcriptions/Ses01F_impro01.txt"
    lines = transcript.read_text().splitlines()
    first, second = next(k for k, line in enumerate(lines) if "_F000" in line), \
        next(k for k, line in enumerate(lines) if "_M000" in line)
    lines[first] = lines[first].split("]: ")[0] + "]: It\u00e2\u20ac\u2122s here."  # UTF-8 read as cp1252 once
    data = ("\n".join(lines) + "\n").encode("utf-8")
    cp1252 = (lines[second].split("]: ")[0] + "]: ").encode() + "It\u2019s fine \u00e9.".encode("cp1252")
    data = data.replace(lines[second].encode(), cp1252)
    transcript.write_bytes(data)
    build_manifest("d", cfg(fresh_release), tmp_path)
    df, issues, summary = read_outputs(tmp_path)
    rows = df.set_index("utterance_id")
    assert "Ses01F_impro01_F000" in rows.index  # its block was read
    assert rows.loc["Ses01F_impro01_F000", "text"] == "It\u2019s here."
    assert rows.loc["Ses01F_impro01_M000", "text"] == "It\u2019s fine \u00e9."
    assert rows.loc["Ses01F_impro01_F000", "flags"] == rows.loc["Ses01F_impro01_M000", "flags"] == "text_fixed"
    details = issues[issues["reason"] == "text_fixed"].set_index("utterance_id")["detail"]
    assert "mis-decoded characters repaired" in details["Ses01F_impro01_F000"]
    assert "bytes that are not UTF-8 read as cp1252" in details["Ses01F_impro01_M000"]
    assert f"{transcript}, line {first + 1}" in details["Ses01F_impro01_F000"]


def test_the_four_class_setup(release, tmp_path):
    """IEMOCAP-4 (hap with exc merged into it, sad, neu, ang): the other labels' rows are rejected and recorded,
    and the dataset's classes are the four, in the order given."""
    build_manifest("d", cfg(release, classes=["hap", "sad", "neu", "ang"], relabel={"exc": "hap"}), tmp_path)
    df, issues, summary = read_outputs(tmp_path)
    assert summary["classes"] == ["hap", "sad", "neu", "ang"]
    assert set(df["label"]) <= {"hap", "sad", "neu", "ang"}
    rejected = issues[issues["reason"] == "label_not_in_classes"]
    assert rejected["detail"].str.contains("fru").any()
    # The release's utterance counts are the six-class setting's: not compared here (all would "differ").
    assert [c["check"] for c in summary["checks"]] == ["split-file dialogues present in the raw tree"]
    assert rejected["detail"].str.endswith("is not one of ['hap', 'sad', 'neu', 'ang']").all()
    assert pipeline_config.dataset_classes(cfg(release, classes=["hap", "sad", "neu", "ang"])) == \
        ["hap", "sad", "neu", "ang"]
    with pytest.raises(ValueError, match=r"iemocap classes: at least two distinct names of .*got \['hap', 'joy'\]: "
                                         r"\['joy'\] is not among them"):
        build_manifest("d", cfg(release, classes=["hap", "joy"]), tmp_path / "bad")
    with pytest.raises(ValueError, match=r"got \['Hap', 'sad', 'sad'\]: \['Hap'\] is not among them \(names are "
                                         r"lower-case\)"):
        build_manifest("d", cfg(release, classes=["Hap", "sad", "sad"]), tmp_path / "bad")
    with pytest.raises(ValueError, match=r"got \['hap', 'sad', 'hap'\]: \['hap'\] given more than once"):
        build_manifest("d", cfg(release, classes=["hap", "sad", "hap"]), tmp_path / "bad")
    with pytest.raises(ValueError, match=r"relabel: 'exc' -> 'fru', but the target must be one of the classes"):
        build_manifest("d", cfg(release, classes=["hap", "sad"], relabel={"exc": "fru"}), tmp_path / "bad")


def test_missing_media_flagged_not_fatal(fresh_release, tmp_path):
    (fresh_release / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav").unlink()
    (fresh_release / "Session5/dialog/avi/DivX/Ses05F_impro01.avi").write_bytes(b"not a video at all" * 10)
    shutil.rmtree(fresh_release / "Session1/dialog/avi")
    build_manifest("d", cfg(fresh_release), tmp_path)
    df, issues, summary = read_outputs(tmp_path)
    flags = df.set_index("utterance_id")["flags"]
    assert flags["Ses01F_impro01_M000"] == "missing_audio;missing_video"
    assert flags["Ses01F_impro01_F000"] == "missing_video"
    assert flags["Ses05F_impro01_F000"] == "corrupt_video"
    assert summary["flag_counts"] == {"missing_audio": 1, "missing_video": 6, "corrupt_video": 2}
    missing = issues[issues["reason"] == "missing_audio"]["detail"].item()
    assert missing.endswith("Ses01F_impro01_M000.wav does not exist: restore it from the release (or declare the "
                            "dataset's `modalities` without it)")
    corrupt = set(issues.loc[issues["reason"] == "corrupt_video", "detail"])
    assert len(corrupt) == 1 and corrupt.pop().endswith("; replace it with the release's copy"), corrupt
    assert len(issues[issues["action"] == "flagged"]) == 9


def test_a_broken_link_to_a_media_file_is_named_as_such(fresh_release, tmp_path):
    wav = fresh_release / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    wav.unlink()
    wav.symlink_to(tmp_path / "elsewhere" / "F000.wav")
    build_manifest("d", cfg(fresh_release), tmp_path / "out")
    _, issues, _ = read_outputs(tmp_path / "out")
    detail = issues.loc[issues["reason"] == "missing_audio", "detail"].item()
    assert detail == f"{wav} is a link to {tmp_path / 'elsewhere' / 'F000.wav'}, which does not exist: fix the link " \
                     "or restore the file"


def test_utterances_after_the_end_of_a_cut_short_video_are_flagged(fresh_release, tmp_path):
    # An AVI that lost its tail (and its index with it) holds 1 s; Ses01F_impro01's utterances run to 8 s.
    write_avi(fresh_release / "Session1/dialog/avi/DivX/Ses01F_impro01.avi", frames=4)
    build_manifest("d", cfg(fresh_release), tmp_path)
    df, issues, _ = read_outputs(tmp_path)
    flags = df[df["dialogue_id"] == "Ses01F_impro01"].set_index("utterance_id")["flags"]
    assert flags.to_dict() == {"Ses01F_impro01_F000": "corrupt_video", "Ses01F_impro01_M000": "corrupt_video",
                               "Ses01F_impro01_F002": "corrupt_video"}  # starts at 1.0, 2.5 and 7.0 s
    detail = issues[issues["utterance_id"] == "Ses01F_impro01_M000"]["detail"].iloc[0]
    assert "Ses01F_impro01.avi holds 1.00 s and the utterance starts at 2.50 s: the file looks cut short" in detail
    assert (df[df["dialogue_id"] != "Ses01F_impro01"]["flags"] == "").all()


def test_damaged_sentence_wavs_are_flagged_from_their_headers(fresh_release, tmp_path):
    wavs = fresh_release / "Session1/sentences/wav/Ses01M_impro01"
    whole = (wavs / "Ses01M_impro01_M000.wav").read_bytes()
    (wavs / "Ses01M_impro01_M000.wav").write_bytes(whole[: len(whole) // 2])  # cut short: decodes, half as long
    (wavs / "Ses01M_impro01_F000.wav").write_bytes(b"")
    (wavs / "Ses01M_impro01_M001.wav").write_text("not audio")
    build_manifest("d", cfg(fresh_release), tmp_path)
    df, issues, _ = read_outputs(tmp_path)
    flags = df.set_index("utterance_id")["flags"]
    assert [flags[f"Ses01M_impro01_{u}"] for u in ("M000", "F000", "M001")] == ["corrupt_audio"] * 3
    details = issues[issues["reason"] == "corrupt_audio"].set_index("utterance_id")["detail"]
    assert "truncated: its header declares 9600 bytes of samples, the file holds" in details["Ses01M_impro01_M000"]
    assert details["Ses01M_impro01_F000"].endswith("empty file (0 bytes); replace it with the release's copy")
    assert details["Ses01M_impro01_M001"].endswith("not a WAV file (no RIFF/WAVE header); replace it with the "
                                                   "release's copy")
    assert (df[df["dialogue_id"] != "Ses01M_impro01"]["flags"] == "").all()


def test_bad_and_overlapping_times_are_flagged(fresh_release, tmp_path):
    emo = fresh_release / "Session5/dialog/EmoEvaluation/Ses05F_impro01.txt"
    emo.write_text(emo.read_text() + emo_block("Ses05F_impro01_F001", 0.9, 1.8, "sad")
                   + emo_block("Ses05F_impro01_M001", 3.0, 2.5, "ang")
                   + emo_block("Ses05F_impro01_M002", math.nan, 1.0, "neu").replace("nan", "1O.5"))
    for u in ("F001", "M001", "M002"):
        write_wav(fresh_release / f"Session5/sentences/wav/Ses05F_impro01/Ses05F_impro01_{u}.wav")
    build_manifest("d", cfg(fresh_release), tmp_path)
    df, issues, _ = read_outputs(tmp_path)
    flags = df.set_index("utterance_id")["flags"]
    assert flags["Ses05F_impro01_F001"] == "empty_text;overlap"  # starts before F000 (0.2-1.2) ended
    assert flags["Ses05F_impro01_M001"] == "bad_time;empty_text"
    assert flags["Ses05F_impro01_M002"] == "bad_time;empty_text"
    overlap = issues[issues["reason"] == "overlap"].iloc[0]
    assert overlap["utterance_id"] == "Ses05F_impro01_F001" and "Ses05F_impro01_F000" in overlap["detail"]
    # The unparsable row keeps its place after the row before it in the file.
    order = df[df["dialogue_id"] == "Ses05F_impro01"]["utterance_id"].tolist()
    assert order.index("Ses05F_impro01_M002") == order.index("Ses05F_impro01_M001") + 1


def test_a_turn_without_usable_times_takes_the_transcription_times_or_gets_no_video(fresh_release, tmp_path):
    """The video is the whole dialogue: a turn whose EmoEvaluation times do not parse would otherwise get
    faces sampled over the whole dialogue, stored as present."""
    emo = fresh_release / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    text = emo.read_text().replace("[1.0000 - 2.0000]", "[1,0000 - 2,0000]")  # F000; its transcript: 1-2 s
    emo.write_text(text.replace("[2.5000 - 3.5000]", "[2,5 - 3,5]"))  # M000
    transcript = fresh_release / "Session1/dialog/transcriptions/Ses01F_impro01.txt"
    transcript.write_text(transcript.read_text().replace("[002.5000-003.5000]", "[002,5000-003,5000]"))
    build_manifest("d", cfg(fresh_release), tmp_path)
    df, issues, _ = read_outputs(tmp_path)
    rows = df.set_index("utterance_id")
    avi = str(fresh_release / "Session1/dialog/avi/DivX/Ses01F_impro01.avi")
    assert rows.loc["Ses01F_impro01_F000", ["video_path", "video_start", "video_end"]].tolist() == [avi, 1.0, 2.0]
    assert rows.loc["Ses01F_impro01_M000", "video_path"] == "" and math.isnan(rows.loc["Ses01F_impro01_M000",
                                                                                         "video_start"])
    details = issues[issues["reason"] == "bad_time"].set_index("utterance_id")["detail"]
    assert f"the times of {transcript}, line 1 (1.0-2.0) are used" in details["Ses01F_impro01_F000"]
    assert "no face features; fix the times" in details["Ses01F_impro01_M000"]
    assert rows.loc["Ses01F_impro01_M000", "flags"] == "bad_time"
    # The order in the dialogue follows the transcription's times.
    assert df[df["dialogue_id"] == "Ses01F_impro01"]["utterance_id"].tolist()[:2] == [
        "Ses01F_impro01_F000", "Ses01F_impro01_M000"]


def test_unevaluated_transcript_turn_is_recorded(fresh_release, tmp_path):
    transcript = fresh_release / "Session1/dialog/transcriptions/Ses01M_impro01.txt"
    transcript.write_text(transcript.read_text() + "Ses01M_impro01_MXX0 [005.0000-005.5000]: Mm-hm.\n")
    build_manifest("d", cfg(fresh_release), tmp_path)
    df, issues, summary = read_outputs(tmp_path)
    assert "Ses01M_impro01_MXX0" not in set(df["utterance_id"])
    row = issues[issues["utterance_id"] == "Ses01M_impro01_MXX0"].iloc[0]
    assert (row["action"], row["reason"], row["file"]) == ("rejected", "not_evaluated", str(transcript))
    assert transcript.read_text().splitlines()[int(row["line"]) - 1].startswith("Ses01M_impro01_MXX0")
    assert summary["rejected_counts"] == {"label_not_in_classes": 2, "not_evaluated": 1}


def test_transcript_oddities_and_a_missing_label_file_are_recorded(fresh_release, tmp_path, caplog):
    """A second line for an id (the first is used), a line that starts with the dialogue's name but does not
    parse, and a transcription whose EmoEvaluation file is gone: each leaves a row in issues.tsv."""
    # A second test dialogue: without it, the missing label file would empty the test split (an error of its own).
    make_release(fresh_release, {"Ses05F_impro02": DIALOGUES["Ses05F_impro01"]})
    transcript = fresh_release / "Session1/dialog/transcriptions/Ses01M_impro01.txt"
    transcript.write_text(transcript.read_text() + "Ses01M_impro01_M000 [009.0000-009.5000]: Again.\n"
                          "Ses01M_impro01_F000[002.0000-003.0000] Sorry.\n")
    (fresh_release / "Session5/dialog/EmoEvaluation/Ses05F_impro01.txt").unlink()
    build_manifest("d", cfg(fresh_release), tmp_path)
    df, issues, _ = read_outputs(tmp_path)
    texts = df.set_index("utterance_id")["text"]
    assert texts["Ses01M_impro01_M000"] == "No."
    duplicate = issues[issues["reason"] == "duplicate_transcript_line"].iloc[0]
    assert (duplicate["utterance_id"], duplicate["line"]) == ("Ses01M_impro01_M000", "5")
    assert "already has line 1, which is used" in duplicate["detail"]
    unparsed = issues[issues["reason"] == "unparsed_transcript_line"].iloc[0]
    assert (unparsed["utterance_id"], unparsed["line"]) == ("Ses01M_impro01_F000", "6")
    gone = issues[(issues["reason"] == "not_evaluated") & issues["utterance_id"].str.startswith("Ses05F_impro01")]
    assert sorted(gone["utterance_id"]) == ["Ses05F_impro01_F000", "Ses05F_impro01_M000"]
    assert "Ses05F_impro01.txt does not exist: restore it from the release" in gone["detail"].iloc[0]
    assert "Ses05F_impro01" not in set(df["dialogue_id"])
    assert "have no labelled utterance in" in caplog.text and "Ses05F_impro01" in caplog.text
    # The transcription is read, so it is a source: the workflow notices it added or removed (the join re-runs).
    from ercpipe.datasets.fingerprint import dataset_fingerprint

    sources = dataset_fingerprint("d", cfg(fresh_release), 1).sources
    assert str(fresh_release / "Session5/dialog/transcriptions/Ses05F_impro01.txt") in sources


def test_a_transcription_id_with_a_typo_is_pointed_out(fresh_release, tmp_path):
    transcript = fresh_release / "Session1/dialog/transcriptions/Ses01M_impro01.txt"
    transcript.write_text(transcript.read_text().replace("Ses01M_impro01_F000 ", "Ses01M_impro1_F000 "))
    build_manifest("d", cfg(fresh_release), tmp_path / "out")
    _, issues, _ = read_outputs(tmp_path / "out")
    detail = issues.loc[issues["utterance_id"] == "Ses01M_impro1_F000", "detail"].item()
    assert detail.endswith("(the id does not start with the dialogue's name Ses01M_impro01: a typo in the "
                           "transcription?)")


def test_a_copy_of_a_label_file_beside_it_is_named_as_a_copy(fresh_release, tmp_path):
    emo = fresh_release / "Session1/dialog/EmoEvaluation"
    shutil.copy(emo / "Ses01F_impro01.txt", emo / "Ses01F_impro01 (copy).txt")
    with pytest.raises(ManifestError, match=r"Ses01F_impro01 \(copy\).txt.*: the file name 'Ses01F_impro01 \(copy\)' "
                                            r"is not a dialogue's, and its utterances are Ses01F_impro01's: a copy of "
                                            r"Ses01F_impro01.txt\? Move it out of the folder"):
        build_manifest("d", cfg(fresh_release), tmp_path / "out")


def test_a_transcription_line_that_lost_its_times_keeps_its_text(fresh_release, tmp_path):
    """'ID: text' (times deleted by a hand edit) was rejected as unparsed, and the utterance became empty_text
    though the EmoEvaluation block gives its times."""
    transcript = fresh_release / "Session1/dialog/transcriptions/Ses01M_impro01.txt"
    text = transcript.read_text()
    timed = re.search(r"^Ses01M_impro01_F000 \[[^\]]*\]: ", text, re.M).group(0)
    transcript.write_text(text.replace(timed, "Ses01M_impro01_F000: "))
    build_manifest("d", cfg(fresh_release), tmp_path / "out")
    df, issues, _ = read_outputs(tmp_path / "out")
    row = df.set_index("utterance_id").loc["Ses01M_impro01_F000"]
    assert row["text"] == "Sorry." and row["flags"] == ""
    assert "unparsed_transcript_line" not in set(issues["reason"])


@pytest.mark.parametrize("content, message", [
    ('["Ses01F_impro01"]', r"holds a JSON list; expected \{\"train\""),
    ('{"train": [1], "valid": [], "test": []}', r"train lists 1, not a dialogue id string"),
    ('{"train": [], "valid": [], "test": [], "utterances_per_dialogue": {"Ses01F_impro01": "26.0"}}',
     r"utterances_per_dialogue must map dialogue ids to whole numbers; found \{'Ses01F_impro01': '26.0'\}"),
])
def test_a_malformed_split_file_is_named(release, tmp_path, content, message):
    (tmp_path / "split.json").write_text(content)
    with pytest.raises(ManifestError, match=r"split file .*split.json.*" + message):
        build_manifest("d", cfg(release, split_file=str(tmp_path / "split.json")), tmp_path / "out")


def test_wrong_root_names_path_and_expected_layout(release, tmp_path):
    with pytest.raises(ManifestError, match=r"does not exist.*IEMOCAP_full_release"):
        build_manifest("d", cfg(tmp_path / "nowhere"), tmp_path / "out")
    with pytest.raises(ManifestError, match=rf"{release.parent}.*no Session<N>.*use it as root"):
        build_manifest("d", cfg(release.parent), tmp_path / "out")
    # A folder inside the release: its session, or the session's dialog folder, names the release to use.
    for inside in (release / "Session1", release / "Session1" / "dialog"):
        with pytest.raises(ManifestError, match=rf"no Session<N>.*; {release / 'Session1'} is one session of the "
                                                rf"release: use the folder that holds it, {release}, as root"):
            build_manifest("d", cfg(inside), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.tsv").exists()


def test_a_missing_session_that_empties_a_split_stops_the_reader(fresh_release, tmp_path):
    """Without Session5 (the standard test split) every job ran and metrics.json said test: null, with nothing
    on the console and nothing in issues.tsv."""
    shutil.rmtree(fresh_release / "Session5")
    with pytest.raises(ManifestError, match=r"the test split of \S+ has no labelled utterance; their dialogues "
                                            r"\(e.g. \['Ses05F_impro01'.*\) are in Session5, which .* does not hold "
                                            r"\(found Session1\): restore the missing session"):
        build_manifest("d", cfg(fresh_release), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.tsv").exists()
    # The session is there, but no dialogue of the split has a labelled utterance: no session to restore.
    split = {"train": ["Ses01F_impro01"], "valid": ["Ses01M_impro01"], "test": []}
    (tmp_path / "split.json").write_text(json.dumps(split))
    (fresh_release / "Session1/dialog/EmoEvaluation/Ses01M_impro01.txt").unlink()
    with pytest.raises(ManifestError, match=r"the valid split of \S+ has no labelled utterance; none of their "
                                            r"dialogues \(e.g. \['Ses01M_impro01'\]\) has a labelled utterance "
                                            r"here: check that their dialog/EmoEvaluation files are there"):
        build_manifest("d", cfg(fresh_release, split_file=str(tmp_path / "split.json")), tmp_path / "out")


def test_a_tree_without_labelled_rows_says_why_before_any_issues_file_exists(fresh_release, tmp_path):
    """The message pointed to issues.tsv, which a build stopped here never writes, and named 6 classes whatever
    `classes` said."""
    # A split file of another release's dialogue names: every row is rejected, counted by reason.
    split = {"train": ["Ses02F_impro01"], "valid": ["Ses02M_impro01"], "test": ["Ses03F_impro01"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    with pytest.raises(ManifestError, match=r"no labelled utterance of the 2 classes \['sad', 'fru'\] in any dialogue "
                                            r"of the split file .*split.json \(rows rejected by reason: "
                                            r"dialogue_not_in_split: 10\); check the split file's dialogue names"):
        build_manifest("d", cfg(fresh_release, split_file=str(tmp_path / "split.json"), classes=["sad", "fru"]),
                       tmp_path / "out")
    # No label file at all (a part of the release not unpacked): said so, with the folders expected.
    for label_file in fresh_release.glob("Session*/dialog/EmoEvaluation/*.txt"):
        label_file.unlink()
    with pytest.raises(ManifestError, match=r"no label file Session<N>/dialog/EmoEvaluation/\*.txt in Session1, "
                                            r"Session5; point `root` at the unpacked IEMOCAP_full_release"):
        build_manifest("d", cfg(fresh_release), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.tsv").exists()


def test_missing_emo_evaluation_folder(fresh_release, tmp_path):
    shutil.rmtree(fresh_release / "Session5/dialog/EmoEvaluation")
    with pytest.raises(ManifestError, match=r"Session5/dialog/EmoEvaluation is missing"):
        build_manifest("d", cfg(fresh_release), tmp_path)


def test_unknown_label_names_file_and_line(fresh_release, tmp_path):
    emo = fresh_release / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    emo.write_text(emo.read_text().replace("\tfru\t", "\tjoy\t"))
    line = next(i for i, text in enumerate(emo.read_text().splitlines(), 1) if "\tjoy\t" in text)
    with pytest.raises(ManifestError, match=rf"Ses01F_impro01.txt, line {line}: unknown label 'joy'.*relabel"):
        build_manifest("d", cfg(fresh_release), tmp_path)
    # Mapping the label makes it usable.
    build_manifest("d", cfg(fresh_release, relabel={"joy": "hap"}), tmp_path)
    assert "relabelled" in manifest_io.read(tmp_path / "manifest.tsv").set_index("utterance_id").loc[
        "Ses01F_impro01_M000", "flags"]


def test_a_block_header_without_its_label_says_so(fresh_release, tmp_path):
    emo = fresh_release / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    emo.write_text(emo.read_text().replace("\tfru\t", "\t"))
    line = next(i for i, text in enumerate(emo.read_text().splitlines(), 1) if "Ses01F_impro01_M000\t[" in text)
    with pytest.raises(ManifestError, match=rf"Ses01F_impro01.txt, line {line}: no label between the utterance id "
                                            r"and the \[V, A, D\] values.*restore the label"):
        build_manifest("d", cfg(fresh_release), tmp_path)


def test_duplicate_utterance_names_both_places(fresh_release, tmp_path):
    emo = fresh_release / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    emo.write_text(emo.read_text() + emo_block("Ses01F_impro01_F000", 9.0, 9.5, "neu"))
    with pytest.raises(ManifestError, match=r"Ses01F_impro01.txt, line \d+: utterance Ses01F_impro01_F000 is "
                                            r"already labelled at .*Ses01F_impro01.txt, line \d+"):
        build_manifest("d", cfg(fresh_release), tmp_path)


def test_unreadable_or_garbled_files_name_the_file(fresh_release, tmp_path):
    emo = fresh_release / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    emo.write_bytes(b"\x00\x01binary\x00" * 20)
    with pytest.raises(ManifestError, match=rf"{emo} is not a text file"):
        build_manifest("d", cfg(fresh_release), tmp_path)
    emo.unlink()
    emo.symlink_to(tmp_path / "gone.txt")  # a dangling link: listed, but cannot be opened
    with pytest.raises(ManifestError, match=rf"cannot read {emo}"):
        build_manifest("d", cfg(fresh_release), tmp_path)
    emo.unlink()
    emo.write_text("[1.0 - 2.0]\n")
    with pytest.raises(ManifestError, match=r"Ses01F_impro01.txt, line 1: cannot parse"):
        build_manifest("d", cfg(fresh_release), tmp_path)


@pytest.mark.parametrize("media", ["Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav",
                                   "Session1/dialog/avi/DivX/Ses01F_impro01.avi"])
def test_a_media_file_the_user_may_not_read_stops_the_reader_naming_it(fresh_release, tmp_path, media):
    """Flagged as corrupt instead, it stayed flagged (and without audio or faces) after a chmod fixed it: a chmod
    changes neither size nor mtime, so Snakemake saw nothing to re-run."""
    path = fresh_release / media
    path.chmod(0)
    try:
        code = (f"from ercpipe.datasets.build import build_manifest\n"
                f"build_manifest('d', {cfg(fresh_release)!r}, {str(tmp_path / 'out')!r})")
        result = python_as_a_user(code)
    finally:
        path.chmod(0o644)
    assert result.returncode != 0
    assert f"ManifestError: cannot read {path}: permission denied; make it readable" in result.stderr
    assert not (tmp_path / "out" / "manifest.tsv").exists()


def test_bad_settings_are_named(release, tmp_path):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['probe_media'\]"):
        build_manifest("d", cfg(release, probe_media=True), tmp_path)
    with pytest.raises(ValueError, match=r"relabel.*'sur' -> 'surprise'"):
        build_manifest("d", cfg(release, relabel={"sur": "surprise"}), tmp_path)
    with pytest.raises(ValueError, match=r"sides"):
        build_manifest("d", cfg(release, sides={"F": "up", "M": "right"}), tmp_path)
    with pytest.raises(ManifestError, match=r"split file .*nope.json does not exist"):
        build_manifest("d", cfg(release, split_file=str(tmp_path / "nope.json")), tmp_path)
    build_manifest("d", cfg(release, sides={"F": "right", "M": "left"}, face_selection={"mode": "side"}), tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["sides"] == {"F": "right", "M": "left"}


def test_transcripts_alone_declared_text_only(tmp_path, caplog):
    """IEMOCAP as a text-only user has it (transcriptions and EmoEvaluation, no wav or avi folders)."""
    import shutil

    root = make_release(tmp_path / "IEMOCAP_full_release")
    build_manifest("iemocap_all", cfg(root), tmp_path / "with_media")
    with_media = read_outputs(tmp_path / "with_media")
    for media in [*root.glob("Session*/sentences"), *root.glob("Session*/dialog/avi")]:
        shutil.rmtree(media)
    caplog.clear()
    build_manifest("iemocap_text", cfg(root, modalities=["text"]), tmp_path / "text")
    df, issues, summary = read_outputs(tmp_path / "text")
    assert df["utterance_id"].tolist() == with_media[0]["utterance_id"].tolist()
    assert (df["flags"] == "").all() and (df["audio_path"] == "").all() and (df["video_path"] == "").all()
    # Only the real problems (the rejected labels), and no word of missing media in the log.
    assert issues.drop(columns="detail").values.tolist() == with_media[1].drop(columns="detail").values.tolist()
    assert set(issues["action"]) == {"rejected"}
    assert not [r for r in caplog.records if "missing" in r.getMessage()]
    assert summary["modalities"] == ["text"] and summary["checks"] == with_media[2]["checks"]
    # Undeclared: every utterance's media missing stops the reader (it flagged them all, and the pipeline ran on
    # zeros), naming a file and the declaration.
    with pytest.raises(ManifestError, match=r"dataset iemocap_all: not one of the \d+ audio files its train utterances "
                                            r"name exists \(e.g. .*Ses01F_impro01_F\d+.wav does not exist\)\. Check "
                                            r"datasets.iemocap_all.root .*modalities, e.g. \[text\]\)"):
        build_manifest("iemocap_all", cfg(root), tmp_path / "all")
