"""The writers of the synthetic corpus in the dataset owners' layouts: `generate_iemocap`, `generate_meld`.

Settings are checked by ercpipe.synthetic.settings; text, speech, faces and video come from the
sibling modules. Each writer builds its tree in a temporary folder, then swaps it in.

IEMOCAP layout (`generate_iemocap`), as IEMOCAP_full_release ships it::

    Session{N}/dialog/wav/{dialog}.wav                   the conversation, 16 kHz mono PCM16
    Session{N}/dialog/avi/DivX/{dialog}.avi              MPEG-4 part 2 (DX50) .avi, 720x480, both actors
    Session{N}/dialog/transcriptions/{dialog}.txt        `Ses01F_impro01_F000 [006.2901-008.2357]: text`
    Session{N}/dialog/EmoEvaluation/{dialog}.txt         header, blank-line separated blocks
    Session{N}/sentences/wav/{dialog}/{utt}.wav          each utterance, 16 kHz mono PCM16

Dialogue names come from the standard split file (sessions 1-4: train + valid, session 5: test), so the
standard split applies. Each session has one female and one male actor; utterance ids carry the speaker's
gender and a per-speaker counter (F000, M000, F001 ...). Each sentence wav is exactly the
[start, end] slice of the dialogue wav. In the video each actor sits on the half given by `sides`; during an
utterance the speaker's face shows its emotion, the listener's is neutral.
As in the real data, some utterances are labelled with a class outside the 6 (`dropped_labels`, one
utterance each, added to the first dialogues in split order) and `unevaluated_turns` transcript lines
(`..._MXX0` style) have no EmoEvaluation block; the reader must drop and record them.

MELD layout (`generate_meld`), as MELD.Raw ships it::

    {train,dev,test}_sent_emo.csv        real header and columns, CRLF lines, curly quotes and ellipses,
                                         times in both formats ("00:16:16,059" and "0:13:42,477")
    train_splits/dia{D}_utt{U}.mp4       H.264 640x360 + AAC; the speaker's face large and central,
    dev_splits_complete/...              sometimes a smaller neutral listener off-center
    output_repeated_splits_test/...

The MELD defects are described in ercpipe.synthetic.settings.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from tqdm.auto import tqdm

from ercpipe.io.atomic import atomic_dir
from ercpipe.io.media import SAMPLE_RATE, write_wav
from ercpipe.labels import IEMOCAP_CLASSES, MELD_CLASSES
from ercpipe.synthetic.faces import FaceStyle, draw_body, draw_face, room_background
from ercpipe.synthetic.settings import IEMOCAP_SPLITS, MELD_CLIP_DIRS, MELD_CSV_HEADER, MELD_SPLITS, resolve_settings
from ercpipe.synthetic.speech import Voice, espeak_binary, fit, random_voice, resample, speak
from ercpipe.synthetic.video import actor_style, video_frame, wall_colour, write_video
from ercpipe.synthetic.words import make_text, meld_style_text

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ labels

def _label_sequence(rng: np.random.Generator, classes: tuple[str, ...], n: int) -> list[str]:
    """n labels cycling through shuffled copies of `classes`: balanced, every class once per len(classes)."""
    out: list[str] = []
    while len(out) < n:
        out.extend(classes[i] for i in rng.permutation(len(classes)))
    return out[:n]


def _warn_missing_train_classes(corpus: str, classes: tuple[str, ...], train_labels: set) -> None:
    missing = [c for c in classes if c not in train_labels]
    if missing:
        logger.warning("synthetic %s: class(es) %s do not occur in train (too few train utterances); raise "
                       "dialogues.train or utterances_per_dialogue", corpus, missing)


def _iemocap_drawn_emotion(label: str, rng: np.random.Generator) -> str:
    """The emotion the face and voice show for a raw IEMOCAP label (xxx: annotators disagreed -> any)."""
    if label == "xxx":
        return IEMOCAP_CLASSES[int(rng.integers(len(IEMOCAP_CLASSES)))]
    if label == "oth":
        return "neu"
    return label


# ------------------------------------------------------------------------------------------------ IEMOCAP

_IEMOCAP_NAMES = {"neu": "Neutral", "hap": "Happiness", "sad": "Sadness", "ang": "Anger", "exc": "Excited",
                  "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other"}
# Labels annotators confuse, for the minority votes.
_IEMOCAP_NEIGHBOURS = {"neu": "fru", "hap": "exc", "exc": "hap", "sad": "neu", "ang": "fru", "fru": "ang",
                       "sur": "exc", "fea": "sad", "dis": "ang", "oth": "neu"}
# (valence, activation, dominance) centers on IEMOCAP's 1-5 scales.
_IEMOCAP_VAD = {"neu": (3, 2, 3), "hap": (4, 3, 3), "exc": (4, 4, 3), "sad": (2, 2, 2), "ang": (1, 4, 4),
                "fru": (2, 3, 3), "sur": (3, 4, 3), "fea": (2, 4, 2), "dis": (2, 3, 3), "oth": (3, 3, 3)}
_ANNOTATOR_NOTES = ("", "", "", "curious", "mildly annoyed", "sarcastic", "tired", "polite")


@dataclass
class _Turn:
    utterance_id: str
    gender: str
    label: str | None  # None: a transcript line without evaluation
    emotion: str  # what the face and voice show (an IEMOCAP code)
    text: str
    start: float = 0.0
    end: float = 0.0


def _pick_dialogues(split_file: Path, counts: dict[str, int], rng: np.random.Generator) -> dict[str, list[str]]:
    try:
        data = json.loads(Path(split_file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"IEMOCAP split file {split_file} cannot be read ({err}); it must be JSON with 'train', "
                         "'valid', 'test' dialogue lists (workflow/resources/iemocap_standard_split.json)") from err
    picked: dict[str, list[str]] = {}
    for split in IEMOCAP_SPLITS:
        names = data.get(split)
        if not isinstance(names, list) or not names:
            raise ValueError(f"IEMOCAP split file {split_file} has no '{split}' dialogue list")
        if counts[split] > len(names):
            raise ValueError(f"synthetic.iemocap.dialogues.{split} = {counts[split]} but the split file "
                             f"{split_file} lists only {len(names)} {split} dialogues; lower the count")
        bad = [n for n in names if not re.match(r"^Ses0[1-5][FM]_", n)]
        if bad:
            raise ValueError(f"IEMOCAP split file {split_file}: {split} dialogue names {bad[:3]} do not look like "
                             "'Ses01F_impro01'")
        chosen = rng.choice(len(names), size=counts[split], replace=False)
        picked[split] = sorted(names[i] for i in chosen)
    return picked


def _plan_iemocap(s: dict, picked: dict[str, list[str]]) -> list[tuple[str, str, list[_Turn]]]:
    """(split, dialogue, turns) for every dialogue: speakers, labels, texts; no timing or audio yet."""
    lo, hi = s["utterances_per_dialogue"]
    extras = [("label", label) for label in s["dropped_labels"]] + [("unevaluated", None)] * s["unevaluated_turns"]
    dialogues = [(split, name) for split in IEMOCAP_SPLITS for name in picked[split]]
    extras_by_dialogue: dict[int, list] = {}
    for k, extra in enumerate(extras):
        if dialogues:
            extras_by_dialogue.setdefault(k % len(dialogues), []).append(extra)
    plans = []
    for split in IEMOCAP_SPLITS:
        split_rng = np.random.default_rng([s["seed"], 1, IEMOCAP_SPLITS.index(split)])
        sizes = [int(split_rng.integers(lo, hi + 1)) for _ in picked[split]]
        labels = _label_sequence(split_rng, IEMOCAP_CLASSES, sum(sizes))
        for name, size in zip(picked[split], sizes):
            d_index = dialogues.index((split, name))
            rng = np.random.default_rng([s["seed"], 2, d_index])
            own = labels[:size]
            labels = labels[size:]
            slots: list[tuple[str, str | None]] = [("label", label) for label in own]
            for extra in extras_by_dialogue.get(d_index, []):
                slots.insert(int(rng.integers(1, len(slots) + 1)), extra)
            plans.append((split, name, _iemocap_turns(name, slots, rng, s["hint_probability"])))
    return plans


def _iemocap_turns(dialogue: str, slots: list[tuple[str, str | None]], rng: np.random.Generator,
                   hint_probability: float) -> list[_Turn]:
    turns: list[_Turn] = []
    counters = {"F": 0, "M": 0}
    unevaluated = {"F": 0, "M": 0}
    gender = "F" if rng.random() < 0.5 else "M"
    for kind, label in slots:
        # Mostly alternating turns, now and then the same speaker goes on.
        if turns and rng.random() < 0.8:
            gender = "M" if gender == "F" else "F"
        if kind == "unevaluated":
            uid = f"{dialogue}_{gender}XX{unevaluated[gender]}"
            unevaluated[gender] += 1
            emotion = "neu"
            turns.append(_Turn(uid, gender, None, emotion, make_text(rng, None, 0.0)))
            continue
        uid = f"{dialogue}_{gender}{counters[gender]:03d}"
        counters[gender] += 1
        emotion = _iemocap_drawn_emotion(label, rng)
        text_emotion = None if label == "oth" else emotion
        turns.append(_Turn(uid, gender, label, emotion, make_text(rng, text_emotion, hint_probability)))
    return turns


def _emo_evaluation_block(turn: _Turn, rng: np.random.Generator) -> list[str]:
    """The header line and annotator lines of one EmoEvaluation block (as the release writes them)."""
    label = turn.label
    assert label is not None
    evaluators = ["C-E1", "C-E2", "C-E3"]
    if label == "xxx":  # no majority: three different categories
        votes = [IEMOCAP_CLASSES[i] for i in rng.choice(len(IEMOCAP_CLASSES), size=3, replace=False)]
    else:
        minority = _IEMOCAP_NEIGHBOURS[label] if rng.random() < 0.4 else label
        votes = [label, label, minority]
        rng.shuffle(votes)
    self_vote = votes[int(rng.integers(3))]
    lines = []
    vads = []
    for who, vote in [*zip(evaluators, votes), (f"C-{turn.gender}1", self_vote)]:
        name = _IEMOCAP_NAMES[vote]
        note = _ANNOTATOR_NOTES[int(rng.integers(len(_ANNOTATOR_NOTES)))]
        if vote == "oth":
            note = note or "amused"
        lines.append(f"{who}:\t{name};\t({note})")
    center = _IEMOCAP_VAD["neu" if label == "xxx" else label]
    for who in ("A-E1", "A-E2", f"A-{turn.gender}1"):
        v, a, d = (int(np.clip(c + rng.integers(-1, 2), 1, 5)) for c in center)
        vads.append((v, a, d))
        note = _ANNOTATOR_NOTES[int(rng.integers(len(_ANNOTATOR_NOTES)))]
        lines.append(f"{who}:\tval {v}; act {a}; dom  {d};\t({note})")
    mean = np.mean(np.array(vads[:2], dtype=np.float64), axis=0)  # the summary averages the evaluators
    header = (f"[{turn.start:.4f} - {turn.end:.4f}]\t{turn.utterance_id}\t{label}\t"
              f"[{mean[0]:.4f}, {mean[1]:.4f}, {mean[2]:.4f}]")
    return [header, *lines]


def generate_iemocap(root: Path, settings: dict | None, split_file: Path) -> None:
    """Write an IEMOCAP_full_release-like tree at `root` (built in a temporary folder, then swapped in)."""
    s = resolve_settings("iemocap", settings)
    espeak_binary()
    picked = _pick_dialogues(split_file, s["dialogues"], np.random.default_rng([s["seed"], 0]))
    plans = _plan_iemocap(s, picked)
    _warn_missing_train_classes("IEMOCAP", IEMOCAP_CLASSES,
                                {t.label for split, _, turns in plans if split == "train" for t in turns})
    logger.info("synthetic IEMOCAP: %d dialogues (%s), seed %d -> %s", len(plans),
                ", ".join(f"{k} {len(v)}" for k, v in picked.items()), s["seed"], root)
    counts: dict[str, int] = {}
    with atomic_dir(root) as tmp:
        for d_index, (split, name, turns) in enumerate(tqdm(plans, desc="synthetic IEMOCAP", unit="dialogue")):
            _render_iemocap_dialogue(tmp, name, turns, s, d_index)
            for turn in turns:
                key = turn.label or "(unevaluated)"
                counts[key] = counts.get(key, 0) + 1
            logger.info("%s (%s): %d turns, %.1f s", name, split, len(turns), turns[-1].end if turns else 0.0)
    logger.info("synthetic IEMOCAP written to %s; turns per label: %s", root, dict(sorted(counts.items())))


def _render_iemocap_dialogue(tree: Path, name: str, turns: list[_Turn], s: dict, d_index: int) -> None:
    session = int(name[3:5])
    rng = np.random.default_rng([s["seed"], 3, d_index])
    actor_rng = np.random.default_rng([s["seed"], 4, session])
    actors = {g: (random_voice(actor_rng, g), actor_style(actor_rng, g)) for g in ("F", "M")}
    # Speech first: the utterance lengths set the times.
    cursor = float(rng.uniform(*s["lead_in_seconds"]))
    speech: list[np.ndarray] = []
    for turn in turns:
        signal = speak(turn.text, actors[turn.gender][0], turn.emotion, rng)
        turn.start = round(cursor, 4)
        turn.end = round(turn.start + len(signal) / SAMPLE_RATE, 4)
        speech.append(signal)
        cursor = turn.end + float(rng.uniform(*s["gap_seconds"]))
    total = (turns[-1].end if turns else 0.0) + 1.0
    conversation = np.zeros(int(round(total * SAMPLE_RATE)), dtype=np.float32)
    for turn, signal in zip(turns, speech):
        i0, i1 = int(round(turn.start * SAMPLE_RATE)), int(round(turn.end * SAMPLE_RATE))
        conversation[i0:i1] = fit(signal, i1 - i0)

    dialog = tree / f"Session{session}" / "dialog"
    sentences = tree / f"Session{session}" / "sentences" / "wav" / name
    for sub in ("wav", "avi/DivX", "transcriptions", "EmoEvaluation"):
        (dialog / sub).mkdir(parents=True, exist_ok=True)
    sentences.mkdir(parents=True, exist_ok=True)
    write_wav(dialog / "wav" / f"{name}.wav", conversation)
    for turn in turns:
        i0, i1 = int(round(turn.start * SAMPLE_RATE)), int(round(turn.end * SAMPLE_RATE))
        write_wav(sentences / f"{turn.utterance_id}.wav", conversation[i0:i1])
    transcript = [f"{t.utterance_id} [{t.start:08.4f}-{t.end:08.4f}]: {t.text}" for t in turns]
    (dialog / "transcriptions" / f"{name}.txt").write_text("\n".join(transcript) + "\n", encoding="utf-8")
    evaluation = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for turn in turns:
        if turn.label is not None:
            evaluation.extend([*_emo_evaluation_block(turn, rng), ""])
    (dialog / "EmoEvaluation" / f"{name}.txt").write_text("\n".join(evaluation) + "\n", encoding="utf-8")
    _render_iemocap_video(dialog / "avi" / "DivX" / f"{name}.avi", turns, total, actors, s, rng)


def _render_iemocap_video(path: Path, turns: list[_Turn], total: float, actors: dict, s: dict,
                          rng: np.random.Generator) -> None:
    width, height = s["frame_size"]
    fps = s["fps"]
    face_h = s["face_height"]
    centers = {g: ((0.25 if s["sides"][g] == "left" else 0.75) * width, 0.45 * height) for g in ("F", "M")}
    base = room_background(width, height, wall_colour(rng), rng)
    for g in ("F", "M"):
        draw_body(base, centers[g], face_h, actors[g][1])
    cache: dict[tuple[str, str] | None, av.VideoFrame] = {}

    def frame_for(state: tuple[str, str] | None) -> av.VideoFrame:
        # The picture changes only when the speaker or emotion changes: draw each state once.
        if state not in cache:
            image = base.copy()
            for g in ("F", "M"):
                emotion = state[1] if state is not None and state[0] == g else "neu"
                draw_face(image, centers[g], face_h, emotion, actors[g][1])
            cache[state] = video_frame(image)
        return cache[state]

    n_frames = int(math.ceil(total * fps))
    frames = []
    for i in range(n_frames):
        t = i / fps
        active = next((turn for turn in turns if turn.start <= t < turn.end), None)
        frames.append(frame_for((active.gender, active.emotion) if active is not None else None))
    write_video(path, frames, "mpeg4", fps, (width, height))


# --------------------------------------------------------------------------------------------------- MELD

MELD_CAST: dict[str, str] = {"Joey": "M", "Ross": "M", "Chandler": "M", "Rachel": "F", "Monica": "F", "Phoebe": "F"}
MELD_GUESTS: dict[str, str] = {"Janice": "F", "Gunther": "M", "Mike": "M", "Carol": "F", "Emily": "F",
                               "Richard": "M", "Mr. Geller": "M", "Mrs. Geller": "F", "The Interviewer": "M",
                               "Susan": "F"}
_MELD_SENTIMENT = {"neutral": "neutral", "joy": "positive", "sadness": "negative", "anger": "negative",
                   "fear": "negative", "disgust": "negative"}


@dataclass
class _MeldRow:
    dialogue: int
    utterance: int
    speaker: str
    emotion: str
    sentiment: str
    text: str
    season: int
    episode: int
    start_ms: int = 0
    end_ms: int = 0
    one_digit_hour: bool = False


def _meld_speaker(seed: int, name: str) -> tuple[str, Voice, FaceStyle]:
    """A speaker's gender, voice and face: the same in every dialogue of the corpus."""
    gender = {**MELD_CAST, **MELD_GUESTS}.get(name, "F")
    rng = np.random.default_rng([seed, 10, zlib.crc32(name.encode("utf-8"))])
    return gender, random_voice(rng, gender), actor_style(rng, gender)


def _plan_meld_split(s: dict, split: str) -> list[list[_MeldRow]]:
    split_index = MELD_SPLITS.index(split)
    split_rng = np.random.default_rng([s["seed"], 11, split_index])
    lo, hi = s["utterances_per_dialogue"]
    sizes = [int(split_rng.integers(lo, hi + 1)) for _ in range(s["dialogues"][split])]
    labels = _label_sequence(split_rng, MELD_CLASSES, sum(sizes))
    dialogues = []
    for dia, size in enumerate(sizes):
        rng = np.random.default_rng([s["seed"], 12, split_index, dia])
        own, labels = labels[:size], labels[size:]
        k_lo, k_hi = s["speakers_per_dialogue"]
        k = min(int(rng.integers(k_lo, k_hi + 1)), size)
        pool = list(MELD_CAST) + ([list(MELD_GUESTS)[int(rng.integers(len(MELD_GUESTS)))]] if rng.random() < 0.3
                                  else [])
        speakers = [pool[i] for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]
        order = list(speakers) + [speakers[int(rng.integers(len(speakers)))] for _ in range(size - len(speakers))]
        # Everyone speaks at least once; avoid one speaker twice in a row where a swap allows it.
        order = [order[i] for i in rng.permutation(len(order))]
        for i in range(1, len(order)):
            if order[i] == order[i - 1]:
                swap = next((j for j in range(i + 1, len(order)) if order[j] != order[i - 1]), None)
                if swap is not None:
                    order[i], order[swap] = order[swap], order[i]
        season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
        rows = []
        for utt, (speaker, emotion) in enumerate(zip(order, own)):
            sentiment = _MELD_SENTIMENT.get(emotion) or ("positive" if rng.random() < 0.5 else "negative")
            text = meld_style_text(make_text(rng, emotion, s["hint_probability"]), rng)
            rows.append(_MeldRow(dia, utt, speaker, emotion, sentiment, text, season, episode,
                                 one_digit_hour=bool(rng.random() < s["one_digit_hour_fraction"])))
        dialogues.append(rows)
    flat = [row for rows in dialogues for row in rows]
    if len(flat) >= 2:  # the real CSVs mix both time formats; make sure each file does
        if all(r.one_digit_hour for r in flat):
            flat[0].one_digit_hour = False
        if not any(r.one_digit_hour for r in flat):
            flat[-1].one_digit_hour = True
    return dialogues


def _format_time(ms: int, one_digit_hour: bool) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    hour = f"{hours:d}" if one_digit_hour else f"{hours:02d}"
    return f"{hour}:{minutes:02d}:{seconds:02d},{millis:03d}"


def generate_meld(root: Path, settings: dict | None) -> None:
    """Write a MELD.Raw-like tree at `root` (built in a temporary folder, then swapped in)."""
    s = resolve_settings("meld", settings)
    espeak_binary()
    defects = {target: defect for defect, target in s["defects"].items() if target is not None}
    plans = {split: _plan_meld_split(s, split) for split in MELD_SPLITS}
    _warn_missing_train_classes("MELD", MELD_CLASSES, {r.emotion for rows in plans["train"] for r in rows})
    jobs = [(split, rows) for split in MELD_SPLITS for rows in plans[split]]
    logger.info("synthetic MELD: %s dialogues, seed %d -> %s",
                ", ".join(f"{k} {len(v)}" for k, v in plans.items()), s["seed"], root)
    with atomic_dir(root) as tmp:
        for split in MELD_SPLITS:
            (tmp / MELD_CLIP_DIRS[split]).mkdir()
        for split, rows in tqdm(jobs, desc="synthetic MELD", unit="dialogue"):
            _render_meld_dialogue(tmp, split, rows, s, defects)
        for split in MELD_SPLITS:
            _write_meld_csv(tmp / f"{split}_sent_emo.csv", [r for rows in plans[split] for r in rows])
    for target, defect in sorted(defects.items()):
        logger.info("synthetic MELD defect %s: %s", defect, target)
    logger.info("synthetic MELD written to %s", root)


def _write_meld_csv(path: Path, rows: list[_MeldRow]) -> None:
    # csv's defaults match the release: CRLF line ends, quotes only where a field has a comma or quote.
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(MELD_CSV_HEADER)
        for number, r in enumerate(rows, start=1):
            writer.writerow([number, r.text, r.speaker, r.emotion, r.sentiment, r.dialogue, r.utterance, r.season,
                             r.episode, _format_time(r.start_ms, r.one_digit_hour),
                             _format_time(r.end_ms, r.one_digit_hour)])


def _render_meld_dialogue(tree: Path, split: str, rows: list[_MeldRow], s: dict, defects: dict[str, str]) -> None:
    split_index = MELD_SPLITS.index(split)
    dia = rows[0].dialogue
    rng = np.random.default_rng([s["seed"], 13, split_index, dia])
    width, height = s["frame_size"]
    wall = wall_colour(rng)
    cursor_ms = int(rng.integers(60_000, 2_400_000))  # the dialogue's place in its episode
    people = {name: _meld_speaker(s["seed"], name) for name in dict.fromkeys(r.speaker for r in rows)}
    for row in rows:
        _, voice, style = people[row.speaker]
        signal = speak(row.text, voice, row.emotion, rng)
        row.start_ms = cursor_ms
        row.end_ms = cursor_ms + int(math.ceil(len(signal) / SAMPLE_RATE * 1000))
        cursor_ms = row.end_ms + int(rng.uniform(*s["gap_seconds"]) * 1000)
        duration = (row.end_ms - row.start_ms) / 1000.0
        image = room_background(width, height, wall, rng)
        listeners = [name for name in people if name != row.speaker]
        if listeners and rng.random() < s["second_face_probability"]:
            listener = people[listeners[int(rng.integers(len(listeners)))]][2]
            x = width * (0.13 if rng.random() < 0.5 else 0.87)
            small = 0.62 * s["face_height"]
            draw_body(image, (x, 0.42 * height), small, listener)
            draw_face(image, (x, 0.42 * height), small, "neutral", listener)
        center = (width * float(rng.uniform(0.45, 0.55)), height * 0.46)
        draw_body(image, center, s["face_height"], style)
        draw_face(image, center, s["face_height"], row.emotion, style)

        target = f"{split}/dia{row.dialogue}_utt{row.utterance}"
        defect = defects.get(target)
        path = tree / MELD_CLIP_DIRS[split] / f"dia{row.dialogue}_utt{row.utterance}.mp4"
        if defect == "missing_clip":
            continue
        audio = fit(resample(signal, SAMPLE_RATE, s["audio_rate"]), int(round(duration * s["audio_rate"])))
        frame = video_frame(image)
        n_frames = max(1, int(math.ceil(duration * s["fps"])))
        write_video(path, [frame] * n_frames, "libx264", s["fps"], (width, height),
                     audio=None if defect == "no_audio_stream" else audio, audio_rate=s["audio_rate"])
        if defect == "corrupt_clip":
            # Truncation drops the moov atom (written last): the file exists but cannot be opened.
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
