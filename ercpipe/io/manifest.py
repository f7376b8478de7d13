"""The utterance manifest: one row per utterance, the contract between raw readers and everything else.

Format (documented in docs/manifest.md, also the "bring your own dataset" CSV format):

    dataset, split (train|valid|test), dialogue_id, utterance_index, utterance_id, speaker, speaker_slot,
    label, text, audio_path, audio_start, audio_end, video_path, video_start, video_end, flags

Times are seconds (float) inside the media file; empty start/end means the whole file. `flags` is a
';'-separated list of defect names (see FLAG_NAMES). Rows are grouped by dialogue (in the reader's
dialogue order) and sorted by utterance_index inside a dialogue.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ercpipe.errors import ErcpipeError
from ercpipe.io.atomic import atomic_path
from ercpipe.io.filekind import file_kind

COLUMNS: tuple[str, ...] = (
    "dataset", "split", "dialogue_id", "utterance_index", "utterance_id", "speaker", "speaker_slot",
    "label", "text", "audio_path", "audio_start", "audio_end", "video_path", "video_start", "video_end",
    "flags",
)
SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Defects a reader or a media step may record on a row. A flagged row stays in the manifest; the
# feature extractors turn the affected modality into zeros + present=False.
FLAG_NAMES: dict[str, str] = {
    "missing_audio": "the audio file does not exist",
    "missing_video": "the video file / clip does not exist",
    "corrupt_video": "the video file exists but cannot be decoded",
    "corrupt_audio": "the audio file exists but cannot be decoded",
    "no_audio_stream": "the clip has no audio track",
    "silent_audio": "the audio track is digital silence",
    "no_video": "the dataset has no video for this utterance",
    "empty_text": "the transcript is empty",
    "empty_speaker": "the speaker's name is empty (the dialogue's unnamed rows share one speaker slot)",
    "bad_time": "start/end times could not be parsed or are reversed",
    "overlap": "the utterance overlaps the previous one of the same speaker",
    "relabelled": "the label was mapped from another class by the configured relabelling",
    "text_fixed": "the transcript had mis-decoded characters that were repaired",
    "scattered_dialogue": "the dialogue's rows are not next to each other in the file (read in file order as one)",
}

# Flags that record what the reader noticed or repaired; the row is used as it is and nothing needs doing. The
# others cost the utterance a modality (or its times) until the raw file is fixed.
NOTED_FLAGS: tuple[str, ...] = ("overlap", "relabelled", "text_fixed", "scattered_dialogue")

_DTYPES = {
    "dataset": str, "split": str, "dialogue_id": str, "utterance_index": "int64", "utterance_id": str,
    "speaker": str, "speaker_slot": "int64", "label": str, "text": str, "audio_path": str,
    "audio_start": "float64", "audio_end": "float64", "video_path": str, "video_start": "float64",
    "video_end": "float64", "flags": str,
}


class ManifestError(ErcpipeError, ValueError):
    """A manifest (or the raw data behind it) is not usable; the message says where and what to do."""


@dataclass
class Issue:
    """One problem found while reading raw data: flagged (row kept) or rejected (row dropped, recorded)."""

    action: str  # "flagged" | "rejected"
    reason: str
    file: str = ""
    line: int | None = None
    utterance_id: str = ""
    detail: str = ""


ISSUE_COLUMNS = ("action", "reason", "utterance_id", "file", "line", "detail")


@dataclass
class IssueLog:
    issues: list[Issue] = field(default_factory=list)

    def flag(self, reason: str, **kw) -> None:
        self.issues.append(Issue("flagged", reason, **kw))

    def reject(self, reason: str, **kw) -> None:
        self.issues.append(Issue("rejected", reason, **kw))

    def frame(self) -> pd.DataFrame:
        rows = [{c: getattr(i, c) for c in ISSUE_COLUMNS} for i in self.issues]
        return pd.DataFrame(rows, columns=list(ISSUE_COLUMNS))


def add_flag(flags: str, name: str) -> str:
    if name not in FLAG_NAMES:
        raise KeyError(f"unknown flag {name!r}; known: {sorted(FLAG_NAMES)}")
    present = [f for f in flags.split(";") if f]
    if name not in present:
        present.append(name)
    return ";".join(present)


def has_flag(flags: str, name: str) -> bool:
    return name in (flags or "").split(";")


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Column order, dtypes and empty-string / NaN conventions of a manifest frame."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest lacks column(s) {missing}; required columns: {list(COLUMNS)}")
    out = df[list(COLUMNS)].copy()
    for col, dtype in _DTYPES.items():
        if dtype is str:
            out[col] = out[col].fillna("").astype(str)
        else:
            out[col] = pd.to_numeric(out[col], errors="raise").astype(dtype)
    return out.reset_index(drop=True)


def validate(df: pd.DataFrame, classes: list[str] | tuple[str, ...], source: str = "manifest") -> None:
    """Raise ManifestError naming the offending rows if the manifest breaks its invariants."""
    bad_split = df.loc[~df["split"].isin(SPLITS), "utterance_id"].tolist()
    if bad_split:
        raise ManifestError(f"{source}: split must be one of {SPLITS}; bad rows: {bad_split[:5]}")
    bad_label = df.loc[~df["label"].isin(classes), ["utterance_id", "label"]]
    if len(bad_label):
        first = bad_label.iloc[0]
        raise ManifestError(
            f"{source}: label {first['label']!r} of utterance {first['utterance_id']} is not one of the "
            f"dataset's classes {list(classes)} ({len(bad_label)} rows); fix the label or the class list")
    dup = df.loc[df["utterance_id"].duplicated(keep=False), "utterance_id"].unique().tolist()
    if dup:
        raise ManifestError(f"{source}: duplicate utterance_id(s) {dup[:5]}; each utterance needs a unique id")
    for dialogue_id, group in df.groupby("dialogue_id", sort=False):
        if group["split"].nunique() != 1:
            raise ManifestError(f"{source}: dialogue {dialogue_id} spans several splits {sorted(group['split'].unique())}")
        idx = group["utterance_index"].tolist()
        if idx != list(range(len(idx))):
            raise ManifestError(
                f"{source}: dialogue {dialogue_id} has utterance_index {idx[:10]}...; expected 0..{len(idx) - 1} "
                "in row order")
    if (df["speaker_slot"] < 0).any():
        raise ManifestError(f"{source}: speaker_slot must be >= 0")


def write(df: pd.DataFrame, path: str | Path) -> None:
    df = normalize(df)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")


def valid_split_hint(frame: pd.DataFrame) -> str:
    """How a dataset without valid rows gets them, with its config key (the manifest's `dataset` column names it)."""
    names = sorted(set(frame["dataset"])) if "dataset" in frame else []
    name = names[0] if len(names) == 1 else "<name>"
    return f"datasets.{name}.valid_split: {{fraction: 0.1, seed: 0}} holds out train dialogues"


def read(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist; build it with the manifest rule first")
    expected = ("give the manifest.tsv the pipeline wrote (features/DATASET/manifest.tsv; a dataset of your own "
                "is read from its CSV by the csv reader first, docs/manifest.md)")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ManifestError(f"manifest {path} cannot be read as a tab-separated manifest ({file_kind(path)}: "
                            f"{type(err).__name__}); {expected}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest {path} lacks column(s) {missing}; {expected}")
    for col in ("audio_start", "audio_end", "video_start", "video_end"):
        df[col] = df[col].mask(df[col] == "")  # empty = NaN (pandas 3 cannot parse the string "nan")
    df = normalize(df)
    times = df[["audio_start", "audio_end", "video_start", "video_end"]]
    infinite = times.isin([float("inf"), float("-inf")]).any(axis=1)
    if infinite.any():
        row = df[infinite].iloc[0]
        raise ManifestError(f"manifest {path}: utterance {row['utterance_id']} has an infinite time; times are seconds "
                            "or empty (the whole file)")
    return df


def write_issues(log: IssueLog, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        log.frame().to_csv(tmp, sep="\t", index=False, lineterminator="\n")


def read_issues(path: str | Path) -> IssueLog:
    """An issues.tsv written by write_issues, back as an IssueLog."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    issues = IssueLog()
    for record in frame.to_dict("records"):
        line = int(record["line"]) if record["line"] not in ("", "nan") else None
        issues.issues.append(Issue(record["action"], record["reason"], file=record["file"], line=line,
                                   utterance_id=record["utterance_id"], detail=record["detail"]))
    return issues


def dialogue_shards(df: pd.DataFrame, n_shards: int) -> list[list[str]]:
    """Split the dialogues (manifest order) into n contiguous, nearly equal groups of utterances.

    Every shard gets at least one dialogue when there are enough; extra shards are empty lists.
    """
    sizes = df.groupby("dialogue_id", sort=False).size()
    total = int(sizes.sum())
    shards: list[list[str]] = [[] for _ in range(n_shards)]
    done = 0
    for dialogue_id, size in sizes.items():
        k = min(n_shards - 1, done * n_shards // max(total, 1))
        shards[k].append(str(dialogue_id))
        done += int(size)
    return shards


def shard_rows(df: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    dialogues = set(dialogue_shards(df, n_shards)[shard])
    return df[df["dialogue_id"].isin(dialogues)]


def draw_held_out(train_dialogues: list[str], fraction: float, seed: int) -> list[str]:
    """round(fraction x train dialogues) of them (at least one, never all), drawn with
    numpy.random.default_rng(seed).choice without replacement, in their given order: the validation
    dialogues of a dataset that ships train and test only (pickles, CSV manifests)."""
    import numpy as np

    if not 0 < fraction < 1:
        raise ValueError(f"valid_split.fraction must be between 0 and 1, got {fraction}")
    if len(train_dialogues) < 2:
        raise ValueError(f"{len(train_dialogues)} train dialogue(s), too few to hold some out as valid")
    k = min(len(train_dialogues) - 1, max(1, int(round(fraction * len(train_dialogues)))))
    picked = set(np.random.default_rng(seed).choice(len(train_dialogues), size=k, replace=False).tolist())
    return [d for i, d in enumerate(train_dialogues) if i in picked]


def held_out_record(train_dialogues: list[str], fraction: float, seed: int, source: str) -> dict:
    """draw_held_out's dialogues with how they were drawn, as summary.json records a `valid_split` of
    {fraction, seed}; `source` names whose train dialogues they are ("the CSV's", "the pickle's")."""
    valid = draw_held_out(train_dialogues, fraction, seed)
    return {"protocol": "fraction", "fraction": fraction, "seed": seed, "dialogues": valid,
            "note": f"{len(valid)} of {source} {len(train_dialogues)} train dialogues drawn with "
                    f"numpy.random.default_rng({seed}).choice (without replacement)"}
