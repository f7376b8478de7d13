"""End to end on a tiny generated corpus of each format: raw tree -> manifest -> utterance audio."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from ercpipe import synthetic
from ercpipe.datasets.build import build_manifest
from ercpipe.datasets.media_prep import REPORT_NAME, write_utterance_audio
from ercpipe.io import manifest as manifest_io
from ercpipe.labels import IEMOCAP_CLASSES, MELD_CLASSES

SPLIT_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "iemocap" / "standard_split.json"
SMALL_VIDEO = {"fps": 4, "frame_size": [256, 160], "face_height": 80}
IEMOCAP_SETTINGS = {"seed": 1, "dialogues": {"train": 2, "valid": 1, "test": 1}, "utterances_per_dialogue": [2, 4],
                    "unevaluated_turns": 2, **SMALL_VIDEO}
MELD_SETTINGS = {"seed": 2, "dialogues": {"train": 2, "dev": 1, "test": 2}, "utterances_per_dialogue": [3, 4],
                 **SMALL_VIDEO}


def outputs(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    issues = pd.read_csv(out / "issues.tsv", sep="\t", dtype=str, keep_default_na=False)
    return manifest_io.read(out / "manifest.tsv"), issues, json.loads((out / "summary.json").read_text())


def audio_report(manifest: Path, out: Path, n_shards: int = 2) -> pd.DataFrame:
    reports = []
    for shard in range(n_shards):
        write_utterance_audio(manifest, shard, n_shards, out / f"shard{shard}", threads=2)
        reports.append(pd.read_csv(out / f"shard{shard}" / REPORT_NAME, sep="\t", keep_default_na=False))
    return pd.concat(reports, ignore_index=True)


@pytest.fixture(scope="session")
def synthetic_iemocap(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic") / "iemocap"
    synthetic.generate_iemocap(root, IEMOCAP_SETTINGS, SPLIT_FILE)
    out = root.parent / "iemocap_features"
    build_manifest("iemocap_synth", {"format": "iemocap", "root": str(root), "split_file": str(SPLIT_FILE)}, out)
    return root, out


@pytest.fixture(scope="session")
def synthetic_meld(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic") / "meld"
    synthetic.generate_meld(root, MELD_SETTINGS)
    out = root.parent / "meld_features"
    build_manifest("meld_synth", {"format": "meld", "root": str(root)}, out)
    return root, out


def test_synthetic_iemocap_manifest(synthetic_iemocap):
    root, out = synthetic_iemocap
    df, issues, summary = outputs(out)
    split = json.loads(SPLIT_FILE.read_text())
    assert summary["dialogues_per_split"] == {"train": 2, "valid": 1, "test": 1}
    for dialogue, group in df.groupby("dialogue_id"):
        assert dialogue in split[group["split"].iloc[0]]  # the standard split applies
        assert group["video_start"].is_monotonic_increasing
        assert 2 <= len(group) <= 4
    assert set(df["label"]) <= set(IEMOCAP_CLASSES) and summary["classes"] == list(IEMOCAP_CLASSES)
    assert (df["flags"] == "").all() and (df["text"] != "").all()
    assert set(df["speaker_slot"]) == {0, 1}
    assert all(re.fullmatch(r"Ses0\d_[FM]", s) for s in df["speaker"])
    # The generator adds one utterance per dropped label (xxx, oth, sur) and transcript-only turns.
    rejected = issues[issues["action"] == "rejected"]
    assert sorted(rejected.loc[rejected["reason"] == "label_not_in_classes", "detail"].str[6:9]) == ["oth", "sur", "xxx"]
    assert rejected.loc[rejected["reason"] == "not_evaluated", "utterance_id"].str.contains("XX").sum() == 2
    assert summary["rejected_counts"] == {"label_not_in_classes": 3, "not_evaluated": 2}
    # Differences from the real release are reported, not fatal.
    checks = {c["check"]: c for c in summary["checks"]}
    assert checks["dialogues"]["found"] == 4 and checks["dialogues"]["ok"] is False
    assert checks["split-file dialogues present in the raw tree"]["found"] == 4
    assert all(Path(p).is_file() for p in df["audio_path"]) and all(Path(p).is_file() for p in df["video_path"])


def test_synthetic_iemocap_utterance_audio(synthetic_iemocap, tmp_path):
    _, out = synthetic_iemocap
    df = manifest_io.read(out / "manifest.tsv")
    report = audio_report(out / "manifest.tsv", tmp_path)
    assert sorted(report["utterance_id"]) == sorted(df["utterance_id"])
    assert (report["status"] == "ok").all()
    # The sentence wav is the utterance: its length matches the EmoEvaluation times.
    for row in df.itertuples():
        wav = next(tmp_path.glob(f"shard*/{row.utterance_id}.wav"))
        info = sf.info(str(wav))
        assert info.samplerate == 16000 and info.channels == 1
        assert info.duration == pytest.approx(row.video_end - row.video_start, abs=0.01)


def test_synthetic_meld_manifest_flags_the_three_defects(synthetic_meld):
    root, out = synthetic_meld
    df, issues, summary = outputs(out)
    assert summary["dialogues_per_split"] == {"train": 2, "valid": 1, "test": 2}
    assert set(df["label"]) <= set(MELD_CLASSES)
    assert len(df) == sum(len(pd.read_csv(root / f"{s}_sent_emo.csv")) for s in ("train", "dev", "test"))
    defects = synthetic.meld_defects(MELD_SETTINGS)
    flags = df.set_index("video_path")["flags"]
    assert flags[str(root / defects["missing_clip"])] == "missing_video;missing_audio"
    assert flags[str(root / defects["corrupt_clip"])] == "corrupt_video;corrupt_audio"  # the clip holds both
    assert flags[str(root / defects["no_audio_stream"])] == "no_audio_stream"
    defect_paths = {str(root / p) for p in defects.values()}
    assert (df.loc[~df["video_path"].isin(defect_paths), "flags"].isin(["", "overlap"])).all()
    assert summary["flag_counts"] == {"missing_audio": 1, "missing_video": 1, "corrupt_video": 1, "corrupt_audio": 1,
                                      "no_audio_stream": 1}
    assert set(issues["action"]) == {"flagged"} and len(issues) == 5
    # Both MELD time formats parse (no bad_time), speakers get slots by first appearance.
    for _, group in df.groupby("dialogue_id", sort=False):
        slots = group["speaker_slot"].tolist()
        assert slots[0] == 0 and max(slots) == group["speaker"].nunique() - 1


def test_an_unreadable_clip_stays_flagged_in_a_text_and_audio_dataset(synthetic_meld, tmp_path):
    """An undecodable clip was flagged corrupt_video only, so a dataset declaring text and audio dropped the flag
    and the clip's zero audio features had no reason in issues.tsv."""
    root, _ = synthetic_meld
    build_manifest("meld_synth", {"format": "meld", "root": str(root), "modalities": ["text", "audio"]}, tmp_path)
    df, issues, summary = outputs(tmp_path)
    corrupt = str(root / synthetic.meld_defects(MELD_SETTINGS)["corrupt_clip"])
    assert df.set_index("audio_path")["flags"][corrupt] == "corrupt_audio"
    assert summary["flag_counts"] == {"missing_audio": 1, "corrupt_audio": 1, "no_audio_stream": 1}
    row = issues.loc[issues["reason"] == "corrupt_audio"].iloc[0]
    assert Path(corrupt).name in row["detail"]


def test_a_zero_byte_clip_is_called_empty(synthetic_meld, tmp_path):
    root, _ = synthetic_meld
    copy = tmp_path / "meld"
    shutil.copytree(root, copy)
    clip = copy / synthetic.meld_defects(MELD_SETTINGS)["corrupt_clip"]
    clip.write_bytes(b"")
    build_manifest("meld_synth", {"format": "meld", "root": str(copy)}, tmp_path / "out")
    _, issues, _ = outputs(tmp_path / "out")
    details = issues.loc[issues["reason"] == "corrupt_video", "detail"].tolist()
    assert details == [f"{clip}: empty file (0 bytes); replace it with a complete copy from the release's archive"]


def test_synthetic_meld_utterance_audio(synthetic_meld, tmp_path):
    root, out = synthetic_meld
    report = audio_report(out / "manifest.tsv", tmp_path).set_index("utterance_id")
    df = manifest_io.read(out / "manifest.tsv").set_index("utterance_id")
    assert sorted(report.index) == sorted(df.index)
    defects = {d: Path(p).stem for d, p in synthetic.meld_defects(MELD_SETTINGS).items()}
    by_clip = {f"{Path(path).parent.name}/{Path(path).stem}": uid for uid, path in df["audio_path"].items()}
    status = report["status"].to_dict()
    assert status[by_clip[f"train_splits/{defects['missing_clip']}"]] == "missing_audio"
    assert status[by_clip[f"dev_splits_complete/{defects['corrupt_clip']}"]] == "corrupt_audio"
    assert status[by_clip[f"output_repeated_splits_test/{defects['no_audio_stream']}"]] == "no_audio_stream"
    assert sum(s == "ok" for s in status.values()) == len(df) - 3
    wavs = {p.stem for p in tmp_path.glob("shard*/*.wav")}
    assert wavs == {uid for uid, s in status.items() if s == "ok"}
