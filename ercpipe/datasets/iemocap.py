"""IEMOCAP reader: IEMOCAP_full_release as distributed -> manifest rows (the standard 6-class setting).

Expected layout, per session N (1..5):

    {root}/Session{N}/dialog/EmoEvaluation/{dialog}.txt      labels (required)
    {root}/Session{N}/dialog/transcriptions/{dialog}.txt     text (required)
    {root}/Session{N}/dialog/avi/DivX/{dialog}.avi           dialogue video (missing -> flagged)
    {root}/Session{N}/sentences/wav/{dialog}/{utt}.wav       utterance audio (missing -> flagged)

EmoEvaluation blocks start with `[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5, 2.5, 2.5]`
followed by per-annotator lines (C-E1:, A-F1:, ...), which are not used. Transcription lines look like
`Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`; lines without an utterance id (`M: [BREATHING]`)
are not utterances, and transcribed turns without an evaluation block (`Ses01F_impro01_MXX0`) are
rejected (recorded as `not_evaluated`).

Rows: the label is mapped through `relabel` first (row flagged `relabelled`), then rows whose label is
not one of the classes (default ercpipe.labels.IEMOCAP_CLASSES; xxx, oth, fea, sur, dis) are rejected and
recorded; so are rows of dialogues that the split file does not list. Utterances are in time order;
speaker is the actor ("Ses01_F"), speaker_slot 0 for M and 1 for F (the SDT / VEGA convention);
audio_path is the sentence wav (whole file), video_path the dialogue avi with video_start/end = the
utterance times.

summary.json "checks" compares the result with the standard release (151 dialogues, 5810 train+valid
and 1623 test utterances, the per-dialogue counts of the split file) and lists every difference; on the
synthetic corpus differences are expected.

Settings (dataset config keys) and defaults:

    root: the IEMOCAP_full_release folder (required)
    split_file: JSON with "train", "valid", "test" dialogue lists (and optionally
                "utterances_per_dialogue"); default workflow/resources/iemocap_standard_split.json
    classes: the classes kept, in label-id order, a subset of ercpipe.labels.IEMOCAP_CLASSES; default all
             six; the 4-class setup is [hap, sad, neu, ang] with relabel {exc: hap}
    relabel: {raw label: class} applied before filtering, e.g. {sur: hap}; default {}
    sides: which half of the dialogue video shows each actor, {F: left|right, M: left|right};
           default {F: left, M: right}; validated here, used by the visual extractor
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, NamedTuple

from ercpipe.datasets import (ReadResult, declared_media, flag_overlaps, flag_past_end, flag_row, missing_file_detail,
                              new_row, number_dialogue, probes, reader_settings, rows_to_frame)
from ercpipe.datasets.csv_manifest import clean_text, read_text, text_fixed_detail
from ercpipe.io.manifest import SPLITS, IssueLog, ManifestError
from ercpipe.labels import IEMOCAP_CLASSES

logger = logging.getLogger(__name__)

DEFAULT_SPLIT_FILE = Path(__file__).resolve().parents[2] / "workflow" / "resources" / "iemocap_standard_split.json"
DEFAULTS: dict = {"split_file": None, "classes": None, "relabel": {}, "sides": {"F": "left", "M": "right"}}

# Every label the EmoEvaluation files use; anything else means the file is not what we think it is.
RAW_LABELS: tuple[str, ...] = ("neu", "fru", "sad", "sur", "ang", "hap", "exc", "fea", "dis", "oth", "xxx")
SPEAKER_SLOTS = {"M": 0, "F": 1}

# The standard release (DialogueRNN / COSMIC / MMGCN / SDT / VEGA features).
REFERENCE_DIALOGUES = 151
REFERENCE_TRAIN_VALID = 5810
REFERENCE_TEST = 1623

_SESSION = re.compile(r"^Session(\d+)$")
# A dialogue's name as the release writes it: Ses01F_impro01, Ses05M_script02_2, Ses03M_impro05a.
IEMOCAP_DIALOGUE_NAME = re.compile(r"Ses\d\d[FM]_[A-Za-z0-9_]+")
_TRANSCRIPT = re.compile(r"^(\S+)\s+\[\s*([^\]]*?)\s*\]:?\s?(.*)$")
# A line whose times were lost ("Ses01F_impro01_F000: Excuse me."): its text is still the utterance's (the
# EmoEvaluation block gives the times; a transcription's are only their fallback).
_UNTIMED_TRANSCRIPT = re.compile(r"^(\S+_[FM]\d+):\s?(.*)$")
_NUMBER = r"\d+(?:\.\d*)?"


@dataclass
class Evaluation:
    """One EmoEvaluation block header."""

    utterance_id: str
    label: str
    start: float
    end: float
    line: int
    time_problem: str = ""


def check_root(root: Path) -> list[Path]:
    """Session folders of an IEMOCAP root; ManifestError naming the path and what is expected there."""
    if not root.is_dir():
        raise ManifestError(f"IEMOCAP root {root} does not exist; point the dataset's root at the "
                            "IEMOCAP_full_release folder (it holds Session1 .. Session5)")
    sessions = sorted((p for p in root.iterdir() if p.is_dir() and _SESSION.match(p.name)),
                      key=lambda p: int(_SESSION.match(p.name).group(1)))
    if not sessions:
        nested = [p for p in root.iterdir() if p.is_dir() and (p / "Session1").is_dir()]
        hint = f"; {nested[0]} looks like the release folder: use it as root" if nested else ""
        # A folder inside the release (Session1, Session1/dialog): the release is up the tree.
        inside = next((p for p in (root, root.parent) if _SESSION.match(p.name) and (p / "dialog").is_dir()), None)
        if inside is not None:
            hint = f"; {inside} is one session of the release: use the folder that holds it, {inside.parent}, as root"
        found = sorted(p.name for p in root.iterdir())[:10]
        raise ManifestError(f"IEMOCAP root {root} holds no Session<N> folder (found {found}); expected the "
                            f"IEMOCAP_full_release folder with Session1 .. Session5{hint}")
    for session in sessions:
        for sub in ("dialog/EmoEvaluation", "dialog/transcriptions"):
            if not (session / sub).is_dir():
                raise ManifestError(f"IEMOCAP: folder {session / sub} is missing; every Session<N> needs "
                                    "dialog/EmoEvaluation (labels) and dialog/transcriptions (text); is the "
                                    "release fully extracted?")
    return sessions


def parse_evaluation(path: Path) -> list[Evaluation]:
    """Block headers of one EmoEvaluation file (annotator lines are skipped)."""
    entries: list[Evaluation] = []
    for number, line in enumerate(read_text(path).text.splitlines(), start=1):
        if not line.lstrip().startswith("["):  # a block header indented by an editor is still one
            continue
        bracket = re.match(r"^\[([^\]]*)\]\s*(.*)$", line.strip())
        if not bracket:
            raise ManifestError(f"{path}, line {number}: cannot parse {line.strip()[:80]!r}; expected "
                                "'[start - end]<TAB>utterance_id<TAB>label<TAB>[V, A, D]'")
        rest = bracket.group(2).split()
        fields = [bracket.group(1), *rest]
        if len(fields) < 3:
            raise ManifestError(f"{path}, line {number}: cannot parse {line.strip()[:80]!r}; expected "
                                "'[start - end]<TAB>utterance_id<TAB>label<TAB>[V, A, D]'")
        if fields[2].startswith("["):
            raise ManifestError(f"{path}, line {number}: no label between the utterance id and the [V, A, D] "
                                f"values in {line.strip()[:80]!r}; expected "
                                "'[start - end]<TAB>utterance_id<TAB>label<TAB>[V, A, D]': restore the label")
        start, end, problem = _parse_span(fields[0])
        entries.append(Evaluation(fields[1], fields[2].lower(), start, end, number, problem))
    return entries


def _parse_span(span: str) -> tuple[float, float, str]:
    match = re.fullmatch(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*", span)
    if not match:
        return math.nan, math.nan, f"time span [{span}] is not '[start - end]' in seconds"
    start, end = float(match.group(1)), float(match.group(2))
    if end <= start:
        return start, end, f"end {end} is not after start {start}"
    return start, end, ""


class TranscriptLine(NamedTuple):
    text: str  # mojibake repaired, whitespace collapsed
    line: int
    fixed: str  # what was repaired (the text_fixed flag's detail), "" when nothing was
    start: float = math.nan  # the line's own [start-end] (NaN when it does not parse): used only when the
    end: float = math.nan  # EmoEvaluation header's times do not


def _transcript_line(line: str) -> tuple[str, str, str] | None:
    """(id, times as written, text) of a transcription line; times "" for a line that lost them."""
    match = _TRANSCRIPT.match(line)
    if match:
        return match.group(1), match.group(2), match.group(3)
    match = _UNTIMED_TRANSCRIPT.match(line)
    return (match.group(1), "", match.group(2)) if match else None


def parse_transcription(path: Path, issues: IssueLog | None = None) -> dict[str, TranscriptLine]:
    """{utterance_id: TranscriptLine} of one transcription file.

    Lines without an utterance id ("M: [BREATHING]") are not utterances. A second line for an id, and a line
    that starts with the dialogue's name but is neither 'ID [start-end]: text' nor 'ID: text', are not used and
    are recorded in `issues` (rejected: duplicate_transcript_line, unparsed_transcript_line). Text is repaired as the MELD
    and CSV readers repair it (bytes that are not UTF-8 read as cp1252, mis-decoded characters)."""
    texts: dict[str, TranscriptLine] = {}
    decoded = read_text(path)
    for number, line in enumerate(decoded.text.splitlines(), start=1):
        parsed = _transcript_line(line.strip())
        if parsed and re.search(r"_[FM]", parsed[0]):
            uid, span, raw_text = parsed
            if uid in texts:
                if issues is not None:
                    issues.reject("duplicate_transcript_line", file=str(path), line=number, utterance_id=uid,
                                  detail=f"{uid} already has line {texts[uid][1]}, which is used; delete one of them")
                continue
            text, repaired = clean_text(raw_text)
            undecodable = number in decoded.fixed_lines
            fixed = text_fixed_detail({"text": raw_text}, undecodable) if repaired or undecodable else ""
            start, end, problem = _parse_span(span)
            times = (math.nan, math.nan) if problem else (start, end)
            texts[uid] = TranscriptLine(text.strip(), number, fixed, *times)
        elif line.startswith(path.stem + "_") and issues is not None:
            uid = re.match(r"[^\s\[(:]+", line).group(0)
            issues.reject("unparsed_transcript_line", file=str(path), line=number, utterance_id=uid,
                          detail=f"cannot parse {line.strip()[:80]!r}; expected 'ID [start-end]: text'")
    return texts


def load_split(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """({dialogue: split}, {dialogue: reference utterance count}) from a split JSON file."""
    try:
        data = json.loads(read_text(path).text)
    except json.JSONDecodeError as err:
        raise ManifestError(f"split file {path}, line {err.lineno}: not valid JSON ({err.msg})") from err
    shape = ('expected {"train": [dialogue ids], "valid": [...], "test": [...]} and optionally '
             '"utterances_per_dialogue": {dialogue id: count}')
    if not isinstance(data, dict):
        raise ManifestError(f"split file {path} holds a JSON {type(data).__name__}; {shape}")
    missing = [s for s in SPLITS if not isinstance(data.get(s), list)]
    if missing:
        raise ManifestError(f"split file {path} lacks the dialogue list(s) {missing}; expected keys {list(SPLITS)}")
    split_of: dict[str, str] = {}
    for split in SPLITS:
        for dialogue in data[split]:
            if not isinstance(dialogue, str):
                raise ManifestError(f"split file {path}: {split} lists {dialogue!r}, not a dialogue id string; {shape}")
            if dialogue in split_of:
                raise ManifestError(f"split file {path}: dialogue {dialogue} is in both {split_of[dialogue]} and {split}")
            split_of[dialogue] = split
    counts = data.get("utterances_per_dialogue") or {}
    bad = {k: v for k, v in counts.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0} \
        if isinstance(counts, dict) else counts
    if bad:
        raise ManifestError(f"split file {path}: utterances_per_dialogue must map dialogue ids to whole numbers; "
                            f"found {dict(list(bad.items())[:3]) if isinstance(bad, dict) else type(bad).__name__}")
    return split_of, {str(k): v for k, v in counts.items()}


def split_name(path: Path) -> str:
    """How issues and summary.json name a split file: the packaged one by what it is (its absolute path is the
    checkout's, which a moved project changes), another by its path."""
    return "the standard split" if Path(path) == DEFAULT_SPLIT_FILE else str(path)


def canonical_settings(cfg: dict) -> dict:
    """`cfg` with the defaults spelled another way set back to how DEFAULTS spell them, and relabel keys as they
    are compared (lower-cased): the workflow's params hold this, so writing a default out re-runs nothing."""
    out = dict(cfg)
    if out.get("classes") is not None and list(out["classes"]) == list(IEMOCAP_CLASSES):
        out["classes"] = None
    if out.get("split_file") and Path(out["split_file"]).resolve() == DEFAULT_SPLIT_FILE:
        out["split_file"] = None
    relabel = out.get("relabel") or {}
    lowered = {str(raw).strip().lower(): target for raw, target in relabel.items()}
    if len(lowered) == len(relabel):  # keys equal once lower-cased are refused by the reader, named as written
        out["relabel"] = dict(sorted(lowered.items()))
    return out


def check_settings(cfg: dict) -> None:
    """Raise ValueError for settings the reader cannot use (classes, relabel, sides, split file), before any job."""
    _settings(cfg)


def _settings(cfg: dict) -> dict:
    settings = reader_settings(cfg, DEFAULTS, "iemocap")
    classes = tuple(settings["classes"] or IEMOCAP_CLASSES)
    unknown = [c for c in classes if c not in IEMOCAP_CLASSES]
    repeated = sorted({c for c in classes if classes.count(c) > 1}, key=str)
    if unknown or repeated or len(classes) < 2:
        problem = (f"{unknown} {'is' if len(unknown) == 1 else 'are'} not among them (names are lower-case)"
                   if unknown else f"{repeated} given more than once" if repeated else "fewer than two given")
        raise ValueError(f"iemocap classes: at least two distinct names of {list(IEMOCAP_CLASSES)} in label-id order "
                         f"(e.g. the 4-class setup [hap, sad, neu, ang] with relabel {{exc: hap}}); got "
                         f"{list(classes)}: {problem}")
    # Labels are compared lower-cased (the files' Neu / neu), so the keys are too: `Sur` used to match nothing.
    relabel = {str(raw).strip().lower(): target for raw, target in (settings["relabel"] or {}).items()}
    if len(relabel) != len(settings["relabel"] or {}):
        raise ValueError(f"iemocap relabel: keys {sorted(settings['relabel'])} name the same label more than once "
                         "(labels are compared lower-cased); keep one of them")
    for raw, target in relabel.items():
        if target not in classes:
            raise ValueError(f"iemocap relabel: {raw!r} -> {target!r}, but the target must be one of the classes "
                             f"{list(classes)}")
    sides = dict(settings["sides"] or {})
    bad = {k: v for k, v in sides.items() if k not in ("F", "M") or v not in ("left", "right")}
    if bad or set(sides) != {"F", "M"}:
        raise ValueError(f"iemocap sides: expected {{F: left|right, M: left|right}}, got {sides!r}")
    settings.update(classes=classes, relabel=relabel, sides=sides, labels_seen=set(),
                    split_file=Path(settings["split_file"]) if settings["split_file"] else DEFAULT_SPLIT_FILE)
    if not settings["split_file"].is_file():
        raise ManifestError(f"iemocap split file {settings['split_file']} does not exist; set `split_file` to the "
                            "standard split JSON (train / valid / test dialogue lists)")
    return settings


_RESTORE = ": restore it from the release (or declare the dataset's `modalities` without it)"


class _MediaCheck:
    """What is wrong with an utterance's media: a missing WAV; each dialogue video probed once (PyAV only
    when a video exists; probe=False: existence only). Media of an undeclared modality is not looked at."""

    def __init__(self, probe: bool | Collection[str], media: frozenset[str]) -> None:
        self.cache: dict[str, tuple[str, str]] = {}
        self.durations: dict[str, float] = {}  # seconds, of the videos probed and found usable
        self.probe = probe
        self.media = media

    def audio_problem(self, wav: Path) -> tuple[str, str]:
        """(flag, detail) of a sentence WAV: missing, or, when probed, a broken RIFF structure (a header
        read, cheap enough for IEMOCAP's 10,039 files; decoding is left to the utterance-audio step)."""
        if "audio" not in self.media:
            return "", ""
        if not wav.is_file():
            return "missing_audio", missing_file_detail(wav, _RESTORE)
        if probes(self.probe, wav):
            from ercpipe.io.media import wav_problem

            problem = wav_problem(wav)
            if problem:
                fix = "" if "replace it" in problem else "; replace it with the release's copy"
                return "corrupt_audio", f"{wav}: {problem}{fix}"
        return "", ""

    def video_problem(self, path: Path) -> tuple[str, str]:
        if "visual" not in self.media:
            return "", ""
        key = str(path)
        if key not in self.cache:
            if not path.is_file():
                self.cache[key] = ("missing_video", missing_file_detail(path, _RESTORE))
            elif not probes(self.probe, path):
                self.cache[key] = ("", "")
            else:
                from ercpipe.io.media import probe

                info = probe(path)
                if not info.decodable:
                    fix = "" if "replace it" in info.error else "; replace it with the release's copy"
                    self.cache[key] = ("corrupt_video", f"{key}: {info.error}{fix}")
                elif not info.has_video:
                    self.cache[key] = ("no_video", key)
                else:
                    self.cache[key] = ("", "")
                    self.durations[key] = info.duration
        return self.cache[key]


def _dialogue_rows(name: str, session: Path, emo_file: Path, split: str | None, settings: dict,
                   issues: IssueLog, seen: dict[str, str], media: _MediaCheck) -> list[dict]:
    """Kept rows of one dialogue in time order; rejected rows go to the issue log."""
    dialogue = emo_file.stem
    transcript_file = session / "dialog" / "transcriptions" / f"{dialogue}.txt"
    texts = parse_transcription(transcript_file, issues) if transcript_file.is_file() else None
    evaluations = parse_evaluation(emo_file)
    rows: list[dict] = []
    for entry in evaluations:
        where = f"{emo_file}, line {entry.line}"
        if entry.utterance_id in seen:
            raise ManifestError(f"{where}: utterance {entry.utterance_id} is already labelled at "
                                f"{seen[entry.utterance_id]}; each utterance needs exactly one evaluation block")
        seen[entry.utterance_id] = where
        label = _checked_label(entry, dialogue, settings, where)
        reason = "dialogue_not_in_split" if split is None else \
            "label_not_in_classes" if label not in settings["classes"] else ""
        if reason:
            detail = (f"dialogue {dialogue} is not in {split_name(settings['split_file'])}" if split is None else
                      f"label {entry.label}" + (f" (relabelled {label})" if label != entry.label else "")
                      + f" is not one of {list(settings['classes'])}")
            issues.reject(reason, file=str(emo_file), line=entry.line, utterance_id=entry.utterance_id, detail=detail)
            continue
        rows.append(_make_row(name, session, emo_file, entry, label, split, texts, transcript_file, issues, media))
    # Transcribed turns without an evaluation block (the release's "..._MXX0" lines) have no label.
    labelled = {e.utterance_id for e in evaluations}
    for uid, transcript in (texts or {}).items():
        if uid not in labelled:
            typo = "" if uid.startswith(dialogue + "_") else (f" (the id does not start with the dialogue's name "
                                                              f"{dialogue}: a typo in the transcription?)")
            issues.reject("not_evaluated", file=str(transcript_file), line=transcript.line, utterance_id=uid,
                          detail=f"no EmoEvaluation block for {uid} in {emo_file}{typo}")
    rows = _time_order(rows)
    number_dialogue(rows)
    flag_overlaps(rows, issues, lambda r: (r["video_start"], r["video_end"], r["video_path"]))
    return rows


def _reject_unlabelled_dialogues(session: Path, labelled: set[str], issues: IssueLog) -> list[Path]:
    """A transcription without its EmoEvaluation file: every utterance of it is recorded as not_evaluated, so
    the dialogue is not gone without a trace. Returns those transcriptions: they are read, so they are sources
    (the workflow then notices one added or removed)."""
    folder = session / "dialog" / "transcriptions"
    read = []
    for transcript in sorted(p for p in folder.glob("*.txt") if not p.name.startswith(".") and p.is_file()):
        if transcript.stem in labelled:
            continue
        read.append(transcript)
        emo_file = session / "dialog" / "EmoEvaluation" / transcript.name
        logger.warning("IEMOCAP: %s has no label file %s; its utterances are not used", transcript, emo_file)
        for uid, transcribed in parse_transcription(transcript).items():
            issues.reject("not_evaluated", file=str(transcript), line=transcribed.line, utterance_id=uid,
                          detail=f"{emo_file} does not exist: restore it from the release to use this dialogue")
    return read


def _checked_label(entry: Evaluation, dialogue: str, settings: dict, where: str) -> str:
    """The label after `relabel`; ManifestError for a malformed id or a label IEMOCAP does not use."""
    uid = entry.utterance_id
    if not uid.startswith(dialogue + "_") or uid[len(dialogue) + 1:len(dialogue) + 2] not in SPEAKER_SLOTS:
        own = re.match(r"(Ses\d\d[FM]_[A-Za-z0-9_]+?)_[FM]\d", uid)
        if own and own.group(1) != dialogue and not IEMOCAP_DIALOGUE_NAME.fullmatch(dialogue):
            # A copy beside the original ("Ses05F_impro07 (copy).txt", "Ses05F_impro07.bak.txt").
            raise ManifestError(f"{where}: the file name {dialogue!r} is not a dialogue's, and its utterances are "
                                f"{own.group(1)}'s: a copy of {own.group(1)}.txt? Move it out of the folder")
        raise ManifestError(f"{where}: utterance id {uid!r} does not look like {dialogue}_F000 / {dialogue}_M000 "
                            "(dialogue name, then F or M for the speaking actor)")
    settings["labels_seen"].add(entry.label)
    if entry.label not in RAW_LABELS and entry.label not in settings["relabel"]:
        raise ManifestError(f"{where}: unknown label {entry.label!r} for {uid}; IEMOCAP labels are "
                            f"{list(RAW_LABELS)} (map others with the dataset's `relabel` setting)")
    return settings["relabel"].get(entry.label, entry.label)


def _make_row(name: str, session: Path, emo_file: Path, entry: Evaluation, label: str, split: str,
              texts: dict[str, TranscriptLine] | None, transcript_file: Path, issues: IssueLog,
              media: _MediaCheck) -> dict:
    """One kept utterance with its media paths and flags."""
    dialogue, uid = emo_file.stem, entry.utterance_id
    gender = uid[len(dialogue) + 1]
    wav = session / "sentences" / "wav" / dialogue / f"{uid}.wav"
    video = session / "dialog" / "avi" / "DivX" / f"{dialogue}.avi"
    row = new_row(dataset=name, split=split, dialogue_id=dialogue, utterance_id=uid,
                  speaker=f"{dialogue[:5]}_{gender}", speaker_slot=SPEAKER_SLOTS[gender], label=label,
                  text=(texts or {})[uid].text if uid in (texts or {}) else "", audio_path=str(wav), video_path=str(video),
                  video_start=entry.start, video_end=entry.end, _file=str(emo_file), _line=entry.line)
    if label != entry.label:
        flag_row(row, "relabelled", issues, f"{entry.label} -> {label}")
    if entry.time_problem:
        # The video is the whole dialogue: without times the utterance cannot be cut from it. The
        # transcription line has the same turn's times; without those the utterance gets no video.
        spoken = (texts or {}).get(uid)
        if spoken is not None and math.isfinite(spoken.start):
            row.update(video_start=spoken.start, video_end=spoken.end)
            flag_row(row, "bad_time", issues, f"{entry.time_problem}; the times of {transcript_file}, line "
                                              f"{spoken.line} ({spoken.start}-{spoken.end}) are used")
        else:
            row["video_path"] = ""
            flag_row(row, "bad_time", issues, f"{entry.time_problem}, and {transcript_file} has no times for {uid} "
                                              "either: the dialogue video cannot be cut, so the utterance has no "
                                              "face features; fix the times")
    if uid in (texts or {}) and texts[uid].fixed:
        flag_row(row, "text_fixed", issues, f"{transcript_file}, line {texts[uid].line}: {texts[uid].fixed}")
    if not row["text"]:
        flag_row(row, "empty_text", issues, f"no line for {uid} in {transcript_file}" if texts is not None
                 else f"{transcript_file} does not exist")
    audio_problem, detail = media.audio_problem(wav)
    if audio_problem:
        flag_row(row, audio_problem, issues, detail)
    video_problem, detail = media.video_problem(video)
    if video_problem:
        flag_row(row, video_problem, issues, detail)
    else:
        flag_past_end(row, "video", media.durations.get(str(video), 0.0), issues)
    return row


def _time_order(rows: list[dict]) -> list[dict]:
    """Rows by start time; a row without usable times stays right after the row before it in the file."""
    keys, last = [], -math.inf
    for index, row in enumerate(rows):
        known = math.isfinite(row["video_start"])
        last = row["video_start"] if known else last
        keys.append((last, 0 if known else 1, index if not known else 0, row["utterance_id"]))
    return [rows[i] for i in sorted(range(len(rows)), key=keys.__getitem__)]


def reference_checks(rows_per_dialogue: dict[str, int], split_of: dict[str, str], expected: dict[str, int],
                     split_counts: dict[str, int], standard_labels: bool = True,
                     standard_split: bool = True) -> list[dict]:
    """Every way the manifest differs from the standard release (ok=False entries are differences); with a split
    file of one's own (standard_split False), from that file: its dialogues and, where it gives them, its
    utterance counts, so that a complete subset passes. The utterance counts are the six-class setting's: with
    other classes or a relabelling (standard_labels False) only the dialogues are compared."""
    absent = sorted(d for d in split_of if d not in rows_per_dialogue)
    present = {"check": "split-file dialogues present in the raw tree", "ok": not absent,
               "expected": len(split_of), "found": len(split_of) - len(absent), "missing": absent}
    if not standard_labels:
        return [present]
    train_valid = split_counts.get("train", 0) + split_counts.get("valid", 0)
    if standard_split:
        totals = {"dialogues": REFERENCE_DIALOGUES, "train+valid": REFERENCE_TRAIN_VALID, "test": REFERENCE_TEST}
    else:
        def counted(splits):
            dialogues = [d for d, split in split_of.items() if split in splits]
            return sum(expected[d] for d in dialogues) if all(d in expected for d in dialogues) else None

        totals = {"dialogues": len(split_of), "train+valid": counted(("train", "valid")), "test": counted(("test",))}
    checks = [{"check": "dialogues", "ok": len(rows_per_dialogue) == totals["dialogues"],
               "expected": totals["dialogues"], "found": len(rows_per_dialogue)}]
    for name, found in (("train+valid", train_valid), ("test", split_counts.get("test", 0))):
        if totals[name] is not None:
            checks.append({"check": f"{name} utterances", "ok": found == totals[name], "expected": totals[name],
                           "found": found})
    checks.append(present)
    compared = [d for d in sorted(rows_per_dialogue) if d in expected]
    differ = [d for d in compared if expected[d] != rows_per_dialogue[d]]
    if compared and not differ:  # so that a reader sees they were compared (a difference has its own row)
        checks.append({"check": "dialogues whose utterance count matches the split file", "ok": True,
                       "expected": len(compared), "found": len(compared)})
    for dialogue in differ:
        checks.append({"check": f"utterances in {dialogue}", "ok": False, "expected": expected[dialogue],
                       "found": rows_per_dialogue[dialogue]})
    return checks


def _no_rows_message(root: Path, sessions: list[Path], settings: dict, issues: IssueLog) -> str:
    """Why the tree gave no row: no label file at all (the wrong folder, or a part not unpacked), or every row
    rejected (counted by reason: the build stops here, so issues.tsv is not written)."""
    where = f"IEMOCAP root {root}"
    if not any(not p.name.startswith(".") for s in sessions for p in (s / "dialog" / "EmoEvaluation").glob("*.txt")):
        return (f"{where}: no label file Session<N>/dialog/EmoEvaluation/*.txt in {', '.join(s.name for s in sessions)}; "
                f"point `root` at the unpacked IEMOCAP_full_release folder, whose sessions hold dialog/EmoEvaluation "
                f"and dialog/transcriptions")
    reasons = Counter(i.reason for i in issues.issues if i.action == "rejected")
    counted = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common()) or "none"
    return (f"{where}: no labelled utterance of the {len(settings['classes'])} classes {list(settings['classes'])} in "
            f"any dialogue of the split file {settings['split_file']} (rows rejected by reason: {counted}); check the "
            f"split file's dialogue names and the `classes` / `relabel` settings against the label files")


def read(name: str, cfg: dict, probe: bool | Collection[str] = True) -> ReadResult:
    """Read IEMOCAP_full_release (see the module docstring) into manifest rows; probe=False opens no video."""
    settings = _settings(cfg)
    if not cfg.get("root"):
        raise ValueError("dataset format 'iemocap' needs `root` (the IEMOCAP_full_release folder)")
    root = Path(cfg["root"])
    sessions = check_root(root)
    split_of, expected = load_split(settings["split_file"])
    issues = IssueLog()
    seen: dict[str, str] = {}
    media = _MediaCheck(probe, declared_media(cfg))
    sources: list[Path] = []
    by_dialogue: dict[str, list[dict]] = {}
    for session in sessions:
        for sub in [s for s, m in (("sentences/wav", "audio"), ("dialog/avi/DivX", "visual")) if m in media.media]:
            if not (session / sub).is_dir():
                logger.warning("IEMOCAP: %s is missing; its rows are flagged", session / sub)
        # Hidden files ("._Ses01F_impro01.txt", macOS metadata) are not label files; anything else named
        # *.txt is read, so an unreadable one is an error naming it rather than a dialogue silently gone.
        emo_files = sorted(p for p in (session / "dialog" / "EmoEvaluation").glob("*.txt")
                           if not p.is_dir() and not p.name.startswith("."))
        for emo_file in emo_files:
            sources += [emo_file, session / "dialog" / "transcriptions" / emo_file.name]
            if emo_file.stem not in split_of:
                logger.warning("IEMOCAP: dialogue %s (%s) is not in the split file %s: its utterances are not "
                               "used (issues.tsv: dialogue_not_in_split); add it to a split to use it",
                               emo_file.stem, emo_file, settings["split_file"])
            rows = _dialogue_rows(name, session, emo_file, split_of.get(emo_file.stem), settings, issues, seen,
                                  media)
            if rows:
                by_dialogue[emo_file.stem] = rows
        sources += _reject_unlabelled_dialogues(session, {p.stem for p in emo_files}, issues)
    unused = sorted(k for k in settings["relabel"] if k not in RAW_LABELS and k not in settings["labels_seen"])
    if unused:  # a key that is no IEMOCAP label and no file's label: most likely a misspelling
        logger.warning("IEMOCAP: relabel key(s) %s match no label in %s (IEMOCAP's labels: %s); check their spelling",
                       unused, root, list(RAW_LABELS))
    if not by_dialogue:
        raise ManifestError(_no_rows_message(root, sessions, settings, issues))
    order = sorted(by_dialogue, key=lambda d: (SPLITS.index(split_of[d]), d))
    rows = [row for dialogue in order for row in by_dialogue[dialogue]]
    split_counts = {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS}
    # A split the split file fills and the tree leaves empty (a missing Session folder): training would choose its
    # epoch on nothing, or report no test score.
    empty = [s for s in SPLITS if not split_counts[s] and any(split == s for split in split_of.values())]
    if empty:
        wanted = sorted(d for d, s in split_of.items() if s in empty)
        found = [p.name for p in check_root(root)]
        sessions = sorted({f"Session{int(d[3:5])}" for d in wanted if d[3:5].isdigit()})
        missing = [s for s in sessions if s not in found]
        why = (f"their dialogues (e.g. {wanted[:3]}) are in {', '.join(missing)}, which {root} does not hold "
               f"(found {', '.join(found)}): restore the missing session folder(s)" if missing else
               f"none of their dialogues (e.g. {wanted[:3]}) has a labelled utterance here: check that their "
               "dialog/EmoEvaluation files are there and that `classes` / `relabel` keep some of their labels")
        raise ManifestError(
            f"IEMOCAP root {root}: the {' and '.join(empty)} split{'s' * (len(empty) > 1)} of "
            f"{split_name(settings['split_file'])} {'have' if len(empty) > 1 else 'has'} no labelled utterance; "
            f"{why}; or give a `split_file` whose train, valid and test dialogues are all in the tree")
    standard = set(settings["classes"]) == set(IEMOCAP_CLASSES) and not settings["relabel"]
    if not standard:
        logger.info("IEMOCAP: classes %s%s are not the six-class setting: the utterance counts are not compared "
                    "with the standard release", list(settings["classes"]),
                    f" with relabel {settings['relabel']}" if settings["relabel"] else "")
    checks = reference_checks({d: len(by_dialogue[d]) for d in order}, split_of, expected, split_counts, standard,
                              standard_split=Path(settings["split_file"]) == DEFAULT_SPLIT_FILE)
    differences = [c for c in checks if not c["ok"]]
    absent = next(c["missing"] for c in checks if c["check"] == "split-file dialogues present in the raw tree")
    if absent:
        logger.warning("IEMOCAP: %d dialogue(s) of the split file have no labelled utterance in %s: %s", len(absent),
                       root, absent[:10])
    if differences:
        logger.warning("IEMOCAP: %d difference(s) from the release as the split file describes it (see summary.json "
                       "checks), e.g. %s",
                       len(differences), differences[0])
    logger.info("IEMOCAP: %d utterances in %d dialogues", len(rows), len(order))
    # The packaged split file is no source: its path moves with the checkout (a moved or re-cloned project would
    # re-run the manifest), and what it says is in the rows' splits.
    own_split = [] if settings["split_file"] == DEFAULT_SPLIT_FILE else [str(settings["split_file"])]
    return ReadResult(rows_to_frame(rows), issues, settings["classes"], checks,
                      {"root": str(root), "split_file": split_name(settings["split_file"]),
                       "relabel": settings["relabel"], "sides": settings["sides"]},
                      sources=own_split + [str(p) for p in sources])
