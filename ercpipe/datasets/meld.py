"""MELD reader: MELD.Raw as distributed -> manifest rows.

Expected layout (the extracted MELD.Raw.tar.gz):

    {root}/train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv
    {root}/train_splits/dia{D}_utt{U}.mp4          (from train.tar.gz, unpacked inside MELD.Raw)
    {root}/dev_splits_complete/dia{D}_utt{U}.mp4   (dev.tar.gz)
    {root}/output_repeated_splits_test/dia{D}_utt{U}.mp4   (test.tar.gz)

A clip folder may also sit one level down, under the split's name ({root}/train/train_splits). A dataset with
clips (modalities audio or visual) whose clip folder is missing is an error naming the archive to unpack, or
`modalities: [text]` for a text-only run: every utterance of a split without media is never what is meant.

Rows: 7 classes (ercpipe.labels.MELD_CLASSES); split dev -> "valid"; utterance_id "train_dia0_utt0" and
dialogue_id "train_dia0" (MELD reuses dialogue numbers across its splits); dialogues in Dialogue_ID
order (train, then valid, then test), utterances in Utterance_ID order (MELD's numbering has gaps
where utterances were removed; utterance_index is renumbered 0..n-1). speaker = the CSV's name,
speaker_slot = order of first appearance in the dialogue (at most 9, the model's speaker table).
audio_path = video_path = the clip, whole file (empty start/end): the CSV times are positions in the
TV episode, used only to flag `bad_time` (unparsable or end not after start) and `overlap`.

Defective clips are kept and flagged: missing -> missing_video + missing_audio, undecodable ->
corrupt_video, no audio track -> no_audio_stream, no video track -> no_video. Silent audio is found
by the utterance-audio step (ercpipe.datasets.media_prep), which decodes the audio anyway.

Settings (dataset config keys) and defaults:

    root: the MELD.Raw folder (required)
    probe_media: true = open every clip and decode one packet (finds corrupt / track-less clips; a few
                 minutes for the real release); false = only check that each clip exists
"""
from __future__ import annotations

import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Collection

from tqdm.auto import tqdm

from ercpipe.datasets import (ReadResult, assign_speaker_slots, declared_media, flag_overlaps, flag_row,
                              missing_file_detail, new_row, number_dialogue, probes, reader_settings, rows_to_frame)
from ercpipe.datasets.csv_manifest import (CsvRecord, clean_text, read_csv_records, repair_mojibake, speaker_cell,
                                          text_fixed_detail)
from ercpipe.io.manifest import IssueLog, ManifestError
from ercpipe.labels import MELD_CLASSES

logger = logging.getLogger(__name__)

DEFAULTS: dict = {"probe_media": True}

# (MELD's split name, manifest split, CSV file, clip folder)
SPLIT_FILES: tuple[tuple[str, str, str, str], ...] = (
    ("train", "train", "train_sent_emo.csv", "train_splits"),
    ("dev", "valid", "dev_sent_emo.csv", "dev_splits_complete"),
    ("test", "test", "test_sent_emo.csv", "output_repeated_splits_test"),
)
REQUIRED_COLUMNS: tuple[str, ...] = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
MAX_SPEAKERS = 9

# The official release, for the summary's checks (differences are reported, not fatal).
REFERENCE_UTTERANCES = {"train": 9989, "valid": 1109, "test": 2610}
REFERENCE_DIALOGUES = {"train": 1038, "valid": 114, "test": 280}

# "00:16:16,059" and "0:13:42,477" (SRT style); a few rows have two fraction digits ("00:06:47,28").
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2}):(\d{2})[,.](\d{1,3})\s*$")


def parse_time(value: str) -> float | None:
    """Seconds from a MELD time stamp, or None if it cannot be parsed."""
    match = _TIME.match(value or "")
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    if int(minutes) > 59 or int(seconds) > 59:
        return None
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + float("0." + fraction)


def check_root(root: Path) -> None:
    """Raise ManifestError naming the path and what must be there if `root` is not a MELD.Raw folder."""
    expected = ", ".join(f for _, _, f, _ in SPLIT_FILES)
    if not root.is_dir():
        raise ManifestError(f"MELD root {root} does not exist; point the dataset's root at the extracted MELD.Raw "
                            f"folder (it holds {expected} and the clip folders)")
    missing = [f for _, _, f, _ in SPLIT_FILES if not (root / f).is_file()]
    if missing:
        nested = [p for p in root.iterdir() if p.is_dir() and (p / SPLIT_FILES[0][2]).is_file()]
        hint = f"; {nested[0]} looks like the MELD.Raw folder: use it as root" if nested else ""
        raise ManifestError(f"MELD root {root} lacks {missing}; expected {expected} and the clip folders "
                            f"{[c for *_, c in SPLIT_FILES]} there{hint}")


def clip_folder(root: Path, meld_split: str, clip_dir: str, name: str = "<name>") -> Path:
    """The split's clip folder: {root}/{clip_dir}, or {root}/{meld_split}/{clip_dir} when only that exists; a
    ManifestError naming the archive to unpack (or the text-only declaration) when neither does."""
    for folder in (root / clip_dir, root / meld_split / clip_dir):
        if folder.is_dir():
            return folder
    archive = root / f"{meld_split}.tar.gz"
    unpack = (f"{archive} is there: unpack it inside {root} (`tar -xzf {archive} -C {root}`)" if archive.is_file()
              else f"unpack the release's {meld_split}.tar.gz inside {root}")
    raise ManifestError(f"MELD clip folder {root / clip_dir} (the {meld_split} clips) does not exist: {unpack}. "
                        "For a run on the transcripts alone, declare the dataset text-only "
                        f"(datasets.{name}.modalities: [text]); then no clip is looked for")


def _refuse_swapped_splits(root: Path, checks: list[dict]) -> None:
    """Stop when dev and test hold each other's counts: the two CSVs were given each other's names, and the
    release's test split would choose the epochs and models."""
    found = {c["check"]: c["found"] for c in checks}
    for unit, reference in (("utterances", REFERENCE_UTTERANCES), ("dialogues", REFERENCE_DIALOGUES)):
        if (found[f"valid {unit}"], found[f"test {unit}"]) != (reference["test"], reference["valid"]):
            return
    names = {split: csv_name for _, split, csv_name, _ in SPLIT_FILES}
    raise ManifestError(f"{root / names['valid']} holds {found['valid utterances']} utterances in "
                        f"{found['valid dialogues']} dialogues and {root / names['test']} "
                        f"{found['test utterances']} in {found['test dialogues']}: the release's test and dev "
                        "counts, exchanged: the two files have each other's names. Give them back their names (as they "
                        "are, the release's test split would choose the epochs and models)")


def _int_field(record: CsvRecord, column: str, path: Path) -> int:
    value = record.values[column].strip()
    try:
        number = int(value)
    except ValueError:
        raise ManifestError(f"{path}, line {record.line}: {column} {value!r} is not an integer") from None
    if number < 0:  # ids count from 0; a negative one would order the utterance before its dialogue's first
        raise ManifestError(f"{path}, line {record.line}: {column} {value!r} is negative; the release numbers from 0")
    return number


def _split_rows(name: str, root: Path, meld_split: str, split: str, csv_name: str, clip_dir: Path,
                issues: IssueLog) -> list[list[dict]]:
    """Rows of one MELD split, grouped by dialogue, in Dialogue_ID / Utterance_ID order."""
    path = root / csv_name
    # The release writes every field of every row: a shorter one is damage, not a style.
    records = read_csv_records(path, REQUIRED_COLUMNS, whole_rows=True)
    if not records:
        raise ManifestError(f"{path} has a header but no rows; restore the release's {csv_name} (MELD's "
                            f"{meld_split} split)")
    # Times only serve to find overlapping lines (each clip is one utterance): a file without them says so once,
    # not with a bad_time row for every utterance.
    timed = {"StartTime", "EndTime"} <= records[0].values.keys()
    if not timed:
        logger.warning("MELD: %s has no StartTime / EndTime columns: overlapping lines are not looked for; restore "
                       "the release's %s to have them", path, csv_name)
    by_key: dict[tuple[int, int], tuple[CsvRecord, dict]] = {}
    for record in records:
        dialogue, utterance = _int_field(record, "Dialogue_ID", path), _int_field(record, "Utterance_ID", path)
        if (dialogue, utterance) in by_key:
            raise ManifestError(f"{path}, line {record.line}: Dialogue_ID {dialogue}, Utterance_ID {utterance} "
                                f"already appears on line {by_key[dialogue, utterance][0].line}; each utterance "
                                "must appear once")
        emotion = record.values["Emotion"].strip().lower()
        if emotion not in MELD_CLASSES:
            raise ManifestError(f"{path}, line {record.line}: emotion {record.values['Emotion']!r} is not one of "
                                f"MELD's classes {list(MELD_CLASSES)}; fix the CSV")
        text, text_repaired = clean_text(record.values["Utterance"])
        speaker, speaker_repaired = speaker_cell(record.values["Speaker"]), repair_mojibake(record.values["Speaker"])[1]
        clip = clip_dir / f"dia{dialogue}_utt{utterance}.mp4"
        row = new_row(dataset=name, split=split, dialogue_id=f"{meld_split}_dia{dialogue}",
                      utterance_id=f"{meld_split}_dia{dialogue}_utt{utterance}", speaker=speaker, label=emotion,
                      text=text, audio_path=str(clip), video_path=str(clip), _file=str(path), _line=record.line)
        if record.fixed or text_repaired or speaker_repaired:
            flag_row(row, "text_fixed", issues, text_fixed_detail(
                {"Utterance": record.values["Utterance"], "Speaker": record.values["Speaker"]}, record.fixed))
        if not text:
            flag_row(row, "empty_text", issues)
        if not speaker:  # every row of the release names its speaker: an edit or a damaged copy lost it
            flag_row(row, "empty_speaker", issues, f"{path}, line {record.line}: the Speaker cell is empty; write "
                                                   "the speaker's name (the speaker embedding tells speakers apart)")
        row["_episode"] = f"S{record.values.get('Season', '').strip()}E{record.values.get('Episode', '').strip()}"
        row["_times"] = _episode_times(row, record, issues) if timed else (math.nan, math.nan)
        by_key[dialogue, utterance] = (record, row)
    dialogues: dict[int, list[dict]] = {}
    for (dialogue, _), (_, row) in sorted(by_key.items()):
        dialogues.setdefault(dialogue, []).append(row)
    return list(dialogues.values())


def _episode_times(row: dict, record: CsvRecord, issues: IssueLog) -> tuple[float, float]:
    raw_start, raw_end = record.values.get("StartTime", ""), record.values.get("EndTime", "")
    start, end = parse_time(raw_start), parse_time(raw_end)
    if start is None or end is None:
        flag_row(row, "bad_time", issues, f"StartTime {raw_start!r} / EndTime {raw_end!r} not parsable "
                                          "(expected H:MM:SS,mmm)")
        return math.nan, math.nan
    if end <= start:
        flag_row(row, "bad_time", issues, f"EndTime {raw_end} is not after StartTime {raw_start}")
    return start, end


def _flag_clip(row: dict, info, issues: IssueLog) -> None:
    """Record what is wrong with the row's clip (ercpipe.io.media.MediaInfo or None = missing)."""
    clip = row["video_path"]
    if info is None or not info.exists:
        detail = missing_file_detail(clip, "; unpack it again from the release's archive (a few clips are absent "
                                           "from the release itself: then the utterance keeps its text only)")
        flag_row(row, "missing_video", issues, detail)
        flag_row(row, "missing_audio", issues, detail)
    elif not info.decodable:
        # The clip holds both streams: an unreadable one loses both (a text+audio config keeps only this flag).
        detail = f"{clip}: {info.error}; replace it with a complete copy from the release's archive"
        flag_row(row, "corrupt_video", issues, detail)
        flag_row(row, "corrupt_audio", issues, detail)
    else:
        if not info.has_audio:
            flag_row(row, "no_audio_stream", issues, clip)
        if not info.has_video:
            flag_row(row, "no_video", issues, clip)


def _check_clips(rows: list[dict], issues: IssueLog, probe: bool | Collection[str]) -> None:
    """Flag missing clips; open the clips `probe` selects (ercpipe.datasets.probes) and flag what is wrong."""
    opened = [row for row in rows if probes(probe, row["video_path"])]
    for row in rows:
        if not probes(probe, row["video_path"]) and not Path(row["video_path"]).is_file():
            _flag_clip(row, None, issues)
    if not opened:
        return
    from ercpipe.io.media import probe as probe_file  # PyAV only when clips are opened

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        infos = pool.map(probe_file, [row["video_path"] for row in opened])
        # tqdm first: zip stops at the first iterator to run out, and a bar that is never asked past its last
        # item never shows it (it ended at 692/693).
        for info, row in zip(tqdm(infos, total=len(opened), desc="probing MELD clips", unit="clip"), opened):
            _flag_clip(row, info, issues)


def read(name: str, cfg: dict, probe: bool | Collection[str] = True) -> ReadResult:
    """Read MELD.Raw (see the module docstring) into manifest rows; probe=False opens no clip."""
    settings = reader_settings(cfg, DEFAULTS, "meld")
    if not cfg.get("root"):
        raise ValueError("dataset format 'meld' needs `root` (the MELD.Raw folder)")
    root = Path(cfg["root"])
    check_root(root)
    issues = IssueLog()
    rows: list[dict] = []
    checks: list[dict] = []
    clips = bool(declared_media(cfg))  # a clip holds both the audio and the video; text-only: none looked for
    # Every clip folder first, so that a release whose archives are not unpacked says so before any CSV is read.
    folders = {clip_dir: clip_folder(root, meld_split, clip_dir, name) if clips else root / clip_dir
               for meld_split, _, _, clip_dir in SPLIT_FILES}
    for meld_split, split, csv_name, clip_dir in SPLIT_FILES:
        dialogues = _split_rows(name, root, meld_split, split, csv_name, folders[clip_dir], issues)
        for dialogue in dialogues:
            assign_speaker_slots(dialogue, dialogue[0]["dialogue_id"], MAX_SPEAKERS, where=f"{root / csv_name}: ")
            number_dialogue(dialogue)
            flag_overlaps(dialogue, issues, lambda r: (*r["_times"], r["_episode"]))
            rows.extend(dialogue)
        n_rows = sum(len(d) for d in dialogues)
        checks.append({"check": f"{split} utterances", "ok": n_rows == REFERENCE_UTTERANCES[split],
                       "expected": REFERENCE_UTTERANCES[split], "found": n_rows})
        checks.append({"check": f"{split} dialogues", "ok": len(dialogues) == REFERENCE_DIALOGUES[split],
                       "expected": REFERENCE_DIALOGUES[split], "found": len(dialogues)})
        logger.info("MELD %s: %d utterances in %d dialogues", meld_split, n_rows, len(dialogues))
    _refuse_swapped_splits(root, checks)
    failed = [c for c in checks if not c["ok"]]
    if failed:
        logger.warning("MELD: %d check(s) against the release failed (%s); a subset of MELD is fine, a damaged or "
                       "mixed-up copy is not (summary.json's checks)", len(failed),
                       ", ".join(f"{c['check']}: {c['found']}, expected {c['expected']}" for c in failed))
    if clips:
        _check_clips(rows, issues, probe if settings["probe_media"] else False)
    speakers = max((r["speaker_slot"] for r in rows), default=-1) + 1
    return ReadResult(rows_to_frame(rows), issues, MELD_CLASSES, checks,
                      {"root": str(root), "probe_media": settings["probe_media"], "max_speakers": speakers},
                      sources=[str(root / csv_name) for _, _, csv_name, _ in SPLIT_FILES])
