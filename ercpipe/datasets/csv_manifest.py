"""Reading CSV text the way datasets ship it, and the "bring your own dataset" CSV reader.

Text decoding (shared by every reader): UTF-8 with or without a byte-order mark; UTF-16 with a BOM
(Excel's "Unicode text"); a line that is not valid UTF-8 is decoded byte by byte as cp1252 (the
Windows encoding MELD's CSVs were partly saved in) and its rows get the `text_fixed` flag; and
mojibake -- UTF-8 bytes once mis-decoded as cp1252, e.g. "â€™" for "’" -- is repaired in text fields,
also with `text_fixed`.

The bring-your-own format is documented in docs/manifest.md. Settings (dataset config keys):

    manifest: the CSV file (required); ".tsv" files are tab-separated, anything else comma-separated
    classes: class names in label-id order (required)
    root: folder that relative audio/video paths are relative to (default: the CSV file's folder)
    probe_media: false (default) = only check that each media file exists; true = also open it and
                 decode one packet (flags corrupt_video / corrupt_audio / no_audio_stream)
    valid_split: for a CSV without valid rows: {fraction: F, seed: S} moves round(F x train dialogues),
                 drawn with numpy's default_rng(S), to valid; {dialogues: [ids]} moves these train
                 dialogues; none (default) keeps the CSV's split column as it is. Applied to the joined
                 manifest only (ercpipe.datasets.build.apply_valid_split), not to the shards
"""
from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

from ercpipe.datasets import (ReadResult, assign_speaker_slots, declared_media, flag_overlaps, flag_row, new_row,
                              number_dialogue, probes, reader_settings, rows_to_frame)
from ercpipe.io import manifest as manifest_io
from ercpipe.io.manifest import SPLITS, IssueLog, ManifestError

logger = logging.getLogger(__name__)

DEFAULTS: dict = {"manifest": None, "classes": None, "probe_media": False, "valid_split": None}

REQUIRED_COLUMNS: tuple[str, ...] = ("dialogue_id", "utterance_id", "split", "speaker", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "text", "utterance_index", "speaker_slot", "audio_path", "audio_start", "audio_end", "video_path",
    "video_start", "video_end")


# --------------------------------------------------------------------------------------------------
# Text decoding


def _cp1252_char(byte: int) -> str:
    # cp1252 leaves five byte values undefined; Windows tools map them to the same C1 code points as
    # latin-1, and so do we.
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return chr(byte)


def _cp1252_fallback(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return _cp1252_char(err.object[err.start]), err.start + 1


codecs.register_error("ercpipe_cp1252", _cp1252_fallback)


@dataclass
class DecodedText:
    text: str
    fixed_lines: set[int]  # 1-based physical lines that needed the cp1252 fallback
    encoding: str


def decode_text(raw: bytes) -> DecodedText:
    """Decode a text file's bytes (see the module docstring for what is accepted)."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return DecodedText(raw.decode("utf-16"), set(), "utf-16")
    encoding = "utf-8-sig" if raw.startswith(codecs.BOM_UTF8) else "utf-8"
    if encoding == "utf-8-sig":
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return DecodedText(raw.decode("utf-8"), set(), encoding)
    except UnicodeDecodeError:
        pass
    lines, fixed = [], set()
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("utf-8", errors="ercpipe_cp1252"))
            fixed.add(number)
    return DecodedText("\n".join(lines), fixed, encoding + "+cp1252")


def read_text(path: Path) -> DecodedText:
    """Read and decode a text file; an unreadable file is a ManifestError naming it."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ManifestError(f"cannot read {path}: {err.strerror or err}; check that it is a readable file") from err
    if b"\x00" in raw[:4096] and not raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ManifestError(f"{path} is not a text file (it holds NUL bytes); expected UTF-8 text")
    return decode_text(raw)


def _mojibake_byte(char: str) -> int | None:
    """The byte a character stood for if UTF-8 bytes were mis-decoded as cp1252, else None."""
    if ord(char) < 0x80:
        return ord(char)
    try:
        return char.encode("cp1252")[0]
    except UnicodeEncodeError:
        return ord(char) if ord(char) < 0x100 else None


def repair_mojibake(text: str) -> tuple[str, bool]:
    """Undo UTF-8 read as cp1252 ("â€™" -> "’", "Ã©" -> "é"); returns (text, whether it changed).

    Only character runs that re-encode to one complete, valid UTF-8 multi-byte sequence are replaced,
    so correctly decoded text (including a lone "é" or "’") is left alone.
    """
    if text.isascii():
        return text, False
    out: list[str] = []
    i, changed = 0, False
    while i < len(text):
        lead = _mojibake_byte(text[i])
        width = 2 if lead is not None and 0xC2 <= lead <= 0xDF else 3 if lead is not None and 0xE0 <= lead <= 0xEF \
            else 4 if lead is not None and 0xF0 <= lead <= 0xF4 else 0
        if width and i + width <= len(text):
            tail = [_mojibake_byte(c) for c in text[i + 1:i + width]]
            if all(b is not None and 0x80 <= b <= 0xBF for b in tail):
                try:
                    out.append(bytes([lead, *tail]).decode("utf-8"))
                    i += width
                    changed = True
                    continue
                except UnicodeDecodeError:
                    pass
        out.append(text[i])
        i += 1
    return "".join(out), changed


def clean_text(text: str) -> tuple[str, bool]:
    """Mojibake repaired and whitespace runs (tabs, newlines) collapsed; returns (text, repaired)."""
    repaired, changed = repair_mojibake(text)
    return re.sub(r"\s+", " ", repaired).strip(), changed


# --------------------------------------------------------------------------------------------------
# CSV records with line numbers


@dataclass
class CsvRecord:
    line: int  # physical line (1-based) where the record starts; the header is line 1
    values: dict[str, str]
    fixed: bool  # some of its bytes needed the cp1252 fallback


def read_csv_records(path: Path, required: tuple[str, ...], delimiter: str = ",") -> list[CsvRecord]:
    """Rows of a CSV file as dicts keyed by (stripped) header names, with their line numbers.

    Missing required columns, or a row with more fields than the header, are a ManifestError naming the
    file (and line).
    """
    decoded = read_text(path)
    reader = csv.reader(io.StringIO(decoded.text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path} is empty; expected a header line with columns {list(required)}") from None
    except csv.Error as err:
        raise ManifestError(f"{path}, line 1: cannot parse the header ({err})") from err
    missing = [c for c in required if c not in header]
    if missing:
        other = next((d for d in (";", "\t", ",", "|") if d != delimiter and any(d in h for h in header)), None)
        hint = (f"; the header looks {other!r}-separated, but this file is read as {delimiter!r}-separated (a .tsv "
                "name means tabs, any other name commas): save it that way" if other else "")
        raise ManifestError(f"{path}: header lacks column(s) {missing}; found {header[:20]}; required: "
                            f"{list(required)}{hint}")
    records: list[CsvRecord] = []
    previous_end = reader.line_num
    try:
        for fields in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if not any(f.strip() for f in fields):
                continue  # blank line
            if len(fields) > len(header):
                raise ManifestError(f"{path}, line {start}: {len(fields)} fields but the header has {len(header)}; "
                                    "quote fields that contain the delimiter")
            fields += [""] * (len(header) - len(fields))
            fixed = any(n in decoded.fixed_lines for n in range(start, previous_end + 1))
            records.append(CsvRecord(start, dict(zip(header, fields)), fixed))
    except csv.Error as err:
        raise ManifestError(f"{path}, line {reader.line_num}: cannot parse CSV ({err})") from err
    return records


def parse_seconds(value: str) -> float | None:
    """A time in seconds from a CSV cell: '' -> NaN (whole file), a number -> float, else None."""
    value = value.strip()
    if not value:
        return math.nan
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


# --------------------------------------------------------------------------------------------------
# Bring-your-own CSV reader


def _resolve(base: Path, value: str) -> str:
    value = value.strip()
    if not value:
        return ""
    path = Path(value)
    return str(path if path.is_absolute() else base / path)


def _check_media(row: dict, issues: IssueLog, probe_media: bool | Collection[str], media: frozenset[str]) -> None:
    from ercpipe.io.media import probe  # PyAV only when media is looked at

    if "audio" in media and not row["audio_path"]:
        flag_row(row, "missing_audio", issues, "no audio_path given")
    if "visual" in media and not row["video_path"]:
        flag_row(row, "no_video", issues, "no video_path given")
    for kind, modality in (("audio", "audio"), ("video", "visual")):
        path = row[f"{kind}_path"]
        if not path or modality not in media:
            continue
        if not Path(path).exists():
            flag_row(row, f"missing_{kind}", issues, path)
        elif probes(probe_media, path):
            info = probe(path)
            if not info.decodable:
                flag_row(row, f"corrupt_{kind}", issues, f"{path}: {info.error}")
            elif kind == "audio" and not info.has_audio:
                flag_row(row, "no_audio_stream", issues, path)


def _row_times(row: dict, record: CsvRecord, issues: IssueLog) -> None:
    for kind in ("audio", "video"):
        start = parse_seconds(record.values.get(f"{kind}_start", ""))
        end = parse_seconds(record.values.get(f"{kind}_end", ""))
        if start is None or end is None:
            flag_row(row, "bad_time", issues, f"{kind} times {record.values.get(f'{kind}_start')!r}, "
                                              f"{record.values.get(f'{kind}_end')!r} are not seconds; the whole file is used")
            start, end = (math.nan if start is None else start), (math.nan if end is None else end)
        elif math.isfinite(start) and math.isfinite(end) and end <= start:
            flag_row(row, "bad_time", issues, f"{kind} end {end} is not after start {start}")
        row[f"{kind}_start"], row[f"{kind}_end"] = start, end


def _parse_int(record: CsvRecord, column: str, path: Path) -> int | None:
    value = record.values.get(column, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ManifestError(f"{path}, line {record.line}: {column} {value!r} is not an integer") from None


def _label_hint(label: str, classes: tuple[str, ...]) -> str:
    """Why a label may not match: another case of a class name, or a class id where names are expected."""
    same = [c for c in classes if c.casefold() == label.casefold()]
    if same:
        return f" (it differs only in case from {same[0]!r}; `classes` must be spelled as the CSV spells them)"
    if label.isdigit() and int(label) < len(classes):
        return (f" (labels are class names, not ids: id {label} would be {classes[int(label)]!r} in `classes` order; "
                "write the names into the CSV)")
    return ""


def read(name: str, cfg: dict, probe: bool | Collection[str] = True) -> ReadResult:
    """Read a bring-your-own manifest CSV (docs/manifest.md) into manifest rows."""
    settings = reader_settings(cfg, DEFAULTS, "csv")
    if not settings["manifest"]:
        raise ValueError("dataset format 'csv' needs `manifest` (the CSV file; see docs/manifest.md)")
    classes = tuple(settings["classes"] or ())
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"dataset format 'csv' needs `classes`: at least two distinct class names in label-id "
                         f"order; got {list(classes)}")
    path = Path(settings["manifest"])
    if not path.is_file():
        raise ManifestError(f"manifest CSV {path} does not exist (or is not a file); point `manifest` at your "
                            "CSV (format: docs/manifest.md)")
    base = Path(cfg["root"]) if cfg.get("root") else path.parent
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    records = read_csv_records(path, REQUIRED_COLUMNS, delimiter)
    if not records:
        raise ManifestError(f"{path} has a header but no rows")
    issues = IssueLog()
    media = declared_media(cfg)
    dialogues: dict[str, list[tuple[int | None, int, dict]]] = {}
    seen: dict[str, int] = {}
    for order, record in enumerate(records):
        values = {k: v.strip() for k, v in record.values.items() if k in REQUIRED_COLUMNS}
        for column in REQUIRED_COLUMNS:
            if not values[column] and column != "speaker":
                raise ManifestError(f"{path}, line {record.line}: empty {column}; every row needs "
                                    f"{list(REQUIRED_COLUMNS)}")
        uid = values["utterance_id"]
        if uid in seen:
            raise ManifestError(f"{path}, line {record.line}: utterance_id {uid!r} already used on line {seen[uid]}; "
                                "utterance ids must be unique")
        seen[uid] = record.line
        if values["split"] not in SPLITS:
            raise ManifestError(f"{path}, line {record.line}: split {values['split']!r} is not one of {list(SPLITS)}")
        if values["label"] not in classes:
            raise ManifestError(f"{path}, line {record.line}: label {values['label']!r} of {uid} is not one of the "
                                f"configured classes {list(classes)}{_label_hint(values['label'], classes)}; fix the "
                                "label or the `classes` list")
        text, repaired = clean_text(record.values.get("text", ""))
        row = new_row(dataset=name, split=values["split"], dialogue_id=values["dialogue_id"], utterance_id=uid,
                      speaker=values["speaker"], label=values["label"], text=text,
                      audio_path=_resolve(base, record.values.get("audio_path", "")),
                      video_path=_resolve(base, record.values.get("video_path", "")),
                      _file=str(path), _line=record.line)
        slot = _parse_int(record, "speaker_slot", path)
        row["_slot"] = slot
        if slot is not None and slot < 0:
            raise ManifestError(f"{path}, line {record.line}: speaker_slot {slot} must be >= 0")
        if record.fixed or repaired:
            flag_row(row, "text_fixed", issues, "mis-decoded characters repaired")
        if not text:
            flag_row(row, "empty_text", issues)
        _row_times(row, record, issues)
        _check_media(row, issues, probe if settings["probe_media"] else False, media)
        dialogues.setdefault(values["dialogue_id"], []).append(
            (_parse_int(record, "utterance_index", path), order, row))
    rows: list[dict] = []
    for dialogue_id, entries in dialogues.items():
        given = [e[0] for e in entries]
        if any(g is not None for g in given):
            if any(g is None for g in given) or len(set(given)) != len(given):
                raise ManifestError(f"{path}: dialogue {dialogue_id}: utterance_index must be given for every row "
                                    "and be distinct within the dialogue (or left out to use file order)")
            entries.sort(key=lambda e: e[0])
        dialogue_rows = [e[2] for e in entries]
        if len({r["split"] for r in dialogue_rows}) > 1:
            raise ManifestError(f"{path}: dialogue {dialogue_id} has rows in several splits "
                                f"{sorted({r['split'] for r in dialogue_rows})}; a dialogue belongs to one split")
        number_dialogue(dialogue_rows)
        if any(r["_slot"] is None for r in dialogue_rows):
            assign_speaker_slots(dialogue_rows, dialogue_id)
        else:
            for r in dialogue_rows:
                r["speaker_slot"] = r["_slot"]
        flag_overlaps(dialogue_rows, issues, _overlap_times)
        rows.extend(dialogue_rows)
    split_record = valid_split_record(rows, settings["valid_split"], path)
    logger.info("csv %s: %d utterances in %d dialogues", path, len(rows), len(dialogues))
    return ReadResult(rows_to_frame(rows), issues, classes, [], {"source": str(path), "valid_split": split_record},
                      sources=[str(path)])


NO_VALID_HINT = ("training and fine-tuning choose their epoch on valid, so hold out train dialogues with "
                 "`valid_split: {fraction: 0.1, seed: 0}` in the dataset's config (docs/manifest.md)")


def valid_split_record(rows: list[dict], spec, path: Path) -> dict:
    """Which train dialogues `valid_split` makes valid, and how (for summary.json); a ManifestError for a spec
    the CSV cannot take. The rows keep the CSV's split: the dialogues are moved when the manifest shards are
    joined (ercpipe.datasets.build), so the extraction jobs, which read the shards, do not depend on it."""
    train = list(dict.fromkeys(r["dialogue_id"] for r in rows if r["split"] == "train"))
    has_valid = any(r["split"] == "valid" for r in rows)
    if spec is None or spec == "none":
        if has_valid:
            return {"protocol": "csv", "note": "the CSV's split column"}
        return {"protocol": "none", "note": f"{path} has no valid rows; {NO_VALID_HINT}"}
    if has_valid:
        raise ManifestError(f"{path} already has valid rows, and the dataset config also sets valid_split {spec!r}; "
                            "keep one of them (remove valid_split, or mark those rows train)")
    if isinstance(spec, dict) and "fraction" in spec:
        fraction, seed = float(spec["fraction"]), int(spec.get("seed", 0))
        try:
            record = manifest_io.held_out_record(train, fraction, seed, "the CSV's")
        except ValueError as err:
            raise ManifestError(f"{path}: valid_split {spec}: {err}") from None
    elif isinstance(spec, dict) and "dialogues" in spec:
        valid, train_set = [str(d) for d in spec["dialogues"]], set(train)
        not_train = [d for d in valid if d not in train_set]
        if not_train or not valid:
            raise ManifestError(f"{path}: valid_split.dialogues {not_train[:5] or valid} must be train dialogues of the "
                                f"CSV (its first train dialogues: {train[:5]})")
        record = {"protocol": "dialogues", "dialogues": valid, "note": "train dialogues listed in the configuration"}
    else:
        raise ValueError(f"valid_split {spec!r}: for a CSV use {{fraction: F, seed: S}}, {{dialogues: [ids]}} or none")
    return record


def _overlap_times(row: dict) -> tuple[float, float, str]:
    # Times are positions inside a media file, so only utterances cut from the same file can overlap.
    if math.isfinite(row["audio_start"]):
        return row["audio_start"], row["audio_end"], row["audio_path"]
    return row["video_start"], row["video_end"], row["video_path"]
