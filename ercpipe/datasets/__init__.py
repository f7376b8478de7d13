"""Raw dataset readers: IEMOCAP and MELD as their owners ship them, and a user's own CSV.

Each reader (`ercpipe.datasets.iemocap.read`, `.meld.read`, `.csv_manifest.read`) turns a raw folder
into a `ReadResult`: manifest rows (ercpipe.io.manifest.COLUMNS) plus an issue log with every flagged
and rejected row. `ercpipe.datasets.build.build_manifest` validates the result and writes
manifest.tsv, issues.tsv and summary.json. This module holds what the readers share; it imports
nothing heavy. The synthetic corpus that the demo reads with these readers is ercpipe.synthetic.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import pandas as pd

from ercpipe.io.manifest import COLUMNS, IssueLog, ManifestError, add_flag
from ercpipe.labels import MODALITIES

# Keys every dataset config may carry whatever its format: they steer the pipeline (where the raw
# folder is, how many shards, how the visual extractor picks the face), not how rows are read.
PIPELINE_KEYS: frozenset[str] = frozenset({"format", "root", "face_selection", "shards", "synthetic", "modalities"})

# Dataset keys that decide only which dialogues are valid: applied when the manifest shards are joined
# (ercpipe.datasets.build.apply_valid_split), so neither the shard manifests nor the extraction jobs that
# read them depend on them.
SPLIT_KEYS: frozenset[str] = frozenset({"valid_split"})

# Dataset keys that say which face the visual extractor takes (its own param; IEMOCAP's `sides` is also
# recorded in summary.json). No manifest row depends on them: left out of the params and digests of the
# manifest jobs (shards and join), so changing them re-runs the face extraction and the summary only.
FACE_KEYS: frozenset[str] = frozenset({"face_selection", "sides"})

# Dataset keys no shard manifest depends on. Left out of a shard job's params and digest, so changing them
# re-runs no manifest shard and no text or audio extraction.
NOT_SHARD_KEYS: frozenset[str] = SPLIT_KEYS | FACE_KEYS

# What each extraction reads of a shard's rows: its columns, the flags it acts on, and its media files. A fix
# that changes nothing of a modality's view (a transcript line: not the clips; a label) re-runs the shard's
# manifest job but not that modality's extraction (rule modality_manifest_shard re-runs on these digests).
# `settings`: the reader settings that change what the extraction gets beyond the rows the digest holds (whether
# media are opened decides their corrupt / track-less flags); every other setting acts through the rows.
MODALITY_VIEWS: dict[str, dict] = {
    "text": {"columns": ("dialogue_id", "utterance_index", "utterance_id", "speaker", "text"),
             "flags": ("empty_text",), "media": (), "settings": ()},
    # No bad_time: the audio extraction reads it only for a row without audio_path, whose path column changed too
    # (IEMOCAP's sentence WAVs are whole; a fixed EmoEvaluation time re-extracted them for identical features).
    "audio": {"columns": ("dialogue_id", "utterance_index", "utterance_id", "audio_path", "audio_start", "audio_end"),
              "flags": ("missing_audio", "corrupt_audio", "no_audio_stream", "silent_audio"),
              "media": ("audio_path",), "settings": ("probe_media",)},
    "visual": {"columns": ("dialogue_id", "utterance_index", "utterance_id", "speaker", "video_path", "video_start",
                           "video_end"),
               "flags": ("missing_video", "corrupt_video", "no_video", "bad_time"), "media": ("video_path",),
               "settings": ("probe_media",)},
}

# What text fine-tuning (ercpipe.features.finetune) reads of the manifest: the rows of these splits (test never),
# these columns in manifest order, and this flag; plus the class list. Its job re-runs on their digest only
# (ercpipe.datasets.fingerprint), so a fixed test label re-runs no fine-tuning and no text extraction.
FINETUNE_VIEW: dict = {"splits": ("train", "valid"), "flags": ("empty_text",),
                       "columns": ("split", "dialogue_id", "utterance_index", "utterance_id", "speaker", "text",
                                   "label")}

# Two times closer than this (seconds) count as equal when looking for overlaps.
TIME_TOLERANCE = 1e-3


def declared_media(cfg: dict) -> frozenset[str]:
    """The media modalities ("audio", "visual") a dataset config declares (`modalities`, default all):
    a reader neither looks for nor flags the media of the others."""
    return frozenset(m for m in (cfg.get("modalities") or MODALITIES) if m != "text")


@dataclass
class ReadResult:
    """What a reader found: manifest rows in manifest order, the issues, and facts for summary.json."""

    frame: pd.DataFrame
    issues: IssueLog
    classes: tuple[str, ...]
    checks: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    # The text files the reader parsed (CSVs, transcriptions, label files, split file): the manifest
    # rule's inputs. Media files are not listed here; they are in the rows.
    sources: list[str] = field(default_factory=list)


def reader_settings(cfg: dict, defaults: dict, fmt: str) -> dict:
    """The reader's settings with defaults filled in; an unknown key is a ValueError naming it."""
    unknown = sorted(set(cfg) - set(defaults) - PIPELINE_KEYS)
    if unknown:
        raise ValueError(f"dataset format {fmt!r}: unknown setting(s) {unknown}; known: "
                         f"{sorted(set(defaults) | PIPELINE_KEYS)}")
    return {**defaults, **{k: v for k, v in cfg.items() if k in defaults}}


def probes(probe: bool | Collection[str], path: Any) -> bool:
    """Whether a reader opens the media file `path`: `probe` is True, False, or the paths to open.

    A reader always checks that a media file exists; opening it (to find corrupt or track-less files)
    is what costs. The manifest job of one shard opens only its own shard's files.
    """
    return probe if isinstance(probe, bool) else str(path) in probe


def new_row(**values: Any) -> dict:
    """A manifest row with every column present; `_file` / `_line` say where it was read from."""
    row: dict[str, Any] = {c: "" for c in COLUMNS}
    for col in ("audio_start", "audio_end", "video_start", "video_end"):
        row[col] = math.nan
    row.update(values)
    row.setdefault("_file", "")
    row.setdefault("_line", None)
    return row


def missing_file_detail(path: Any, advice: str) -> str:
    """issues.tsv's detail for a media file that is not there: "{path} does not exist{advice}", or, for a link
    whose target is gone, that (the link is what to fix, not the release)."""
    if os.path.islink(path):
        return f"{path} is a link to {os.readlink(path)}, which does not exist: fix the link or restore the file"
    return f"{path} does not exist{advice}"


def flag_row(row: dict, flag: str, issues: IssueLog, detail: str = "") -> None:
    """Add `flag` to the row and record it (with the row's file and line) in the issue log."""
    if flag in row["flags"].split(";"):
        return
    row["flags"] = add_flag(row["flags"], flag)
    issues.flag(flag, file=row["_file"], line=row["_line"], utterance_id=row["utterance_id"], detail=detail)


def flag_past_end(row: dict, kind: str, duration: float, issues: IssueLog) -> None:
    """corrupt_{kind} when the row's window starts at or after the end of its media file (`duration`
    seconds; 0 = unknown): a file cut short (an AVI loses its index with its tail, and its duration is
    then what is left) holds nothing of the utterance."""
    start = row[f"{kind}_start"]
    if duration > 0 and math.isfinite(start) and start >= duration:
        flag_row(row, f"corrupt_{kind}", issues,
                 f"{row[f'{kind}_path']} holds {duration:.2f} s and the utterance starts at {start:.2f} s: the file "
                 "looks cut short (or the times are wrong); replace it with a complete copy")


def assign_speaker_slots(rows: list[dict], dialogue_id: str, max_speakers: int | None = None,
                         where: str = "") -> None:
    """speaker_slot = order of first appearance of the speaker inside the dialogue (0, 1, ...)."""
    slots: dict[str, int] = {}
    for row in rows:
        slots.setdefault(row["speaker"], len(slots))
        row["speaker_slot"] = slots[row["speaker"]]
    if max_speakers is not None and len(slots) > max_speakers:
        raise ManifestError(
            f"{where}dialogue {dialogue_id} has {len(slots)} speakers ({', '.join(slots)}); at most "
            f"{max_speakers} are supported (the model's speaker table); merge minor speakers or drop the dialogue")


def flag_overlaps(rows: list[dict], issues: IssueLog,
                  times: Callable[[dict], tuple[float, float, str]]) -> None:
    """Flag `overlap` on rows that start before the previous utterance of the same speaker ended.

    `rows` is one dialogue in manifest order; `times(row)` gives (start, end, source): seconds (NaN if
    unknown) on the time line of `source` (a media file or an episode). Only times on the same time
    line are compared.
    """
    last_end: dict[tuple[str, str], tuple[float, str]] = {}
    for row in rows:
        start, end, source = times(row)
        key = (row["speaker"], source)
        previous = last_end.get(key)
        if previous and math.isfinite(start) and start < previous[0] - TIME_TOLERANCE:
            flag_row(row, "overlap", issues, f"starts at {start:.3f} s, before {previous[1]} of the same "
                                             f"speaker ends at {previous[0]:.3f} s")
        if math.isfinite(end):
            last_end[key] = (end, row["utterance_id"])


def rows_to_frame(rows: list[dict]) -> pd.DataFrame:
    """Manifest frame from row dicts (private `_` keys dropped)."""
    return pd.DataFrame([{c: r[c] for c in COLUMNS} for r in rows], columns=list(COLUMNS))


def number_dialogue(rows: list[dict]) -> None:
    for index, row in enumerate(rows):
        row["utterance_index"] = index
