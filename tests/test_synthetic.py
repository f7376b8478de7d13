"""The embedded synthetic raw corpus: real layouts, line formats, media, defects, faces found by real MTCNN."""
from __future__ import annotations

import csv
import io
import re
from collections import Counter, defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from ercpipe import synthetic
from ercpipe.io.media import SAMPLE_RATE, iter_frames, load_audio, probe
from ercpipe.labels import IEMOCAP_CLASSES, MELD_CLASSES
from ercpipe.synthetic import faces

TRANSCRIPT_LINE = re.compile(r"^(Ses0[1-5][FM]_\w+?_[FM](?:\d{3}|XX\d)) \[(\d{3}\.\d{4})-(\d{3}\.\d{4})\]: (\S.*)$")
EVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
EVAL_BLOCK_LINE = re.compile(r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(Ses0[1-5][FM]_\w+?_[FM]\d{3})\t([a-z]{3})\t"
                             r"\[(\d\.\d{4}), (\d\.\d{4}), (\d\.\d{4})\]$")
CATEGORY_LINE = re.compile(r"^C-(?:E\d|[FM]1):\t[A-Z][a-z]+;\t\([^()]*\)$")
DIMENSION_LINE = re.compile(r"^A-(?:E\d|[FM]1):\tval [1-5]; act [1-5]; dom  [1-5];\t\([^()]*\)$")
MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
               "Episode", "StartTime", "EndTime"]
TWO_DIGIT_TIME = re.compile(r"^\d\d:\d\d:\d\d,\d{3}$")
ONE_DIGIT_TIME = re.compile(r"^\d:\d\d:\d\d,\d{3}$")
SMALL_IEMOCAP = {"dialogues": {"train": 1, "valid": 1, "test": 1}, "utterances_per_dialogue": [3, 3],
                 "dropped_labels": ["xxx"]}
SMALL_MELD = {"dialogues": {"train": 1, "dev": 1, "test": 1}, "utterances_per_dialogue": [3, 3], "defects": None}


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def split_file(repo_root) -> Path:
    return repo_root / "workflow" / "resources" / "iemocap_standard_split.json"


@pytest.fixture(scope="session")
def iemocap_root(tmp_path_factory, split_file) -> Path:
    """The demo IEMOCAP corpus (default settings, seed 5)."""
    root = tmp_path_factory.mktemp("synthetic") / "iemocap"
    synthetic.generate_iemocap(root, {"seed": 5}, split_file)
    return root


@pytest.fixture(scope="session")
def meld_root(tmp_path_factory) -> Path:
    """The demo MELD corpus (default settings, seed 5)."""
    root = tmp_path_factory.mktemp("synthetic") / "meld"
    synthetic.generate_meld(root, {"seed": 5})
    return root


@pytest.fixture(scope="session")
def mtcnn():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu")


def detect(mtcnn, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [n, 4], probabilities [n]) of the faces MTCNN finds with p >= 0.8 (the pipeline accepts 0.7)."""
    boxes, probs = mtcnn.detect(Image.fromarray(image))
    if boxes is None:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    boxes, probs = np.asarray(boxes, dtype=np.float32), np.asarray(probs, dtype=np.float32)
    keep = probs >= 0.8
    return boxes[keep], probs[keep]


def read_iemocap(root: Path) -> dict[str, dict]:
    """{dialogue: {session, transcript: [(id, start, end, text)], evaluation: {id: (start, end, label)}}}."""
    out: dict[str, dict] = {}
    for path in sorted(root.glob("Session*/dialog/transcriptions/*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()
        transcript = []
        for line in lines:
            match = TRANSCRIPT_LINE.match(line)
            assert match, f"{path}: transcription line {line!r} does not match the release format"
            transcript.append((match.group(1), float(match.group(2)), float(match.group(3)), match.group(4)))
        evaluation = {}
        for block in parse_eval_blocks(path.parents[1] / "EmoEvaluation" / path.name):
            match = EVAL_BLOCK_LINE.match(block[0])
            evaluation[match.group(3)] = (float(match.group(1)), float(match.group(2)), match.group(4))
        out[path.stem] = {"session": int(path.parents[2].name.removeprefix("Session")),
                          "transcript": transcript, "evaluation": evaluation}
    return out


def parse_eval_blocks(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    header, blank, *rest = text.split("\n")
    assert header == EVAL_HEADER and blank == "", f"{path}: header lines {header!r}, {blank!r}"
    blocks = [b.split("\n") for b in "\n".join(rest).strip("\n").split("\n\n")]
    for block in blocks:
        assert EVAL_BLOCK_LINE.match(block[0]), f"{path}: block header {block[0]!r}"
        assert all(CATEGORY_LINE.match(x) or DIMENSION_LINE.match(x) for x in block[1:]), f"{path}: {block[1:]}"
        assert sum(bool(CATEGORY_LINE.match(x)) for x in block) >= 3 and sum(bool(DIMENSION_LINE.match(x))
                                                                             for x in block) >= 2
    return blocks


def read_meld_csv(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n"), f"{path}: lines must end in CRLF like the release"
    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))
    header = next(reader)
    assert header == MELD_HEADER
    return [dict(zip(header, row)) for row in reader]


def meld_seconds(value: str) -> float:
    h, m, rest = value.split(":")
    s, ms = rest.split(",")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


# -------------------------------------------------------------------------------------------------- IEMOCAP

def test_iemocap_layout_uses_standard_split_names(iemocap_root, split_file):
    import json

    split = json.loads(split_file.read_text())
    dialogues = read_iemocap(iemocap_root)
    by_split = {s: sorted(d for d in dialogues if d in split[s]) for s in ("train", "valid", "test")}
    assert {s: len(v) for s, v in by_split.items()} == synthetic.DEFAULT_SETTINGS["iemocap"]["dialogues"]
    assert sum(len(v) for v in by_split.values()) == len(dialogues)  # every name is a standard one
    for name, info in dialogues.items():
        session = info["session"]
        assert (session == 5) == (name in split["test"]) and name.startswith(f"Ses0{session}")
        base = iemocap_root / f"Session{session}"
        for path in (base / "dialog" / "wav" / f"{name}.wav", base / "dialog" / "avi" / "DivX" / f"{name}.avi",
                     base / "dialog" / "EmoEvaluation" / f"{name}.txt"):
            assert path.is_file(), path
        ids = [t[0] for t in info["transcript"]]
        wavs = sorted(p.stem for p in (base / "sentences" / "wav" / name).glob("*.wav"))
        assert wavs == sorted(ids)
        # One F and one M actor; each speaker's counter runs 000, 001, ... in time order.
        speakers = {uid[len(name) + 1] for uid in ids}
        assert speakers == {"F", "M"}
        for gender in "FM":
            numbers = [uid[-3:] for uid in ids if uid[len(name) + 1] == gender and "XX" not in uid]
            assert numbers == [f"{i:03d}" for i in range(len(numbers))]
        labelled = [uid for uid in ids if uid in info["evaluation"]]
        assert 3 <= sum(info["evaluation"][u][2] in IEMOCAP_CLASSES for u in labelled) <= 8


def test_iemocap_transcripts_and_evaluations_agree(iemocap_root, split_file):
    import json

    split = json.loads(split_file.read_text())
    dialogues = read_iemocap(iemocap_root)
    labels, unevaluated, train_labels = Counter(), [], Counter()
    for name, info in dialogues.items():
        starts = [t[1] for t in info["transcript"]]
        assert starts == sorted(starts)
        for uid, start, end, text in info["transcript"]:
            assert end > start
            if uid not in info["evaluation"]:
                unevaluated.append(uid)
                continue
            assert info["evaluation"][uid][:2] == (start, end)
            label = info["evaluation"][uid][2]
            labels[label] += 1
            if name in split["train"]:
                train_labels[label] += 1
        assert set(info["evaluation"]) <= {t[0] for t in info["transcript"]}
    # Outside the 6 classes: one utterance per dropped label, and one transcript turn with no evaluation.
    assert {k: v for k, v in labels.items() if k not in IEMOCAP_CLASSES} == {"xxx": 1, "oth": 1, "sur": 1}
    assert len(unevaluated) == 1 and re.fullmatch(r".*_[FM]XX0", unevaluated[0])
    assert set(IEMOCAP_CLASSES) <= set(train_labels)
    # Balanced: no class has more than twice the utterances of another.
    counts = [labels[c] for c in IEMOCAP_CLASSES]
    assert max(counts) <= 2 * min(counts)


def test_iemocap_audio_matches_times(iemocap_root):
    dialogues = read_iemocap(iemocap_root)
    frame = 1.0 / synthetic.DEFAULT_SETTINGS["iemocap"]["fps"]
    for name, info in list(dialogues.items())[:3]:
        base = iemocap_root / f"Session{info['session']}"
        conversation, rate = sf.read(base / "dialog" / "wav" / f"{name}.wav", dtype="int16")
        assert rate == SAMPLE_RATE and conversation.ndim == 1
        spoken = np.zeros(len(conversation), bool)
        for uid, start, end, _ in info["transcript"]:
            path = base / "sentences" / "wav" / name / f"{uid}.wav"
            meta = sf.info(str(path))
            assert (meta.samplerate, meta.channels, meta.subtype, meta.format) == (16000, 1, "PCM_16", "WAV")
            sentence, _ = sf.read(path, dtype="int16")
            assert abs(len(sentence) / SAMPLE_RATE - (end - start)) < frame
            i0 = int(round(start * SAMPLE_RATE))
            # The dialogue wav holds the utterance at exactly its [start, end] time.
            np.testing.assert_array_equal(conversation[i0:i0 + len(sentence)], sentence)
            assert np.abs(sentence).max() > 1000  # speech, not silence
            spoken[i0:i0 + len(sentence)] = True
        assert not conversation[~spoken].any()  # silence between turns
        info_avi = probe(base / "dialog" / "avi" / "DivX" / f"{name}.avi")
        assert info_avi.decodable and info_avi.has_video
        assert abs(info_avi.duration - len(conversation) / SAMPLE_RATE) <= 2 * frame
        with av.open(str(base / "dialog" / "avi" / "DivX" / f"{name}.avi")) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.width, stream.height) == ("mpeg4", 720, 480)
            assert container.format.name == "avi" and float(stream.average_rate) == 12


def test_iemocap_video_shows_speaker_emotion_and_neutral_listener(iemocap_root, mtcnn):
    """For every class: MTCNN finds both actors; only the speaker's half differs from the silent lead-in."""
    dialogues = read_iemocap(iemocap_root)
    width = synthetic.DEFAULT_SETTINGS["iemocap"]["frame_size"][0]
    seen: dict[str, tuple] = {}
    for name, info in dialogues.items():
        for uid, start, end, _ in info["transcript"]:
            label = info["evaluation"].get(uid, (0, 0, None))[2]
            if label in IEMOCAP_CLASSES and label not in seen:
                seen[label] = (name, info["session"], uid, (start + end) / 2)
    assert set(seen) == set(IEMOCAP_CLASSES)
    for label, (name, session, uid, mid) in seen.items():
        avi = iemocap_root / f"Session{session}" / "dialog" / "avi" / "DivX" / f"{name}.avi"
        _, silent = next(iter_frames(avi, 0.0, 0.5, fps=2))
        _, speaking = next(iter_frames(avi, mid, mid + 0.5, fps=2))
        boxes, _ = detect(mtcnn, speaking)
        centers = sorted((b[0] + b[2]) / 2 for b in boxes)
        assert len(boxes) == 2 and centers[0] < width / 2 < centers[1], f"{label} {uid}: faces at {centers}"
        speaker_left = (uid[len(name) + 1] == "F")  # default sides: F left, M right
        changed = np.abs(speaking.astype(int) - silent.astype(int)).max(axis=2) > 40
        speaker_half = changed[:, : width // 2] if speaker_left else changed[:, width // 2:]
        listener_half = changed[:, width // 2:] if speaker_left else changed[:, : width // 2]
        assert listener_half.mean() < 0.0005, f"{uid}: the listener's face must stay neutral"
        if label != "neu":
            assert speaker_half.mean() > 0.002, f"{uid} ({label}): the speaker's face must show the emotion"


# ----------------------------------------------------------------------------------------------------- MELD

def test_meld_csvs_look_like_the_release(meld_root):
    names = set(synthetic.MELD_CAST) | set(synthetic.MELD_GUESTS)
    for split, n_dialogues in synthetic.DEFAULT_SETTINGS["meld"]["dialogues"].items():
        rows = read_meld_csv(meld_root / f"{split}_sent_emo.csv")
        assert [int(r["Sr No."]) for r in rows] == list(range(1, len(rows) + 1))
        by_dialogue = defaultdict(list)
        for r in rows:
            by_dialogue[int(r["Dialogue_ID"])].append(r)
            assert r["Emotion"] in MELD_CLASSES and r["Speaker"] in names
            expected = {"neutral": {"neutral"}, "joy": {"positive"}, "surprise": {"positive", "negative"}}
            assert r["Sentiment"] in expected.get(r["Emotion"], {"negative"})
            assert "'" not in r["Utterance"]  # the release's curly apostrophes
            assert 1 <= int(r["Season"]) <= 10 and 1 <= int(r["Episode"]) <= 24
            for column in ("StartTime", "EndTime"):
                assert TWO_DIGIT_TIME.match(r[column]) or ONE_DIGIT_TIME.match(r[column]), r[column]
            assert meld_seconds(r["EndTime"]) > meld_seconds(r["StartTime"])
        assert sorted(by_dialogue) == list(range(n_dialogues))
        for dialogue in by_dialogue.values():
            assert [int(r["Utterance_ID"]) for r in dialogue] == list(range(len(dialogue)))
            assert 3 <= len(dialogue) <= 8 and 2 <= len({r["Speaker"] for r in dialogue}) <= 4
        times = [r["StartTime"] for r in rows]
        assert any(TWO_DIGIT_TIME.match(t) for t in times) and any(ONE_DIGIT_TIME.match(t) for t in times)
        text = " ".join(r["Utterance"] for r in rows)
        assert "’" in text
        if split == "train":
            assert set(MELD_CLASSES) <= {r["Emotion"] for r in rows}
            assert "…" in text and '"' in (meld_root / "train_sent_emo.csv").read_text(encoding="utf-8")


def test_meld_clips_and_the_three_defects(meld_root):
    defects = synthetic.meld_defects({"seed": 5})
    assert defects == {"missing_clip": "train_splits/dia1_utt2.mp4",
                       "corrupt_clip": "dev_splits_complete/dia0_utt1.mp4",
                       "no_audio_stream": "output_repeated_splits_test/dia1_utt0.mp4"}
    missing, corrupt, no_audio = (probe(meld_root / defects[k]) for k in synthetic.MELD_DEFECTS)
    assert not missing.exists
    assert corrupt.exists and not corrupt.decodable and (meld_root / defects["corrupt_clip"]).stat().st_size > 0
    assert no_audio.decodable and no_audio.has_video and not no_audio.has_audio
    fps = synthetic.DEFAULT_SETTINGS["meld"]["fps"]
    checked = 0
    for split, folder in synthetic.MELD_CLIP_DIRS.items():
        rows = read_meld_csv(meld_root / f"{split}_sent_emo.csv")
        present = {p.name for p in (meld_root / folder).iterdir()}
        expected = {f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4" for r in rows}
        missing_here = {Path(defects["missing_clip"]).name} if defects["missing_clip"].startswith(folder) else set()
        assert present == expected - missing_here
        for r in rows[:4]:
            relative = f"{folder}/dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4"
            if relative in defects.values():
                continue
            path = meld_root / relative
            info = probe(path)
            assert info.decodable and info.has_audio and info.has_video, info
            with av.open(str(path)) as container:
                video, audio = container.streams.video[0], container.streams.audio[0]
                assert (video.codec_context.name, video.width, video.height) == ("h264", 640, 360)
                assert audio.codec_context.name == "aac"
            stated = meld_seconds(r["EndTime"]) - meld_seconds(r["StartTime"])
            signal = load_audio(path)
            assert abs(len(signal) / SAMPLE_RATE - stated) <= 1 / fps, (relative, len(signal) / SAMPLE_RATE, stated)
            assert np.abs(signal).max() > 0.05
            checked += 1
    assert checked >= 8


def test_meld_speaker_face_is_largest_and_central(meld_root, mtcnn):
    defects = set(synthetic.meld_defects({"seed": 5}).values())
    clips: dict[str, Path] = {}
    for split, folder in synthetic.MELD_CLIP_DIRS.items():
        for r in read_meld_csv(meld_root / f"{split}_sent_emo.csv"):
            relative = f"{folder}/dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4"
            if relative not in defects:
                clips.setdefault(r["Emotion"], meld_root / relative)
    assert set(clips) == set(MELD_CLASSES)
    for emotion, path in clips.items():
        _, image = next(iter_frames(path, 0.2, None, fps=2))
        boxes, _ = detect(mtcnn, image)
        assert len(boxes) >= 1, f"{emotion}: no face found in {path}"
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        largest = boxes[int(np.argmax(areas))]
        assert abs((largest[0] + largest[2]) / 2 - 320) < 0.1 * 640, f"{emotion}: largest face not central"
        assert largest[3] - largest[1] > 100


# ------------------------------------------------------------------------------------------- determinism

def _files(root: Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in suffixes}


def test_same_seed_same_corpus_other_seed_differs(tmp_path, split_file):
    for run, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthetic.generate_iemocap(tmp_path / run / "iemocap", {**SMALL_IEMOCAP, "seed": seed}, split_file)
        synthetic.generate_meld(tmp_path / run / "meld", {**SMALL_MELD, "seed": seed})
    for fmt in ("iemocap", "meld"):
        a, b, c = (_files(tmp_path / run / fmt, (".txt", ".csv")) for run in ("a", "b", "c"))
        assert a and a == b  # byte-identical transcripts, evaluations, CSVs
        assert a != c
    wavs = sorted((tmp_path / "a" / "iemocap").rglob("*.wav"))
    assert len(wavs) > 5
    for path in wavs:
        twin = tmp_path / "b" / "iemocap" / path.relative_to(tmp_path / "a" / "iemocap")
        np.testing.assert_array_equal(sf.read(path, dtype="int16")[0], sf.read(twin, dtype="int16")[0])
    clips = [p for p in sorted((tmp_path / "a" / "meld").rglob("*.mp4")) if probe(p).has_audio][:3]
    assert len(clips) == 3
    for path in clips:
        twin = tmp_path / "b" / "meld" / path.relative_to(tmp_path / "a" / "meld")
        np.testing.assert_array_equal(load_audio(path), load_audio(twin))
    # The encoders are deterministic too: every file of the tree is byte-identical.
    for fmt in ("iemocap", "meld"):
        media = (".wav", ".avi", ".mp4")
        assert _files(tmp_path / "a" / fmt, media) == _files(tmp_path / "b" / fmt, media)


def test_generation_replaces_an_existing_tree_atomically(tmp_path, split_file):
    root = tmp_path / "meld"
    root.mkdir()
    (root / "stale.txt").write_text("left from an older run")
    settings = {**SMALL_MELD, "dialogues": {"train": 1, "dev": 0, "test": 0},
                "defects": None}
    synthetic.generate_meld(root, settings)
    assert not (root / "stale.txt").exists() and (root / "train_sent_emo.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["meld"]  # no temporary folder left behind
    assert read_meld_csv(root / "dev_sent_emo.csv") == []


# ----------------------------------------------------------------------------------------------- settings

@pytest.mark.parametrize("fmt, settings, named", [
    ("iemocap", {"dialogs": {"train": 1}}, "dialogs"),
    ("iemocap", {"dialogues": {"dev": 1}}, "dialogues.dev"),
    ("meld", {"defects": {"missing": "train/dia0_utt0"}}, "defects.missing"),
    ("meld", {"colour": "red"}, "colour"),
])
def test_unknown_settings_key_raises_naming_it(fmt, settings, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        synthetic.resolve_settings(fmt, settings)


@pytest.mark.parametrize("settings, message", [
    ({"defects": {"missing_clip": "train/dia9_utt0"}}, "only 4 dialogue"),
    ({"defects": {"corrupt_clip": "dev/dia0_utt5"}}, "may not exist"),
    ({"defects": {"corrupt_clip": "train/dia1_utt2"}}, "already used"),
    ({"utterances_per_dialogue": [5, 3]}, "min <= max"),
    ({"hint_probability": 1.5}, r"\[0, 1\]"),
    ({"speakers_per_dialogue": [1, 3]}, "at least 2 speakers"),
])
def test_invalid_meld_settings_raise(settings, message):
    with pytest.raises(ValueError, match=message):
        synthetic.resolve_settings("meld", settings)


def test_iemocap_settings_checks(tmp_path, split_file):
    with pytest.raises(ValueError, match="sides"):
        synthetic.resolve_settings("iemocap", {"sides": {"F": "left", "M": "left"}})
    with pytest.raises(ValueError, match="dropped_labels"):
        synthetic.resolve_settings("iemocap", {"dropped_labels": ["hap"]})
    with pytest.raises(ValueError, match="lists only 12 valid dialogues"):
        synthetic.generate_iemocap(tmp_path / "x", {"dialogues": {"valid": 13}}, split_file)
    assert not (tmp_path / "x").exists()


def test_presets_and_defects_off():
    demo, large = synthetic.preset("iemocap"), synthetic.preset("iemocap", "large")
    assert demo == synthetic.resolve_settings("iemocap", None)
    assert 15 <= sum(large["dialogues"].values()) / sum(demo["dialogues"].values()) <= 25
    meld_demo, meld_large = synthetic.preset("meld"), synthetic.preset("meld", "large")
    assert sum(meld_large["dialogues"].values()) == 20 * sum(meld_demo["dialogues"].values())
    assert synthetic.meld_defects({"defects": {"corrupt_clip": None}}) == {
        "missing_clip": "train_splits/dia1_utt2.mp4", "no_audio_stream": "output_repeated_splits_test/dia1_utt0.mp4"}
    assert synthetic.meld_defects({"defects": None}) == {}
    assert set(synthetic.SETTINGS_DOC["meld"]) == set(synthetic.DEFAULT_SETTINGS["meld"])
    assert set(synthetic.SETTINGS_DOC["iemocap"]) == set(synthetic.DEFAULT_SETTINGS["iemocap"])


def test_text_hints_follow_hint_probability():
    rng = np.random.default_rng(0)

    def hinted(probability: float, n: int) -> float:
        texts = [synthetic.make_text(rng, "ang", probability) for _ in range(n)]
        return sum(any(h in text for h in synthetic.HINTS["anger"]) for text in texts) / n

    assert 0.74 < hinted(0.8, 400) < 0.86
    assert hinted(0.0, 50) == 0.0 and hinted(1.0, 50) == 1.0


def test_speech_prosody_depends_on_emotion():
    """Excited speech is higher and louder than sad speech of the same words and voice."""
    voice = synthetic.Voice("en-us", 45.0, 1.0)
    text = "We need to talk about the apartment."
    sad = synthetic.speak(text, voice, "sad", np.random.default_rng(0))
    excited = synthetic.speak(text, voice, "exc", np.random.default_rng(0))
    assert sad.dtype == np.float32 and len(sad) > SAMPLE_RATE  # > 1 s at 16 kHz
    assert np.sqrt(np.mean(excited ** 2)) > 1.5 * np.sqrt(np.mean(sad ** 2))
    assert len(excited) < len(sad)  # faster


# ------------------------------------------------------------------------------------------------ anchors

ANCHOR_CLASSES = ["hap", "sadness", "neutral", "anger", "excited", "frustration", "surprise", "fear", "disgust"]


def test_anchor_image_set_layout_determinism_and_faces(tmp_path, mtcnn):
    out = tmp_path / "images"
    faces.make_anchor_image_set(out, ANCHOR_CLASSES, per_class=3, seed=1)
    assert sorted(p.name for p in out.iterdir()) == sorted(ANCHOR_CLASSES)
    found: dict[str, int] = {}
    for name in ANCHOR_CLASSES:
        files = sorted((out / name).iterdir())
        assert [p.name for p in files] == ["000.png", "001.png", "002.png"]
        images = [np.asarray(Image.open(p).convert("RGB")) for p in files]
        assert len({im.tobytes() for im in images}) == 3  # three different pictures
        found[name] = sum(len(detect(mtcnn, im)[0]) >= 1 for im in images)
    assert all(n >= 2 for n in found.values()), found
    assert sum(found.values()) >= 0.9 * 3 * len(ANCHOR_CLASSES), found
    again = tmp_path / "again"  # same seed, other class list: the same pictures per class
    faces.make_anchor_image_set(again, ["fear", "hap"], per_class=3, seed=1)
    assert (again / "hap" / "001.png").read_bytes() == (out / "hap" / "001.png").read_bytes()
    assert (again / "fear" / "002.png").read_bytes() == (out / "fear" / "002.png").read_bytes()
    other = tmp_path / "other"
    faces.make_anchor_image_set(other, ANCHOR_CLASSES[:1], per_class=1, seed=2)
    assert (other / "hap" / "000.png").read_bytes() != (out / "hap" / "000.png").read_bytes()
    with pytest.raises(ValueError, match="more than once"):
        faces.make_anchor_image_set(tmp_path / "dup", ["sad", "sad"], per_class=1, seed=0)


def test_anchor_faces_differ_from_corpus_faces():
    """Anchor people come from another palette: no skin tone is shared with the corpus actors."""
    corpus = {faces.random_style(np.random.default_rng(i), "corpus").skin for i in range(50)}
    anchor = {faces.random_style(np.random.default_rng(i), "anchor", tilt_range=12).skin for i in range(50)}
    assert corpus.isdisjoint(anchor) and len(anchor) >= 4
    tilts = [faces.random_style(np.random.default_rng(i), "anchor", tilt_range=12).tilt for i in range(20)]
    assert max(abs(t) for t in tilts) > 5


def test_unknown_emotion_cannot_be_drawn(tmp_path):
    with pytest.raises(ValueError, match="boredom"):
        faces.make_anchor_image_set(tmp_path / "x", ["happy", "boredom"], per_class=1, seed=0)
    assert not (tmp_path / "x").exists()
    canvas = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="drawable"):
        faces.draw_face(canvas, (50, 50), 60, "xxx", faces.FaceStyle())
