"""Bring-your-own CSV reader (docs/manifest.md): columns, derived fields, flags and bad input."""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import python_as_a_user
from ercpipe.datasets.build import build_manifest
from ercpipe.io import manifest as manifest_io
from ercpipe.io.manifest import ManifestError

CLASSES = ["calm", "angry", "happy"]
HEADER = "dialogue_id,utterance_id,split,speaker,label,text,audio_path,audio_start,audio_end,video_path"


def write_wav(path: Path, seconds: float = 2.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(str(path), (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    write_wav(tmp_path / "audio" / "call1.wav")
    write_wav(tmp_path / "audio" / "call2.wav")
    return tmp_path


def write(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header] + lines) + "\n", encoding="utf-8")
    return path


def build(path: Path, out: Path, **extra) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    build_manifest("mine", {"format": "csv", "manifest": str(path), "classes": CLASSES, **extra}, out)
    issues = pd.read_csv(out / "issues.tsv", sep="\t", dtype=str, keep_default_na=False)
    return manifest_io.read(out / "manifest.tsv"), issues, json.loads((out / "summary.json").read_text())


GOOD = [
    "c1,c1_u0,train,Ann,calm,Hello there.,audio/call1.wav,0.0,0.8,",
    "c1,c1_u1,train,Bob,angry,\"No, stop.\",audio/call1.wav,0.8,1.5,",
    "c1,c1_u2,train,Ann,happy,Fine!,audio/call1.wav,1.5,2.0,",
    "c2,c2_u0,test,Cy,calm,Hi.,audio/call2.wav,,,",
]


def test_good_csv(data_dir, tmp_path):
    df, issues, summary = build(write(data_dir / "mine.csv", GOOD), tmp_path / "out")
    assert df["utterance_id"].tolist() == ["c1_u0", "c1_u1", "c1_u2", "c2_u0"]
    assert df["speaker_slot"].tolist() == [0, 1, 0, 0]  # first appearance in the dialogue
    assert df["utterance_index"].tolist() == [0, 1, 2, 0]
    assert df["text"].tolist()[1] == "No, stop."
    assert df["audio_path"].iloc[0] == str(data_dir / "audio" / "call1.wav")  # relative to the CSV's folder
    assert (df["audio_start"].iloc[1], df["audio_end"].iloc[1]) == (0.8, 1.5)
    assert math.isnan(df["audio_start"].iloc[3])  # empty = whole file
    assert (df["flags"] == "no_video").all()  # no video_path: recorded, not fatal
    assert (issues["reason"] == "no_video").sum() == 4
    assert summary["classes"] == CLASSES and summary["format"] == "csv"
    assert summary["counts_per_split"] == {"train": 3, "valid": 0, "test": 1}
    assert summary["counts_per_label"] == {"calm": 2, "angry": 1, "happy": 1}


def test_tsv_with_index_and_slots_and_root(data_dir, tmp_path):
    header = "dialogue_id\tutterance_id\tsplit\tspeaker\tlabel\ttext\tutterance_index\tspeaker_slot\taudio_path"
    lines = ["d\tb\tvalid\tX\thappy\tsecond\t1\t5\tcall1.wav", "d\ta\tvalid\tY\tcalm\tfirst\t0\t2\tcall1.wav"]
    path = write(tmp_path / "m.tsv", lines, header)
    df, _, _ = build(path, tmp_path / "out", root=str(data_dir / "audio"))
    assert df["utterance_id"].tolist() == ["a", "b"]  # sorted by the given utterance_index
    assert df["speaker_slot"].tolist() == [2, 5]  # given slots are kept
    assert df["audio_path"].tolist() == [str(data_dir / "audio" / "call1.wav")] * 2
    assert (df["flags"] == "no_video").all()


def test_flags_times_media_and_text(data_dir, tmp_path):
    lines = [
        "c1,u0,train,Ann,calm,one,audio/call1.wav,0.0,1.0,",
        "c1,u1,train,Ann,calm,two,audio/call1.wav,0.5,1.2,",   # overlaps u0 (same speaker, same file)
        "c1,u2,train,Bob,calm,three,audio/call1.wav,1.6,1.4,",  # reversed
        "c1,u3,train,Bob,calm,,audio/call1.wav,abc,2.0,",       # unparsable, empty text
        "c1,u4,train,Ann,calm,Itâ€™s,audio/gone.wav,,,",         # missing file, mojibake
        "c1,u5,train,Ann,calm,six,,,,",                         # no audio at all
        "c2,v0,train,Ann,calm,other file,audio/call2.wav,0.2,0.6,",  # other file: no overlap with c1
        "c3,w0,train,Ann,calm,windows,audio\\call2.wav,,,",        # a Windows separator
        "c3,w1,train,Ann,calm,empty,audio/empty.wav,,,",         # 0 bytes: flagged without probing
        "c4,x0,train,Ann,calm,drive,C:\\data\\call2.wav,,,",      # a Windows drive path
        "c4,x1,train,Ann,calm,home,~/audio/call2.wav,,,",          # '~' is not expanded in a cell
    ]
    (data_dir / "audio" / "empty.wav").write_bytes(b"")
    df, issues, summary = build(write(data_dir / "m.csv", lines), tmp_path / "out")
    flags = {u: set(f.split(";")) - {"no_video", ""} for u, f in zip(df["utterance_id"], df["flags"])}
    assert flags == {"u0": set(), "u1": {"overlap"}, "u2": {"bad_time"}, "u3": {"bad_time", "empty_text"},
                     "u4": {"missing_audio", "text_fixed"}, "u5": {"missing_audio"}, "v0": set(),
                     "w0": {"missing_audio"}, "w1": {"corrupt_audio"}, "x0": {"missing_audio"},
                     "x1": {"missing_audio"}}
    details = issues[issues["reason"].isin(["missing_audio", "corrupt_audio"])].set_index("utterance_id")["detail"]
    assert details["u4"] == f"{data_dir / 'audio/gone.wav'} does not exist (the CSV gives 'audio/gone.wav'); fix the " \
                            "path or restore the file"
    assert "the CSV gives 'audio\\call2.wav', with '\\' as the folder separator; write '/'" in details["w0"]
    assert details["w1"].endswith("empty.wav: empty file (0 bytes); replace it with a complete copy")
    assert "the CSV gives 'C:\\data\\call2.wav', a Windows drive path; write the file's path on this machine" in (
        details["x0"])
    assert "the CSV gives '~/audio/call2.wav'; '~' and '$VARIABLES' in a CSV cell are not expanded" in details["x1"]
    assert df.set_index("utterance_id").loc["u4", "text"] == "It’s"
    bad = issues[(issues["reason"] == "bad_time") & (issues["utterance_id"] == "u3")].iloc[0]
    assert bad["file"] == str(data_dir / "m.csv") and bad["line"] == "5" and "'abc'" in bad["detail"]
    # Its window is unknown and call1.wav is cut for three other rows: the whole file is not u3, so u3 has no audio.
    assert "call1.wav is shared with 3 other row(s), so the utterance gets no audio" in bad["detail"]
    assert df.set_index("utterance_id").loc["u3", "audio_path"] == ""
    assert summary["flag_counts"]["overlap"] == 1


def test_a_media_folder_the_user_may_not_enter_is_named(data_dir, tmp_path):
    locked = data_dir / "locked"
    locked.mkdir()
    write_wav(locked / "a.wav")
    path = write(data_dir / "m.csv", ["c1,u0,train,Ann,calm,one,locked/a.wav,,,"])
    locked.chmod(0)
    try:
        result = python_as_a_user(
            "from ercpipe.datasets.build import build_manifest\n"
            f"build_manifest('mine', {{'format': 'csv', 'manifest': {str(path)!r}, 'classes': {CLASSES!r}}}, "
            f"{str(tmp_path / 'out')!r})")
    finally:
        locked.chmod(0o755)
    assert result.returncode != 0, result.stderr
    assert f"ManifestError: {path}, line 2: cannot look at {locked / 'a.wav'}: permission denied" in result.stderr


def test_a_time_that_is_not_seconds_never_leaves_half_a_window(data_dir, tmp_path):
    """A decimal comma in one of the two times kept the other: "2,0" to 3.0 cut 0-3 s from a dialogue's recording,
    three utterances, as the utterance's audio and faces, while issues.tsv said the whole file was used."""
    for name in ("d1.wav", "own.wav", "v1.wav"):
        write_wav(data_dir / "audio" / name, seconds=4.0)
    header = HEADER + ",video_start,video_end"
    lines = ["d1,u0,train,Ann,calm,one,audio/d1.wav,0.0,1.0,audio/d1.wav,0.0,1.0",
             'd1,u1,train,Bob,angry,two,audio/d1.wav,"2,0",3.0,audio/d1.wav,"2,0",3.0',
             "d1,u2,train,Ann,happy,three,audio/d1.wav,3.0,4.0,audio/d1.wav,3.0,4.0",
             'd2,v0,test,Ann,calm,four,audio/own.wav,"0,5",2.0,,,',
             "d2,v1,test,Bob,calm,five,audio/v1.wav,00:00:01.500,00:00:02.000,,,",
             "d2,v2,test,Ann,calm,six,audio/v1.wav,-1.0,1.0,,,"]
    df, issues, _ = build(write(data_dir / "m.csv", lines, header), tmp_path / "out")
    rows = df.set_index("utterance_id")
    for column in ("audio_start", "audio_end", "video_start", "video_end"):
        assert math.isnan(rows.loc["u1", column]) and math.isnan(rows.loc["v0", column]), column
    assert rows.loc["u1", "audio_path"] == rows.loc["u1", "video_path"] == ""  # shared: no media rather than 0-3 s
    assert rows.loc["v0", "audio_path"].endswith("own.wav")  # its own file: the whole of it, as issues.tsv says
    detail = issues[issues["reason"] == "bad_time"].set_index("utterance_id")["detail"]
    assert sorted(detail.index) == ["u1", "v0", "v1", "v2"]
    assert "'-1.0', '1.0' are not seconds (negative: times count from the file's start)" in detail["v2"]
    assert "'00:00:01.500', '00:00:02.000' are not seconds (write them as seconds, e.g. 62.5 for 00:01:02.500)" \
        in detail["v1"]
    # One issue per row naming both modalities' times, and how to write them.
    assert detail["u1"].count("are not seconds (write the decimal point as '.')") == 2
    assert "so the utterance gets no audio" in detail["u1"] and "so the utterance gets no video" in detail["u1"]
    assert detail["v0"].endswith("own.wav is used; fix the times")


def test_a_window_with_only_a_start_or_only_an_end_is_bad_time(data_dir, tmp_path):
    """An empty end was read as the file's end (an empty start as 0): 7 s to the end of a dialogue's recording,
    the other speakers' utterances, became the utterance's faces, with no word in issues.tsv."""
    for name in ("d1.wav", "own.wav"):
        write_wav(data_dir / "audio" / name, seconds=4.0)
    header = HEADER + ",video_start,video_end"
    lines = ["d1,u0,train,Ann,calm,one,audio/d1.wav,0.0,1.0,audio/d1.wav,0.0,1.0",
             "d1,u1,train,Bob,angry,two,audio/d1.wav,1.0,2.0,audio/d1.wav,2.0,",
             "d1,u2,train,Ann,happy,three,audio/d1.wav,,3.0,audio/d1.wav,2.0,3.0",
             "d2,v0,test,Ann,calm,four,audio/own.wav,1.5,,audio/own.wav,,"]
    df, issues, _ = build(write(data_dir / "m.csv", lines, header), tmp_path / "out")
    rows = df.set_index("utterance_id")
    assert rows.loc["u1", "video_path"] == "" and rows.loc["u1", "audio_path"].endswith("d1.wav")  # shared file
    assert (rows.loc["u1", "audio_start"], rows.loc["u1", "audio_end"]) == (1.0, 2.0)  # its audio window is whole
    assert rows.loc["u2", "audio_path"] == "" and rows.loc["u2", "video_path"].endswith("d1.wav")
    assert rows.loc["v0", "audio_path"].endswith("own.wav") and math.isnan(rows.loc["v0", "audio_start"])
    detail = issues[issues["reason"] == "bad_time"].set_index("utterance_id")["detail"]
    assert sorted(detail.index) == ["u1", "u2", "v0"]
    assert detail["u1"].startswith("video_start 2.0 has no video_end (give both, or neither for the whole file); ")
    assert "so the utterance gets no video" in detail["u1"]
    assert detail["u2"].startswith("audio_end 3.0 has no audio_start")
    assert detail["v0"].endswith("own.wav is used; fix the times")


def test_probe_media_flags_corrupt_audio(data_dir, tmp_path):
    (data_dir / "audio" / "broken.wav").write_bytes(b"RIFF....WAVEfmt " + b"\x01" * 64)
    lines = ["c1,u0,train,Ann,calm,ok,audio/call1.wav,,,", "c1,u1,train,Ann,calm,bad,audio/broken.wav,,,"]
    df, _, _ = build(write(data_dir / "m.csv", lines), tmp_path / "out", probe_media=True)
    assert df["flags"].tolist() == ["no_video", "no_video;corrupt_audio"]
    df, _, _ = build(write(data_dir / "m.csv", lines), tmp_path / "out2")  # default: existence only
    assert df["flags"].tolist() == ["no_video", "no_video"]


def test_probe_media_flags_a_video_path_without_video_and_reads_names_with_a_colon(data_dir, tmp_path, monkeypatch):
    """A file without a picture given as the video was flagged by the MELD reader only (the CSV reader wrote no
    row in issues.tsv); a relative name like `take:1.wav` was opened by FFmpeg as the protocol `take`."""
    from ercpipe.io.media import probe

    (data_dir / "audio" / "take:1.wav").write_bytes((data_dir / "audio" / "call1.wav").read_bytes())
    lines = ["c1,u0,train,Ann,calm,ok,audio/call1.wav,,,audio/call2.wav"]
    df, issues, _ = build(write(data_dir / "m.csv", lines), tmp_path / "out", probe_media=True)
    assert df["flags"].tolist() == ["no_video"]
    assert issues["detail"].tolist() == [f"{data_dir / 'audio/call2.wav'}: the file has no video stream"]
    monkeypatch.chdir(data_dir / "audio")
    info = probe("take:1.wav")
    assert info.decodable and info.has_audio and info.error == ""
    # A still image given as the video is read as a one-frame video, as the face extraction reads it: probing
    # called it "truncated ... cut short", so training (no probe) used its face and predict (probing) did not.
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(data_dir / "still.jpg")  # (FFmpeg's image2 demuxer; a tiny one is jpeg_pipe)
    info = probe(data_dir / "still.jpg")
    assert info.decodable and info.has_video and not info.has_audio and info.error == ""


@pytest.mark.parametrize("lines, header, message", [
    (["c1,u0,train,Ann,sad,x,,,,"], HEADER, r"m.csv, line 2: label 'sad' of u0 is not one of the configured classes"),
    (["c1,u0,train,Ann,Angry,x,,,,"], HEADER, r"line 2: label 'Angry' .* differs only in case from 'angry'"),
    (["c1,u0,train,Ann,2,x,,,,"], HEADER, r"line 2: label '2' .*labels are class names, not ids: id 2 would be 'happy'"),
    (GOOD[:2] + ["c1,c1_u0,train,Ann,calm,x,,,,"], HEADER,
     r"m.csv, line 4: utterance_id 'c1_u0' already used on line 2"),
    (["c1,u0,dev,Ann,calm,x,,,,"], HEADER, r"m.csv, line 2: split 'dev' is not one of \['train', 'valid', 'test'\] "
                                           r"\(the validation split is called 'valid' here"),
    (["c1,u0,Train,Ann,calm,x,,,,"], HEADER, r"line 2: split 'Train' .*write it in lower case: 'train'"),
    (["c1,u0,train,Ann,calm,x,,,,", "c1,u1,test,Ann,calm,x,,,,"], HEADER,
     r"dialogue c1 \(lines 2, 3\) has rows in several splits"),
    (["c1,spk/u0,train,Ann,calm,x,,,,"], HEADER, r"line 2: utterance_id 'spk/u0' contains a path separator"),
    (["c1,u0,train,Ann,calm,x,1", "c1,u1,train,Bob,calm,x,"], "dialogue_id,utterance_id,split,speaker,label,text,"
     "speaker_slot", r"dialogue c1 \(lines 2, 3\): speaker_slot is given for some rows and not for others"),
    (["c1,u0,train,Ann,calm,x,calm"], "dialogue_id,utterance_id,split,speaker,label,text, label",
     r"m.csv: header names column 'label' twice \(columns 5 and 7\)"),
    (["C1,u0,train,Ann,calm"], "Dialogue_ID,utterance_id,split,speaker,label",
     r"header lacks column\(s\) \['dialogue_id'\].*case-sensitive: rename 'Dialogue_ID' to 'dialogue_id'"),
    # A quote never closed: the rows after it would be read as its text.
    (["c1,u0,train,Ann,calm,\"Well, I", "c1,u1,train,Bob,angry,no", "c2,u2,test,Ann,calm,x", "c2,u3,test,Bob,calm,y"],
     "dialogue_id,utterance_id,split,speaker,label,text", r"m.csv, line 2: cannot parse the row that starts on this "
                                                          r"line .*a field that starts with a quote must end with one"),
    (["c1,u0,train,Ann,calm,\"Well, I", "c1,u1,train,Bob,angry,he said no\"", "c2,u2,test,Ann,calm,x"],
     "dialogue_id,utterance_id,split,speaker,label,text", r"m.csv, line 2: the quoted text field that starts on this "
                                                          r"line runs to line 3 and holds what looks like a row"),
    (["c1,u0,train,Ann,calm,\"Hi,\" she said."], "dialogue_id,utterance_id,split,speaker,label,text",
     r"line 2: cannot parse the row .*a quote inside quoted text is written as two"),
    # Further down: the line of the broken row, not of the row before it.
    (["c1,u0,train,Ann,calm,ok", "c1,u1,train,Bob,calm,fine", "c1,u2,train,Ann,calm,\"Hi,\" she said."],
     "dialogue_id,utterance_id,split,speaker,label,text", r"m.csv, line 4: cannot parse the row that starts on this"),
    (["c1,u0,train,calm"], "dialogue_id,utterance_id,split,label", r"m.csv: header lacks column\(s\) \['speaker'\]"),
    (["c1,,train,Ann,calm,x,,,,"], HEADER, r"m.csv, line 2: empty utterance_id"),
    (["c1;u0;train;Ann;calm;x"], "dialogue_id;utterance_id;split;speaker;label;text",
     r"header lacks column.*looks ';'-separated, but this file is read as ','-separated"),
    (["c1,u0,train,Ann,calm,x,,,,,extra,fields"], HEADER, r"m.csv, line 2: 12 fields but the header has 10"),
    # A row cut short before a required column was padded with '' and failed later as "empty label".
    (["c1,u0,train,Ann,calm,x", "c1,u1,train,Bob"], HEADER,
     r"m.csv, line 3: 4 field\(s\) but the header has 10: no value for \['label'\]; the row was cut short"),
    # An optional column in another case used to be ignored: every row empty_text, and training failed much later.
    (["c1,u0,train,Ann,calm,Hi", "c2,u1,test,Bob,calm,Yo"], "dialogue_id,utterance_id,split,speaker,label,Text",
     r"m.csv: column names are case-sensitive: rename 'Text' to 'text'"),
    (["c1,u0,train,Ann,calm,Hi", "c2,u1,test,Bob,calm,Yo"], "dialogue_id,utterance_id,split,speaker,label,utterance",
     r"m.csv has no `text` column, but dataset mine declares the text modality .*found \['dialogue_id'"),
])
def test_bad_input_names_file_and_line(tmp_path, lines, header, message):
    with pytest.raises(ManifestError, match=message):
        build(write(tmp_path / "m.csv", lines, header), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.tsv").exists()


def test_a_csv_without_media_columns_says_once_how_to_declare_its_modalities(tmp_path, caplog):
    """Without audio_path / video_path columns every row is flagged twice in issues.tsv (27,416 rows for MELD's
    text); the log said only "13708 flagged row(s)"."""
    path = tmp_path / "text.csv"
    path.write_text("dialogue_id,utterance_id,split,speaker,label,text\nd1,u0,train,A,calm,Hi.\n"
                    "d1,u1,train,B,angry,No.\nd2,u2,test,A,calm,Go.\n")
    df, _, _ = build(path, tmp_path / "out")
    assert (df["flags"] == "missing_audio;no_video").all()
    warnings = [r.getMessage() for r in caplog.records if "column, so every row" in r.getMessage()]
    assert [w.split(" has no ")[1].split(" column")[0] for w in warnings] == ["audio_path", "video_path"]
    assert all("declare the modalities it has (datasets.mine.modalities, e.g. [text])" in w for w in warnings)
    caplog.clear()
    df, _, _ = build(path, tmp_path / "declared", modalities=["text"])
    assert (df["flags"] == "").all() and not [r for r in caplog.records if "column, so every row" in r.getMessage()]


def test_a_media_column_in_another_case_is_ignored_when_the_dataset_has_no_such_modality(tmp_path):
    path = write(tmp_path / "m.csv", ["c1,u0,train,Ann,calm,Hi,x.mp4", "c2,u1,test,Bob,calm,Yo,y.mp4"],
                 "dialogue_id,utterance_id,split,speaker,label,text,Video_Path")
    frame, _, _ = build(path, tmp_path / "out", modalities=["text"])
    assert len(frame) == 2
    with pytest.raises(ManifestError, match=r"rename 'Video_Path' to 'video_path'"):
        build(path, tmp_path / "out2")


def test_tolerated_oddities(tmp_path, caplog):
    """Trailing empty fields and unnamed columns (as spreadsheets write them), a quoted multi-line text, labels
    and classes in different Unicode normal forms; rows of a dialogue that are not next to each other are read
    as one dialogue, with a warning in the log."""
    decomposed = "fro\u0308hlich"  # "fröhlich" as "o" + combining diaeresis
    lines = ["d1,u0,train,Ann,calm,\"two\nlines\",,", f"d2,u1,test,Bob,{decomposed},x,,", "d1,u2,train,Bob,calm,y"]
    path = write(tmp_path / "m.csv", lines, "dialogue_id,utterance_id,split,speaker,label,text,,")
    build_manifest("mine", {"format": "csv", "manifest": str(path), "classes": ["calm", "fröhlich"]}, tmp_path / "out")
    df = manifest_io.read(tmp_path / "out" / "manifest.tsv")
    assert df["utterance_id"].tolist() == ["u0", "u2", "u1"]
    assert df["text"].tolist() == ["two lines", "y", "x"] and df["label"].tolist()[2] == "fröhlich"
    assert "the rows of 1 dialogue(s) are not next to each other in the file (e.g. ['d1'])" in caplog.text
    assert ["scattered_dialogue" in f.split(";") for f in df["flags"]] == [True, True, False]  # and in issues.tsv
    issues = pd.read_csv(tmp_path / "out" / "issues.tsv", sep="\t", keep_default_na=False)
    issues = issues[issues["reason"] == "scattered_dialogue"].reset_index(drop=True)
    assert issues[["utterance_id", "line"]].values.tolist() == [["u0", 2], ["u2", 5]]
    assert "dialogue d1's rows are on lines 2, 5, with other dialogues' rows between them" in issues["detail"][0]
    with pytest.raises(ValueError, match=r"`classes` must be names .*without spaces around them; got \['calm '\]"):
        build_manifest("mine", {"format": "csv", "manifest": str(path), "classes": ["calm ", "x"]}, tmp_path / "o2")
    with pytest.raises(ValueError, match=r"got \[0, 1\] \(quote numbers"):
        build_manifest("mine", {"format": "csv", "manifest": str(path), "classes": [0, 1]}, tmp_path / "o2")


def test_text_repair_keeps_correct_utf8_and_says_what_it_changed(tmp_path):
    lines = ["d1,u0,train,Anna,calm,\"„Tschüß“, sagte sie.\"", "d1,u1,train,Ben,calm,JOSÉ’S CAFÉ",
             "d1,u2,train,Ann,calm,Itâ€™s my company\u0092s", "d1,u3,train,Ann,calm,Wait\u0085what"]
    df, issues, _ = build(write(tmp_path / "m.csv", lines, "dialogue_id,utterance_id,split,speaker,label,text"),
                          tmp_path / "out", modalities=["text"])
    assert df["text"].tolist() == ["„Tschüß“, sagte sie.", "JOSÉ’S CAFÉ", "It’s my company’s", "Wait…what"]
    assert df["flags"].tolist() == ["", "", "text_fixed", "text_fixed"]
    assert issues["detail"].tolist() == ["mis-decoded characters repaired: text 'â€™' -> '’'; text '\\x92' -> '’'",
                                         "mis-decoded characters repaired: text '\\x85' -> '…'"]
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"dialogue_id,utterance_id,split,speaker,label,text\n" + b"d1,u0,train,A,calm,x\n" * 300
                    + b"d2,u1,test,A,calm,he\x00llo\n")
    with pytest.raises(ManifestError, match=r"nul.csv, line 302: a NUL byte"):
        build(nul, tmp_path / "out2")


def test_bad_config(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest CSV .*nope.csv does not exist"):
        build(tmp_path / "nope.csv", tmp_path / "out")
    path = write(tmp_path / "m.csv", GOOD)
    with pytest.raises(ValueError, match=r"needs `classes`"):
        build_manifest("mine", {"format": "csv", "manifest": str(path)}, tmp_path / "out")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['split_file'\]"):
        build(path, tmp_path / "out", split_file="x.json")
    (tmp_path / "bin.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100))
    with pytest.raises(ManifestError, match=r"bin.csv is not a text file"):
        build(tmp_path / "bin.csv", tmp_path / "out")
    # What a spreadsheet leaves instead of CSV text is named: a workbook, UTF-16 without its byte-order mark.
    (tmp_path / "book.csv").write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(60))
    with pytest.raises(ManifestError, match=r"book.csv is not a text file \(it holds NUL bytes\): a zip archive, as "
                                            r"an Excel .xlsx workbook is; expected UTF-8 text"):
        build(tmp_path / "book.csv", tmp_path / "out")
    (tmp_path / "utf16.csv").write_bytes(path.read_text().encode("utf-16-le"))
    with pytest.raises(ManifestError, match=r"UTF-16 text without a byte-order mark"):
        build(tmp_path / "utf16.csv", tmp_path / "out")
    (tmp_path / "sep.csv").write_text("sep=,\n" + path.read_text())
    with pytest.raises(ManifestError, match=r"line 1 \('sep=,'\) is a spreadsheet's separator line, not the header: "
                                            r"delete it"):
        build(tmp_path / "sep.csv", tmp_path / "out")
    with pytest.raises(ValueError, match=re.escape("`classes` names ['calm'] more than once; give each class once")):
        build_manifest("mine", {"format": "csv", "manifest": str(path), "classes": ["calm", "angry", "calm"]},
                       tmp_path / "out")
    # Composed and decomposed "café" are one label once NFC-normalized: a phantom class id with no data before.
    expected = "`classes` entries 'caf\\xe9', 'cafe\\u0301' are the same name written with different Unicode"
    with pytest.raises(ValueError, match=re.escape(expected)):
        build_manifest("mine", {"format": "csv", "manifest": str(path), "classes": ["caf\u00e9", "cafe\u0301", "calm"]},
                       tmp_path / "out")


def train_test_csv(path: Path, n_train: int = 10) -> Path:
    """n_train two-utterance train dialogues t0.. and one test dialogue; no valid rows."""
    lines = [f"t{d},t{d}_u{i},train,A{i},{CLASSES[(d + i) % 3]},x{i},,,," for d in range(n_train) for i in range(2)]
    return write(path, lines + ["s0,s0_u0,test,A,calm,y,,,,"])


def test_valid_split_holds_out_seeded_train_dialogues(tmp_path):
    path = train_test_csv(tmp_path / "m.csv")
    df, _, summary = build(path, tmp_path / "out", modalities=["text"], valid_split={"fraction": 0.3, "seed": 4})
    held_out = manifest_io.draw_held_out([f"t{d}" for d in range(10)], 0.3, 4)
    assert len(held_out) == 3
    assert sorted(df.loc[df["split"] == "valid", "dialogue_id"].unique()) == sorted(held_out)
    assert set(df.loc[df["split"] == "train", "dialogue_id"]) == {f"t{d}" for d in range(10)} - set(held_out)
    assert df.loc[df["split"] == "test", "dialogue_id"].tolist() == ["s0"]
    assert summary["dialogues_per_split"] == {"train": 7, "valid": 3, "test": 1}
    assert summary["valid_split"]["protocol"] == "fraction" and summary["valid_split"]["dialogues"] == held_out
    # Another seed draws other dialogues; the same seed the same ones (the manifest job is reproducible).
    other, _, _ = build(path, tmp_path / "out2", modalities=["text"], valid_split={"fraction": 0.3, "seed": 5})
    assert set(other.loc[other["split"] == "valid", "dialogue_id"]) != set(held_out)
    again, _, _ = build(path, tmp_path / "out3", modalities=["text"], valid_split={"fraction": 0.3, "seed": 4})
    assert again.equals(df)
    listed, _, summary = build(path, tmp_path / "out4", modalities=["text"], valid_split={"dialogues": ["t2", "t7"]})
    assert sorted(listed.loc[listed["split"] == "valid", "dialogue_id"].unique()) == ["t2", "t7"]
    assert summary["valid_split"]["protocol"] == "dialogues"


def test_valid_split_refusals_and_the_missing_valid_note(tmp_path, caplog):
    path = train_test_csv(tmp_path / "m.csv")
    _, _, summary = build(path, tmp_path / "kept", modalities=["text"])
    assert "datasets.mine: " in caplog.text and "m.csv has no valid rows" in caplog.text  # the manifest job's log
    assert summary["valid_split"]["protocol"] == "none"
    assert "m.csv has no valid rows; training and fine-tuning choose their epoch on valid, so hold out train " \
           "dialogues with `valid_split: {fraction: 0.1, seed: 0}`" in summary["valid_split"]["note"]
    with pytest.raises(ManifestError, match=r"m.csv: valid_split.dialogues \['s0'\] must be train dialogues"):
        build(path, tmp_path / "out", valid_split={"dialogues": ["t1", "s0"]})
    with pytest.raises(ManifestError, match=r"lists all 10 train dialogues, which would leave none to train on"):
        build(path, tmp_path / "out", valid_split={"dialogues": [f"t{d}" for d in range(10)]})
    with_valid = write(tmp_path / "v.csv", GOOD + ["c3,c3_u0,valid,Ann,calm,x,,,,"])
    with pytest.raises(ManifestError, match=r"v.csv already has valid rows, and the dataset config also sets valid_split"):
        build(with_valid, tmp_path / "out", valid_split={"fraction": 0.5, "seed": 0})
    one = write(tmp_path / "one.csv", GOOD)  # a single train dialogue cannot give one away
    with pytest.raises(ManifestError, match=r"one.csv: valid_split .*1 train dialogue\(s\), too few"):
        build(one, tmp_path / "out", valid_split={"fraction": 0.5, "seed": 0})
    assert not (tmp_path / "out" / "manifest.tsv").exists()


def test_a_dialogue_id_reused_in_two_splits_is_refused_with_the_usual_fix(tmp_path):
    """MELD-style exports number each split's dialogues from 0: the refusal says how to make the ids unique."""
    path = write(tmp_path / "m.csv", ["d0,a,train,Ann,calm,hi,,,,", "d0,b,test,Bob,calm,yo,,,,"])
    with pytest.raises(ManifestError, match=r"has rows in several splits \['test', 'train'\]; a dialogue belongs to "
                                            r"one split. If each split numbers its dialogues from 0 .*with the split "
                                            r"as a prefix \(train_dia0, test_dia0\)"):
        build(path, tmp_path / "out", modalities=["text"])


def test_the_coverage_page_shows_labels_per_split_and_text_the_encoder_read_in_part(tmp_path):
    """A class without valid utterances (selection cannot see it), truncated and emoji-only utterances were said
    only in job logs; the coverage page, which the report shows, now says them."""
    from ercpipe.io import features as feature_io
    from ercpipe.report import feature_coverage

    path = write(tmp_path / "m.csv", ["c1,a,train,Ann,calm,hi,,,,", "c1,b,train,Bob,angry,no,,,,",
                                      "c1,c,train,Ann,happy,yes,,,,", "c2,d,valid,Ann,calm,ok,,,,",
                                      "c2,e,valid,Bob,angry,😀,,,,", "c3,f,test,Cy,happy,fine,,,,"])
    df, _, _ = build(path, tmp_path / "out", modalities=["text"])
    ids = df["utterance_id"].tolist()
    feature_io.write(tmp_path / "minilm.h5", feature_io.FeatureSet(
        ids, np.zeros((len(ids), 2), np.float32), np.ones(len(ids), bool),
        {"modality": "text", "truncated": json.dumps({ids[0]: 600}), "unknown_only": json.dumps([ids[4]])}))
    feature_coverage(tmp_path / "out/manifest.tsv", [tmp_path / "minilm.h5"], tmp_path / "coverage.tsv",
                     tmp_path / "coverage.html", tmp_path / "out/summary.json")
    page = (tmp_path / "coverage.html").read_text()
    section = page.split("<h3>Labels per split</h3>")[1].split("<h3>")[0]
    rows = [re.findall(r"<td>([^<]*)</td>", row) for row in section.split("</thead>")[1].split("</tr>")[:-1]]
    assert rows == [["calm", "1", "1", "0", "2"], ["angry", "1", "1", "0", "2"], ["happy", "1", "0", "1", "2"]]
    header = re.findall(r"<th>([^<]*)</th>", section.split("</thead>")[0])
    assert header == ["class", "train", "valid", "test", "all"]  # no empty "split" column (crosstab's axis name)
    assert "<b>No valid utterance of happy</b>: choosing the epoch" in section
    assert "<b>No test utterance of calm, angry</b>" in section
    unread = page.split("<h3>Text the encoder read only in part</h3>")[1].split("<h3>")[0]
    assert [re.findall(r"<td>([^<]*)</td>", row) for row in unread.split("</thead>")[1].split("</tr>")[:-1]] == [
        ["text/minilm", "1", "1"]]
    assert "Rows left out of the manifest" not in page
    # Rejected rows (an IEMOCAP label outside the classes) were only in issues.tsv, a download in the report.
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    summary["rejected_counts"] = {"label_not_in_classes": 3, "not_evaluated": 1}
    (tmp_path / "out/summary.json").write_text(json.dumps(summary))
    feature_coverage(tmp_path / "out/manifest.tsv", [tmp_path / "minilm.h5"], tmp_path / "coverage.tsv",
                     tmp_path / "coverage.html", tmp_path / "out/summary.json")
    left_out = (tmp_path / "coverage.html").read_text().split("<h3>Rows left out of the manifest</h3>")[1]
    assert [re.findall(r"<td>([^<]*)</td>", row) for row in
            left_out.split("</thead>")[1].split("</tbody>")[0].split("</tr>")[:-1]] == [
        ["label_not_in_classes", "3"], ["not_evaluated", "1"]]


def test_only_declared_media_is_looked_at(data_dir, tmp_path):
    lines = ["c1,u0,train,Ann,calm,one,audio/gone.wav,,,", "c1,u1,train,Bob,calm,two,,,,",
             "c1,u2,train,Bob,calm,three,audio/call1.wav,x,1.0,"]  # times that say nothing without media
    path = write(data_dir / "m.csv", lines)
    df, issues, _ = build(path, tmp_path / "text", modalities=["text"])
    assert (df["flags"] == "").all() and issues.empty
    df, issues, _ = build(path, tmp_path / "audio", modalities=["text", "audio"])
    assert df["flags"].tolist() == ["missing_audio", "missing_audio", "bad_time"]  # no video expected: no no_video
    assert sorted(issues["reason"]) == ["bad_time", "missing_audio", "missing_audio"]


def test_a_changed_valid_split_re_runs_the_join_not_the_shards_or_the_extraction(tmp_path):
    """valid_split is applied when the manifest shards are joined: changing it re-runs that join and what reads
    the joined manifest, never a shard's manifest job or a feature extraction job."""
    from workflow_run import planned_jobs, snakemake, write_config

    train_test_csv(tmp_path / "mine.csv", n_train=8)
    config = {"datasets": {"mine": {"format": "csv", "manifest": "mine.csv", "classes": CLASSES, "shards": 2,
                                    "modalities": ["text"], "valid_split": {"fraction": 0.25, "seed": 0}}},
              "features": {"text": {"minilm": {"model": "packaged:minilm"}}},
              "experiments": {"mine_sdt": {"dataset": "mine", "features": {"text": "minilm"}, "anchors": None,
                                           "preset": "sdt", "seeds": [0]}}}
    target = "features/mine/text/minilm.h5"
    snakemake(tmp_path, write_config(tmp_path, config), target, "--cores", "1")
    first = manifest_io.read(tmp_path / "features/mine/manifest.tsv")
    assert set(first.loc[first["split"] == "valid", "dialogue_id"]) == set(
        manifest_io.draw_held_out([f"t{d}" for d in range(8)], 0.25, 0))
    shards = sorted((tmp_path / "features/mine/manifest_shards").glob("shard*.tsv"))
    assert not any((manifest_io.read(s)["split"] == "valid").any() for s in shards if "issues" not in s.name)
    stamps = {p: p.stat().st_mtime_ns for p in [*shards, *(tmp_path / "features/mine/text/minilm").glob("*.h5")]}

    config["datasets"]["mine"]["valid_split"] = {"fraction": 0.25, "seed": 3}
    configfile = write_config(tmp_path, config)
    assert planned_jobs(snakemake(tmp_path, configfile, target, "-n").stdout) == {"build_manifest": 1,
                                                                                  "merge_features": 1}
    snakemake(tmp_path, configfile, target, "--cores", "1")
    after = manifest_io.read(tmp_path / "features/mine/manifest.tsv")
    assert set(after.loc[after["split"] == "valid", "dialogue_id"]) == set(
        manifest_io.draw_held_out([f"t{d}" for d in range(8)], 0.25, 3)) != set(
        first.loc[first["split"] == "valid", "dialogue_id"])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_hand_edited_manifest_with_an_infinite_time_is_refused_naming_the_utterance(data_dir, tmp_path):
    build(write(data_dir / "mine.csv", GOOD), tmp_path / "out")
    frame = manifest_io.read(tmp_path / "out" / "manifest.tsv")
    frame.loc[1, "audio_start"] = math.inf
    manifest_io.write(frame, tmp_path / "edited.tsv")
    with pytest.raises(ManifestError, match=r"edited.tsv: utterance c1_u1 has an infinite time"):
        manifest_io.read(tmp_path / "edited.tsv")


def test_a_speaker_written_with_a_run_of_spaces_is_the_same_speaker(data_dir, tmp_path):
    lines = ["c1,u0,train,Ann Lee,calm,one,audio/call1.wav,,,", "c1,u1,train,Bob,calm,two,audio/call1.wav,,,",
             "c1,u2,train, Ann  Lee ,calm,three,audio/call1.wav,,,"]
    df, _, _ = build(write(data_dir / "m.csv", lines), tmp_path / "out")
    assert df["speaker"].tolist() == ["Ann Lee", "Bob", "Ann Lee"] and df["speaker_slot"].tolist() == [0, 1, 0]


def test_a_speaker_and_text_spelt_in_another_unicode_form_or_mis_decoded_are_one_spelling(tmp_path):
    """"JosÃ©" (mojibake) and "Jose" + a combining accent (a Mac's NFD) were other speakers than "José", each with a
    slot of its own; an NFD transcript was tokenized as other tokens by a cased tokenizer."""
    lines = ["d1,u0,train,José,calm,Café déjà vu", "d1,u1,train,Bob,calm,hi",
             "d1,u2,train,Jose\u0301,calm,Cafe\u0301 de\u0301ja\u0300 vu", "d1,u3,train,JosÃ©,calm,ok"]
    df, issues, _ = build(write(tmp_path / "m.csv", lines, "dialogue_id,utterance_id,split,speaker,label,text"),
                          tmp_path / "out", modalities=["text"])
    assert df["speaker"].tolist() == ["José", "Bob", "José", "José"] and df["speaker_slot"].tolist() == [0, 1, 0, 0]
    assert df["text"].tolist()[2] == df["text"].tolist()[0] == "Café déjà vu"
    assert df["flags"].tolist() == ["", "", "", "text_fixed"]
    assert issues["detail"].tolist() == ["mis-decoded characters repaired: speaker 'Ã©' -> 'é'"]


def test_a_class_without_train_or_valid_utterances_is_warned_about(data_dir, tmp_path, caplog):
    lines = ["c1,u0,train,Ann,calm,one,,,,", "c1,u1,train,Bob,angry,two,,,,", "v1,v0,valid,Ann,calm,x,,,,",
             "t1,w0,test,Ann,happy,three,,,,"]
    with caplog.at_level(logging.WARNING, logger="ercpipe.datasets.summary"):
        build(write(data_dir / "m.csv", lines), tmp_path / "out", modalities=["text"])
    assert "class(es) ['happy'] have no train utterance: no model can learn them" in caplog.text
    assert "class(es) ['angry', 'happy'] have no valid utterance: model selection does not see them" in caplog.text


def test_media_named_in_the_other_unicode_form_or_beside_a_symlinked_manifest_are_found(data_dir, tmp_path):
    """A file copied from macOS has its name in NFD while the CSV says NFC; a manifest reached through a symlink
    names its media relative to where it really is. Both were flagged missing_audio, with a path that looked right."""
    import unicodedata

    nfd = unicodedata.normalize("NFD", "Zoë.wav")
    (data_dir / "audio" / nfd).write_bytes((data_dir / "audio" / "call1.wav").read_bytes())
    lines = ["c1,u0,train,Ann,calm,one,audio/Zo\u00eb.wav,,,", "c1,u1,train,Bob,calm,two,audio/call2.wav,,,"]
    csv_path = write(data_dir / "m.csv", lines)
    linked = tmp_path / "elsewhere" / "link.csv"
    linked.parent.mkdir()
    linked.symlink_to(csv_path)
    df, issues, _ = build(linked, tmp_path / "out", modalities=["text", "audio"])
    assert df["audio_path"].tolist() == [str(data_dir / "audio" / nfd), str(data_dir / "audio/call2.wav")]
    assert df["flags"].tolist() == ["", ""] and issues.empty


def test_audio_times_on_a_file_that_is_also_the_video_without_video_times_are_warned_about(data_dir, tmp_path,
                                                                                           caplog):
    lines = ["c1,u0,train,Ann,calm,one,audio/call1.wav,0.0,0.8,audio/call1.wav",
             "c1,u1,train,Bob,calm,two,audio/call1.wav,,,audio/call1.wav"]
    with caplog.at_level(logging.WARNING, logger="ercpipe.datasets.csv_manifest"):
        build(write(data_dir / "m.csv", lines), tmp_path / "out")
    assert "1 row(s) (e.g. ['u0']) give audio_start/audio_end for a file that is also their video_path" in caplog.text


def test_an_empty_speaker_cell_is_flagged_with_its_line(tmp_path):
    """Rows without a speaker became one speaker '' of the dialogue (a bare ':' before their text in a context
    with speakers), with nothing in issues.tsv; MELD's reader flagged the same thing."""
    path = write(tmp_path / "m.csv", ["c1,u0,train,,calm,Hi", "c1,u1,train,Bob,angry,No", "c1,u2,train,,calm,So",
                                      "c2,u3,test,Ann,calm,Yo"], "dialogue_id,utterance_id,split,speaker,label,text")
    df, issues, summary = build(path, tmp_path / "out", modalities=["text"])
    frame = df.set_index("utterance_id")
    assert frame["flags"].to_dict() == {"u0": "empty_speaker", "u1": "", "u2": "empty_speaker", "u3": ""}
    # A last speaker column left out of a row whose speaker is unknown reads as empty, as before: not a short row.
    last = write(tmp_path / "last.csv", ["c1,u0,train,calm,Hi,Ann", "c1,u1,train,angry,No"],
                 "dialogue_id,utterance_id,split,label,text,speaker")
    assert build(last, tmp_path / "last", modalities=["text"])[0]["flags"].tolist() == ["", "empty_speaker"]
    assert frame["speaker_slot"].tolist() == [0, 1, 0, 0]  # kept: the unnamed rows share a slot, as said
    rows = issues[issues["reason"] == "empty_speaker"].set_index("utterance_id")
    assert rows.loc["u2", "detail"] == (f"{path}, line 4: the speaker cell is empty; the rows of dialogue c1 without "
                                        "a speaker share one speaker slot: write the speaker's name (or an id, e.g. "
                                        "unknown1) if it is known")
    assert summary["flag_counts"] == {"empty_speaker": 2}

