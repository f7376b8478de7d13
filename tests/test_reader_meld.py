"""MELD reader: the real CSVs (text-only folder) and a small hand-written MELD.Raw with real clips."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from ercpipe.datasets import meld
from ercpipe.datasets.build import build_manifest
from ercpipe.datasets.csv_manifest import repair_mojibake
from ercpipe.io import manifest as manifest_io
from ercpipe.io.manifest import ManifestError
from ercpipe.labels import MELD_CLASSES

HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


def write_clip(path: Path, seconds: float = 0.5, audio: bool = True, silent: bool = False, rate: int = 16000) -> None:
    """A small H.264 (+ AAC) clip, as MELD ships them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=8)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("aac", rate=rate, layout="mono") if audio else None
        for i in range(int(seconds * 8)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            n = int(seconds * rate)
            signal = np.zeros(n, np.float32) if silent else \
                (0.3 * np.sin(2 * np.pi * 300 * np.arange(n) / rate)).astype(np.float32)
            for start in range(0, n, 1024):
                frame = av.AudioFrame.from_ndarray(signal[None, start:start + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))


def csv_line(sr: int, text: str, speaker: str, emotion: str, dia: int, utt: int, start: str, end: str) -> str:
    quoted = '"' + text.replace('"', '""') + '"'
    return f'{sr},{quoted},{speaker},{emotion},neutral,{dia},{utt},1,1,"{start}","{end}"'


# Rows per split: (text, speaker, emotion, dialogue, utterance, start, end). Deliberately out of order.
ROWS = {
    "train": [
        ("Hi there.", "Ross", "neutral", 0, 0, "00:00:01,000", "00:00:02,000"),
        ("Oh no!", "Rachel", "sadness", 1, 0, "0:01:00,000", "0:01:02,500"),
        ("Itâ€™s fine.", "Ross", "joy", 0, 2, "00:00:04,000", "00:00:05,000"),  # mojibake
        ("What?", "Monica", "surprise", 0, 1, "00:00:02,500", "00:00:03,500"),
        ("Really.", "Rachel", "anger", 1, 1, "0:01:03,000", "bogus"),  # unparsable time
    ],
    "dev": [
        ("Great.", "Joey", "joy", 0, 0, "00:10:00,000", "00:10:02,000"),
        ("Ugh.", "Phoebe", "disgust", 0, 1, "00:10:03,000", "00:10:02,900"),  # reversed
    ],
    "test": [
        ("Help!", "Chandler", "fear", 0, 0, "00:05:00,000", "00:05:03,000"),
        ("Calm down.", "Joey", "neutral", 0, 1, "00:05:01,000", "00:05:02,000"),
        ("No, you.", "Chandler", "anger", 0, 2, "00:05:02,000", "00:05:04,000"),  # overlaps his own line
    ],
}
CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def write_csv(path: Path, rows: list[tuple], encoding: str = "utf-8-sig") -> None:
    lines = [HEADER] + [csv_line(i + 1, *row) for i, row in enumerate(rows)]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))


def make_meld(root: Path, with_clips: bool = True) -> Path:
    root.mkdir(parents=True)
    for split, rows in ROWS.items():
        write_csv(root / f"{split}_sent_emo.csv", rows)
        if with_clips:
            for *_, dia, utt, _, _ in rows:
                write_clip(root / CLIP_DIRS[split] / f"dia{dia}_utt{utt}.mp4")
    if with_clips:
        # The three defects MELD really has: a missing clip, an undecodable one, one without sound.
        (root / "train_splits/dia1_utt1.mp4").unlink()
        (root / "dev_splits_complete/dia0_utt1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 300)
        write_clip(root / "output_repeated_splits_test/dia0_utt2.mp4", audio=False)
    return root


@pytest.fixture(scope="module")
def meld_root(tmp_path_factory) -> Path:
    return make_meld(tmp_path_factory.mktemp("meld") / "MELD.Raw")


def read_outputs(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    issues = pd.read_csv(out / "issues.tsv", sep="\t", dtype=str, keep_default_na=False)
    return manifest_io.read(out / "manifest.tsv"), issues, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def built(meld_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    build_manifest("meld_small", {"format": "meld", "root": str(meld_root)}, out)
    return read_outputs(out)


def test_rows_ids_order_and_speakers(built, meld_root):
    df, _, _ = built
    assert df["utterance_id"].tolist() == [
        "train_dia0_utt0", "train_dia0_utt1", "train_dia0_utt2", "train_dia1_utt0", "train_dia1_utt1",
        "dev_dia0_utt0", "dev_dia0_utt1", "test_dia0_utt0", "test_dia0_utt1", "test_dia0_utt2"]
    assert df["dialogue_id"].unique().tolist() == ["train_dia0", "train_dia1", "dev_dia0", "test_dia0"]
    assert df["split"].tolist() == ["train"] * 5 + ["valid"] * 2 + ["test"] * 3
    assert df["utterance_index"].tolist() == [0, 1, 2, 0, 1, 0, 1, 0, 1, 2]
    assert df["speaker_slot"].tolist() == [0, 1, 0, 0, 0, 0, 1, 0, 1, 0]
    assert df["text"].tolist()[2] == "It’s fine."
    first = df.iloc[0]
    assert first["audio_path"] == first["video_path"] == str(meld_root / "train_splits" / "dia0_utt0.mp4")
    assert df[["audio_start", "audio_end", "video_start", "video_end"]].isna().all().all()


def test_defects_are_kept_and_flagged(built):
    df, issues, summary = built
    flags = df.set_index("utterance_id")["flags"].to_dict()
    assert flags["train_dia0_utt2"] == "text_fixed"
    assert flags["train_dia1_utt1"] == "bad_time;missing_video;missing_audio"
    assert flags["dev_dia0_utt1"] == "bad_time;corrupt_video;corrupt_audio"
    assert flags["test_dia0_utt2"] == "overlap;no_audio_stream"
    assert {k for k, v in flags.items() if v} == {"train_dia0_utt2", "train_dia1_utt1", "dev_dia0_utt1",
                                                   "test_dia0_utt2"}
    assert summary["flag_counts"] == {"missing_audio": 1, "missing_video": 1, "corrupt_video": 1, "corrupt_audio": 1,
                                      "no_audio_stream": 1, "bad_time": 2, "overlap": 1, "text_fixed": 1}
    # Every flag is an issue row naming the CSV file and the line of the record.
    assert len(issues) == sum(summary["flag_counts"].values())
    bad_time = issues[(issues["reason"] == "bad_time") & (issues["utterance_id"] == "train_dia1_utt1")].iloc[0]
    assert bad_time["file"].endswith("train_sent_emo.csv") and bad_time["line"] == "6" and "bogus" in bad_time["detail"]


def test_summary(built):
    _, _, summary = built
    assert summary["classes"] == list(MELD_CLASSES)
    assert summary["counts_per_split"] == {"train": 5, "valid": 2, "test": 3}
    assert summary["dialogues_per_split"] == {"train": 2, "valid": 1, "test": 1}
    assert summary["counts_per_label"]["neutral"] == 2 and summary["counts_per_label"]["anger"] == 2
    checks = {c["check"]: c for c in summary["checks"]}
    assert checks["train utterances"] == {"check": "train utterances", "ok": False, "expected": 9989, "found": 5}
    assert summary["probe_media"] is True


def test_real_csvs_text_only(meld_csv_dir, tmp_path):
    """The real MELD CSVs in a folder without clips, declared text-only: a complete manifest."""
    root = tmp_path / "MELD.Raw"
    root.mkdir()
    for name in ("train_sent_emo.csv", "dev_sent_emo.csv", "test_sent_emo.csv"):
        shutil.copy(meld_csv_dir / name, root / name)
    build_manifest("meld", {"format": "meld", "root": str(root), "probe_media": False, "modalities": ["text"]}, tmp_path / "out")
    df, issues, summary = read_outputs(tmp_path / "out")
    assert len(df) == 13708
    assert summary["counts_per_split"] == {"train": 9989, "valid": 1109, "test": 2610}
    assert summary["dialogues_per_split"] == {"train": 1038, "valid": 114, "test": 280}
    assert summary["counts_per_label"] == {"neutral": 6436, "surprise": 1636, "fear": 358, "sadness": 1002,
                                           "joy": 2308, "disgust": 361, "anger": 1607}
    assert summary["counts_per_split_label"]["train"] == {"neutral": 4710, "surprise": 1205, "fear": 268,
                                                          "sadness": 683, "joy": 1743, "disgust": 271, "anger": 1109}
    assert summary["max_speakers_per_dialogue"] == 9 and df["speaker_slot"].max() == 8
    assert summary["checks_ok"] is True
    # Text-only: no media flags, and no bad_time (its times cut no media); MELD's own overlapping times remain.
    assert summary["flag_counts"] == {"overlap": 253} and set(issues["reason"]) == {"overlap"}
    assert df["text"].str.contains("’").sum() > 3000 and not df["text"].str.contains("â€").any()
    row = df.set_index("utterance_id").loc["train_dia0_utt0"]
    assert row["speaker"] == "Chandler" and row["label"] == "neutral"
    assert row["text"] == "also I was the point person on my company’s transition from the KL-5 to GR-6 system."


def test_dev_and_test_csvs_under_each_others_names_stop_the_reader(meld_csv_dir, tmp_path, caplog):
    """Swapped, the release's test split became the validation split that chooses epochs and models, and only
    summary.json's checks said so."""
    root = tmp_path / "MELD.Raw"
    root.mkdir()
    for name, source in (("train_sent_emo.csv", "train_sent_emo.csv"), ("dev_sent_emo.csv", "test_sent_emo.csv"),
                         ("test_sent_emo.csv", "dev_sent_emo.csv")):
        shutil.copy(meld_csv_dir / source, root / name)
    config = {"format": "meld", "root": str(root), "modalities": ["text"]}
    with pytest.raises(ManifestError, match=r"dev_sent_emo.csv holds 2610 utterances in 280 dialogues and .*"
                                            r"test_sent_emo.csv 1109 in 114: the release's test and dev counts, "
                                            r"exchanged"):
        build_manifest("m", config, tmp_path / "out")
    # A subset is not a swap: it reads, and the failed checks are a warning (the workflow shows it, test_config).
    shutil.copy(meld_csv_dir / "dev_sent_emo.csv", root / "dev_sent_emo.csv")
    lines = (meld_csv_dir / "test_sent_emo.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (root / "test_sent_emo.csv").write_text("".join(lines[:101]), encoding="utf-8")
    with caplog.at_level("WARNING"):
        build_manifest("m", config, tmp_path / "out")
    assert "MELD: 2 check(s) against the release failed (test utterances: 100, expected 2610, test dialogues: " in (
        caplog.text)


def test_encodings_bom_cp1252_and_mojibake(tmp_path):
    root = make_meld(tmp_path / "MELD.Raw", with_clips=False)
    rows = [("Itâ€™s Ã©clair â€” ok", "Ross", "joy", 0, 0, "00:00:01,000", "00:00:02,000"),
            ("Don\u2019t café", "Ross", "neutral", 0, 1, "00:00:03,000", "00:00:04,000"),
            ("plain", "Ross", "neutral", 0, 2, "00:00:05,000", "00:00:06,000")]
    # A file with a BOM whose lines mix UTF-8 mojibake (row 1) and raw cp1252 bytes for ’ and é (row 2).
    lines = [HEADER] + [csv_line(i + 1, *row) for i, row in enumerate(rows)]
    (root / "train_sent_emo.csv").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(
        [line.encode("cp1252" if i == 2 else "utf-8") for i, line in enumerate(lines)]))
    write_csv(root / "dev_sent_emo.csv", rows[1:], encoding="utf-8")  # no BOM
    build_manifest("m", {"format": "meld", "root": str(root), "probe_media": False, "modalities": ["text"]}, tmp_path / "out")
    df, _, _ = read_outputs(tmp_path / "out")
    texts = df.set_index("utterance_id")["text"]
    flags = df.set_index("utterance_id")["flags"]
    assert texts["train_dia0_utt0"] == "It’s éclair — ok"
    assert texts["train_dia0_utt1"] == texts["dev_dia0_utt1"] == "Don’t café"
    assert "text_fixed" in flags["train_dia0_utt0"] and "text_fixed" in flags["train_dia0_utt1"]
    assert "text_fixed" not in flags["train_dia0_utt2"] and "text_fixed" not in flags["dev_dia0_utt1"]
    # A speaker spelt in NFD (a Mac) or as mojibake was another speaker, with a slot of its own; CSV datasets and
    # `ercpipe predict` read them as one.
    rows = [("a", "José", "joy", 0, 0, "00:00:01,000", "00:00:02,000"),
            ("b", "Ross", "joy", 0, 1, "00:00:03,000", "00:00:04,000"),
            ("c", "Jose\u0301", "joy", 0, 2, "00:00:05,000", "00:00:06,000"),
            ("d", "JosÃ©", "joy", 0, 3, "00:00:07,000", "00:00:08,000")]
    write_csv(root / "train_sent_emo.csv", rows)
    build_manifest("m", {"format": "meld", "root": str(root), "probe_media": False, "modalities": ["text"]},
                   tmp_path / "out2")
    df, _, _ = read_outputs(tmp_path / "out2")
    train = df[df["split"] == "train"]
    assert train["speaker"].tolist() == ["José", "Ross", "José", "José"]
    assert train["speaker_slot"].tolist() == [0, 1, 0, 0] and "text_fixed" in train["flags"].iat[3]


def test_repair_mojibake_leaves_good_text_alone():
    assert repair_mojibake("Itâ€™s â€œfineâ€\x9d â€¦") == ("It’s “fine” …", True)
    assert repair_mojibake("cafÃ©") == ("café", True)
    # MELD's released CSVs also hold cp1252 bytes read as latin-1: C1 control characters (U+0092 for "’").
    assert repair_mojibake("he\u0092s\u0085 I\u00c2\u0092m") == ("he’s… I’m", True)
    for good in ("It’s fine", "café …", "naïve — “x”", "plain", "„Tschüß“", "Das ist »groß«", "“¿Sí…”", "JOSÉ’S"):
        assert repair_mojibake(good) == (good, False)


def test_time_formats():
    assert meld.parse_time("00:16:16,059") == pytest.approx(976.059)
    assert meld.parse_time("0:13:42,477") == pytest.approx(822.477)
    assert meld.parse_time("00:06:47,28") == pytest.approx(407.28)
    assert meld.parse_time("00:61:00,000") is None and meld.parse_time("") is None


def test_wrong_root_and_missing_csv(tmp_path):
    with pytest.raises(ManifestError, match=r"MELD root .*nowhere does not exist.*MELD.Raw"):
        build_manifest("m", {"format": "meld", "root": str(tmp_path / "nowhere")}, tmp_path / "out")
    root = make_meld(tmp_path / "data" / "MELD.Raw", with_clips=False)
    with pytest.raises(ManifestError, match=rf"{tmp_path / 'data'} lacks .*train_sent_emo.csv.*use it as root"):
        build_manifest("m", {"format": "meld", "root": str(tmp_path / "data"), "modalities": ["text"]}, tmp_path / "out")
    # A split file cut to its header used to give a manifest without that split, and no error until training.
    test_csv = root / "test_sent_emo.csv"
    test_csv.write_text(test_csv.read_text().splitlines()[0] + "\n")
    with pytest.raises(ManifestError, match=rf"{test_csv} has a header but no rows; restore the release's "
                                            r"test_sent_emo.csv \(MELD's test split\)"):
        build_manifest("m", {"format": "meld", "root": str(root), "modalities": ["text"]}, tmp_path / "out")
    (root / "dev_sent_emo.csv").unlink()
    with pytest.raises(ManifestError, match=r"lacks \['dev_sent_emo.csv'\]"):
        build_manifest("m", {"format": "meld", "root": str(root), "modalities": ["text"]}, tmp_path / "out")


@pytest.mark.parametrize("mutate, message", [
    (lambda rows: rows + [("Again", "Ross", "neutral", 0, 0, "00:00:09,000", "00:00:10,000")],
     r"train_sent_emo.csv, line 7: Dialogue_ID 0, Utterance_ID 0 already appears on line 2"),
    (lambda rows: rows[:1] + [("x", "Ross", "happiness", 0, 1, "00:00:09,000", "00:00:10,000")],
     r"train_sent_emo.csv, line 3: emotion 'happiness' is not one of MELD's classes"),
    (lambda rows: rows[:1] + [("x", "Ross", "joy", "zero", 1, "00:00:09,000", "00:00:10,000")],
     r"train_sent_emo.csv, line 3: Dialogue_ID 'zero' is not an integer"),
    (lambda rows: rows[:1] + [("x", "Ross", "joy", 0, -1, "00:00:09,000", "00:00:10,000")],
     r"train_sent_emo.csv, line 3: Utterance_ID '-1' is negative"),  # it was put first in its dialogue
    (lambda rows: [(f"line {i}", f"Friend{i}", "joy", 0, i, "00:00:01,000", "00:00:02,000") for i in range(10)],
     r"dialogue train_dia0 has 10 speakers .*at most 9"),
])
def test_bad_rows_name_file_and_line(tmp_path, mutate, message):
    root = make_meld(tmp_path / "MELD.Raw", with_clips=False)
    write_csv(root / "train_sent_emo.csv", mutate(list(ROWS["train"])))
    with pytest.raises(ManifestError, match=message):
        build_manifest("m", {"format": "meld", "root": str(root), "probe_media": False, "modalities": ["text"]}, tmp_path / "out")


def test_unreadable_csv_and_bad_header(tmp_path):
    root = make_meld(tmp_path / "MELD.Raw", with_clips=False)
    (root / "test_sent_emo.csv").write_text("Sr No.,Text,Who\n1,hello,Ross\n")
    with pytest.raises(ManifestError, match=r"test_sent_emo.csv: header lacks column\(s\) \['Utterance', 'Speaker'"):
        build_manifest("m", {"format": "meld", "root": str(root), "probe_media": False, "modalities": ["text"]}, tmp_path / "out")
    (root / "test_sent_emo.csv").unlink()
    (root / "test_sent_emo.csv").mkdir()
    with pytest.raises(ManifestError, match=r"lacks \['test_sent_emo.csv'\]"):
        build_manifest("m", {"format": "meld", "root": str(root), "probe_media": False, "modalities": ["text"]}, tmp_path / "out")


def test_unknown_setting_is_named(meld_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['relabel'\]"):
        build_manifest("m", {"format": "meld", "root": str(meld_root), "relabel": {}}, tmp_path)
    with pytest.raises(ValueError, match=r"format 'avi' is not one of"):
        build_manifest("m", {"format": "avi", "root": str(meld_root)}, tmp_path)


def test_clip_folders_the_release_and_its_archives(meld_root, tmp_path):
    """A release whose inner archives are not unpacked (every clip folder missing) or lacks one split's clips is
    an error naming the archive, not a run in which every clip of a split is silently missing; a clip folder one
    level down, under the split's name, is read."""
    root = tmp_path / "MELD.Raw"
    shutil.copytree(meld_root, root)
    nested = root / "test"
    nested.mkdir()
    (root / CLIP_DIRS["test"]).rename(nested / CLIP_DIRS["test"])
    build_manifest("m", {"format": "meld", "root": str(root)}, tmp_path / "nested")
    df, issues, _ = read_outputs(tmp_path / "nested")
    assert df.set_index("utterance_id").loc["test_dia0_utt0", "video_path"] == str(nested / CLIP_DIRS["test"] /
                                                                                   "dia0_utt0.mp4")
    assert set(df.loc[df["split"] == "test", "flags"]) == {"", "overlap;no_audio_stream"}  # the clips were found

    shutil.rmtree(nested)
    (root / "test.tar.gz").write_bytes(b"")  # the release's archive, not unpacked
    message = (rf"MELD clip folder {root / CLIP_DIRS['test']} \(the test clips\) does not exist: {root}/test.tar.gz "
               rf"is there: unpack it inside {root} \(`tar -xzf {root}/test.tar.gz -C {root}`\). For a run on the "
               r"transcripts alone, declare the dataset text-only \(datasets.m.modalities: \[text\]\)")
    with pytest.raises(ManifestError, match=message):
        build_manifest("m", {"format": "meld", "root": str(root)}, tmp_path / "out")
    with pytest.raises(ManifestError, match=r"the test clips\) does not exist"):  # also without opening clips
        build_manifest("m", {"format": "meld", "root": str(root), "probe_media": False}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    build_manifest("m", {"format": "meld", "root": str(root), "modalities": ["text"]}, tmp_path / "text")

    # issues.tsv says what to do about a missing or broken clip, with the path as the dataset gives it.
    details = issues.set_index(["utterance_id", "reason"])["detail"]
    assert details["train_dia1_utt1", "missing_video"].endswith(
        "train_splits/dia1_utt1.mp4 does not exist; unpack it again from the release's archive (a few clips are "
        "absent from the release itself: then the utterance keeps its text only)")
    corrupt = details["dev_dia0_utt1", "corrupt_video"]
    assert corrupt.endswith("; replace it with a complete copy from the release's archive")
    assert corrupt.count(str(root / CLIP_DIRS["dev"] / "dia0_utt1.mp4")) == 1 + corrupt.count("InvalidDataError")


def test_a_clip_that_is_a_link_to_nowhere_says_to_fix_the_link(meld_root, tmp_path):
    """A clip linked from elsewhere (a release kept on another disk) whose target is gone: the fix is the link, not
    unpacking the release again."""
    root = tmp_path / "MELD.Raw"
    shutil.copytree(meld_root, root)
    clip = root / CLIP_DIRS["train"] / "dia0_utt0.mp4"
    clip.unlink()
    clip.symlink_to(tmp_path / "other_disk" / "dia0_utt0.mp4")
    build_manifest("m", {"format": "meld", "root": str(root)}, tmp_path / "out")
    issues = read_outputs(tmp_path / "out")[1].set_index(["utterance_id", "reason"])["detail"]
    assert issues["train_dia0_utt0", "missing_video"] == (
        f"{clip} is a link to {tmp_path / 'other_disk' / 'dia0_utt0.mp4'}, which does not exist: fix the link or "
        "restore the file")


def test_an_empty_speaker_cell_is_flagged_with_its_file_and_line(tmp_path):
    """It became a speaker named '' with a slot of its own, with no trace in issues.tsv."""
    root = tmp_path / "MELD.Raw"
    root.mkdir()
    for split, rows in ROWS.items():
        rows = [(*r[:1], "", *r[2:]) if (split, r[3], r[4]) == ("train", 0, 1) else r for r in rows]
        write_csv(root / f"{split}_sent_emo.csv", rows)
    build_manifest("m", {"format": "meld", "root": str(root), "modalities": ["text"]}, tmp_path / "out")
    df, issues, summary = read_outputs(tmp_path / "out")
    assert df.set_index("utterance_id").loc["train_dia0_utt1", "flags"] == "empty_speaker"
    (row,) = issues[issues["reason"] == "empty_speaker"].itertuples()
    assert (row.utterance_id, row.line) == ("train_dia0_utt1", "5")  # the 4th row of the file, after the header
    assert row.detail.endswith("train_sent_emo.csv, line 5: the Speaker cell is empty; write the speaker's name "
                               "(the speaker embedding tells speakers apart)")
    assert summary["flag_counts"] == {"empty_speaker": 1, "text_fixed": 1, "overlap": 1}


def test_csvs_without_the_time_columns_say_so_once_and_flag_no_row(tmp_path, caplog):
    """Every row was flagged bad_time "StartTime '' ... not parsable", and nothing said the columns were missing."""
    root = tmp_path / "MELD.Raw"
    root.mkdir()
    for split, rows in ROWS.items():
        lines = [HEADER.rsplit(",", 2)[0]] + [csv_line(i + 1, *r).rsplit(',"', 2)[0] for i, r in enumerate(rows)]
        (root / f"{split}_sent_emo.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        build_manifest("m", {"format": "meld", "root": str(root), "modalities": ["text"]}, tmp_path / "out")
    df, issues, summary = read_outputs(tmp_path / "out")
    assert len(df) == sum(len(rows) for rows in ROWS.values())
    assert not issues["reason"].isin(["bad_time", "overlap"]).any(), issues
    warned = [r.getMessage() for r in caplog.records if "no StartTime / EndTime columns" in r.getMessage()]
    assert len(warned) == 3 and "train_sent_emo.csv has no StartTime / EndTime columns" in warned[0]


def test_the_coverage_page_tells_flags_to_fix_from_flags_that_record(built, tmp_path):
    """On the real release most issue rows are repairs (text_fixed) and observations (overlap): the page says
    those need nothing, and names the flags that cost an utterance a modality."""
    from ercpipe.io import features as feature_io
    from ercpipe.report import feature_coverage

    df = built[0].copy()
    # The reader found the last utterance's audio missing (the extractor says so too, below).
    last_flags = df["flags"].iloc[-1]
    df.loc[df.index[-1], "flags"] = f"{last_flags};missing_audio" if last_flags else "missing_audio"
    manifest_io.write(df, tmp_path / "manifest.tsv")
    ids = df["utterance_id"].tolist()
    feature_io.write(tmp_path / "text.h5", feature_io.FeatureSet(ids, np.zeros((len(ids), 2), np.float32),
                                                                 np.ones(len(ids), bool), {"modality": "text"}))
    # Which utterances lack faces, and why (the page used to give counts only).
    present = np.ones(len(ids), bool)
    present[:3] = False
    why = {ids[0]: "no_face: no face in 4 frames", ids[1]: "no_face: no face in 2 frames",
           ids[2]: "corrupt_video: x.mp4: InvalidDataError"}
    feature_io.write(tmp_path / "faces.h5", feature_io.FeatureSet(
        ids, np.zeros((len(ids), 2), np.float32), present, {"modality": "visual", "absent": json.dumps(why)}))
    # A second file whose missing utterances are all in the last split: the tables join with 0, not blanks.
    last = np.ones(len(ids), bool)
    last[-1] = False
    feature_io.write(tmp_path / "audio.h5", feature_io.FeatureSet(
        ids, np.zeros((len(ids), 2), np.float32), last, {"modality": "audio",
                                                         "absent": json.dumps({ids[-1]: "missing_audio: x"})}))
    feature_coverage(tmp_path / "manifest.tsv", [tmp_path / "text.h5", tmp_path / "faces.h5", tmp_path / "audio.h5"],
                     tmp_path / "coverage.tsv", tmp_path / "coverage.html")
    page = (tmp_path / "coverage.html").read_text()
    section = page.split("<h3>Why utterances lack a feature</h3>")[1].split("<h3>")[0]
    header = re.findall(r"<th>([^<]*)</th>", section.split("</thead>")[0])
    rows = [re.findall(r"<td>([^<]*)</td>", row) for row in section.split("</thead>")[1].split("</tr>")[:-1]]
    assert header[:2] == ["feature", "reason"] and header[-1] == "all"
    assert [(r[0], r[1], r[-1]) for r in rows] == [("visual/faces", "no_face", "2"),
                                                   ("visual/faces", "corrupt_video", "1"),
                                                   ("audio/audio", "missing_audio", "1")]
    assert header[2:-1] == [s for s in ("train", "valid", "test") if s in set(df["split"])]
    assert all(cell.isdigit() for row in rows for cell in row[2:])  # every split of every file: a whole count
    by_split = dict(zip(header[2:-1], rows[0][2:-1]))
    first = df["split"].iloc[0]
    assert by_split[first] == str(sum(df["split"].iloc[:2] == first))
    assert "overlap, text_fixed: noted or repaired by the reader, nothing to do." in page
    # A defect the reader did not flag (it had not opened the clip) is named with its file on the page, not left
    # to an issues.tsv that does not hold it; one the reader flagged is not listed again.
    listed = page.split("<h3>Media defects the reader did not flag</h3>")[1].split("<h3>")[0]
    rows = [re.findall(r"<td>([^<]*)</td>", row) for row in listed.split("</thead>")[1].split("</tr>")[:-1]]
    assert rows == [[ids[2], df["split"].iloc[2], "visual/faces", df["video_path"].iloc[2],
                     "corrupt_video: x.mp4: InvalidDataError"]]
    assert "issues.tsv does not list them" in listed
    assert ("<b>missing_audio, missing_video, corrupt_video, corrupt_audio, no_audio_stream, bad_time</b>: the "
            "utterance lost a modality, its text or its times; the dataset's issues.tsv names each file and what to do.") in page


def test_a_row_cut_short_is_an_error_naming_its_line_and_missing_columns(tmp_path):
    """A row that ended before StartTime / EndTime was padded with empty cells and flagged bad_time "'' not
    parsable", which sent the user looking at times that the file never had on that line."""
    root = tmp_path / "MELD.Raw"
    root.mkdir()
    for split, rows in ROWS.items():
        write_csv(root / f"{split}_sent_emo.csv", rows)
    path = root / "train_sent_emo.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(',"', 2)[0]  # the third row, without its two time fields
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"train_sent_emo.csv, line 4: 9 field\(s\) but the header has 11: no "
                                            r"value for \['StartTime', 'EndTime'\]; the row was cut short"):
        build_manifest("m", {"format": "meld", "root": str(root), "modalities": ["text"]}, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.tsv").exists()
