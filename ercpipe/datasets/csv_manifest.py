"""Reading CSV text the way datasets ship it, and the "bring your own dataset" CSV reader.

Text decoding (shared by every reader): UTF-8 with or without a byte-order mark; UTF-16 with a BOM
(Excel's "Unicode text"); a line that is not valid UTF-8 is decoded byte by byte as cp1252 (the
Windows encoding MELD's CSVs were partly saved in) and its rows get the `text_fixed` flag; mojibake --
UTF-8 bytes once mis-decoded as cp1252 or latin-1, e.g. "â€™" for "’" -- is repaired in text fields, and
so are C1 control characters standing for cp1252 punctuation (U+0092 for "’", U+0085 for "…", as in
MELD's released CSVs), also with `text_fixed` and the changes in the issue's detail. Only mojibake that
decodes to Latin-1 letters, punctuation, symbols or emoji is repaired, so correct UTF-8 text in other
languages ("Tschüß“", "JOSÉ’S") is left alone. A NUL byte anywhere is an error naming its line.

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
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

from ercpipe.datasets import (ReadResult, assign_speaker_slots, declared_media, flag_overlaps, flag_past_end,
                              flag_row, missing_file_detail, new_row, number_dialogue, probes, reader_settings,
                              rows_to_frame)
from ercpipe.io import manifest as manifest_io
from ercpipe.io.manifest import SPLITS, IssueLog, ManifestError
from ercpipe.labels import MODALITIES

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


def _binary_kind(head: bytes) -> str:
    """What a file that is not text looks like, as a clause for the message ("" when unknown)."""
    if head.startswith(b"PK\x03\x04"):
        return ": a zip archive, as an Excel .xlsx workbook is"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return ": an old Excel .xls workbook"
    if len(head) >= 8 and (head[1::2].count(0) > 0.9 * len(head[1::2]) or head[0::2].count(0) > 0.9 * len(head[0::2])):
        return ": UTF-16 text without a byte-order mark, by its every other byte"
    return ""


def read_text(path: Path) -> DecodedText:
    """Read and decode a text file; an unreadable file is a ManifestError naming it."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ManifestError(f"cannot read {path}: {err.strerror or err}; check that it is a readable file") from err
    nul = -1 if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else raw.find(b"\x00")
    if 0 <= nul < 4096:
        raise ManifestError(f"{path} is not a text file (it holds NUL bytes){_binary_kind(raw[:4096])}; expected "
                            "UTF-8 text (a spreadsheet saves it as 'CSV UTF-8')")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise ManifestError(f"{path}, line {line}: a NUL byte (byte {nul}) in a text file; remove it, or re-save "
                            "the file as UTF-8 text")
    return decode_text(raw)


def _mojibake_byte(char: str) -> int | None:
    """The byte a character stood for if UTF-8 bytes were mis-decoded as cp1252, else None."""
    if ord(char) < 0x80:
        return ord(char)
    try:
        return char.encode("cp1252")[0]
    except UnicodeEncodeError:
        return ord(char) if ord(char) < 0x100 else None


# Lead bytes whose mojibake is repaired, with their width: "Â"/"Ã" (Latin-1 letters and signs), "â"
# (punctuation and symbols U+2000-U+2FFF: ’ “ … € ™), "ð" (emoji). Other leads ("Ä", "É", "ß", "í")
# start real words in languages other than English far more often than they start mojibake.
_MOJIBAKE_LEADS: dict[int, int] = {0xC2: 2, 0xC3: 2, 0xE2: 3, 0xF0: 4}


def _c1_to_cp1252(text: str) -> str:
    # A C1 control character (U+0080-U+009F) in text is a cp1252 byte read as latin-1: U+0092 stood
    # for "’". The five bytes cp1252 leaves undefined stand for nothing and are dropped.
    def char(match: re.Match) -> str:
        mapped = _cp1252_char(ord(match.group()))
        return "" if mapped == match.group() else mapped

    return re.sub("[\x80-\x9f]", char, text)


def repair_mojibake(text: str) -> tuple[str, bool]:
    """Undo UTF-8 read as cp1252 or latin-1 ("â€™" -> "’", "Ã©" -> "é") and map C1 control characters to
    the cp1252 characters they stood for (U+0092 -> "’"); returns (text, whether it changed).

    Only character runs that re-encode to one complete, valid UTF-8 sequence with a lead byte of
    _MOJIBAKE_LEADS are replaced, so correctly decoded text (a lone "é" or "’", "Tschüß“") is left alone.
    """
    if text.isascii():
        return text, False
    out: list[str] = []
    i, changed = 0, False
    while i < len(text):
        lead = _mojibake_byte(text[i])
        width = _MOJIBAKE_LEADS.get(lead, 0) if lead is not None else 0
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
    repaired = "".join(out)
    mapped = _c1_to_cp1252(repaired)
    return mapped, changed or mapped != repaired


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def clean_text(text: str) -> tuple[str, bool]:
    """Mojibake repaired, NFC (text saved on a Mac may spell "é" as "e" + a combining accent, which a cased
    tokenizer reads as other tokens) and whitespace runs (tabs, newlines) collapsed; returns (text, repaired)."""
    repaired, changed = repair_mojibake(text)
    return _collapse(unicodedata.normalize("NFC", repaired)), changed


def text_fixed_detail(raw: dict[str, str], undecodable: bool) -> str:
    """The `text_fixed` issue's detail: what was changed in which field, so that a user can check it.
    `raw` maps field names to their text as read; `undecodable` = the line was not valid UTF-8."""
    import difflib

    changes = []
    for field, before in raw.items():
        after = repair_mojibake(before)[0]
        matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
        changes += [f"{field} {before[a:b]!r} -> {after[c:d]!r}"
                    for op, a, b, c, d in matcher.get_opcodes() if op != "equal"]
    shown = "; ".join(changes[:3]) + (f"; {len(changes) - 3} more" if len(changes) > 3 else "")
    head = "bytes that are not UTF-8 read as cp1252" if undecodable else "mis-decoded characters repaired"
    return f"{head}: {shown}" if shown else head


# --------------------------------------------------------------------------------------------------
# CSV records with line numbers


@dataclass
class CsvRecord:
    line: int  # physical line (1-based) where the record starts; the header is line 1
    values: dict[str, str]
    fixed: bool  # some of its bytes needed the cp1252 fallback


def _header_problem(header: list[str], required: tuple[str, ...], delimiter: str) -> str | None:
    """What is wrong with a header line, or None: a repeated column, or missing required columns (with a
    hint when the file is separated by another character or the names differ only in case)."""
    first: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if not name:
            continue  # unnamed columns (a spreadsheet's trailing empty ones) are not read
        if name in first:
            return (f"header names column {name!r} twice (columns {first[name]} and {number}); each column "
                    "must appear once: rename or delete one of them")
        first[name] = number
    missing = [c for c in required if c not in header]
    if not missing:
        return None
    other = next((d for d in (";", "\t", ",", "|") if d != delimiter and any(d in h for h in header)), None)
    cased = {c: h for c in missing for h in header if h.casefold() == c.casefold()}
    hint = (f"; the header looks {other!r}-separated, but this file is read as {delimiter!r}-separated (a .tsv "
            "name means tabs, any other name commas): save it that way" if other
            else f"; column names are case-sensitive: rename {', '.join(f'{h!r} to {c!r}' for c, h in cased.items())}"
            if cased else "")
    if header and header[0].strip().lower().startswith("sep="):
        hint = (f"; line 1 ({delimiter.join(header).strip()!r}) is a spreadsheet's separator line, not the header: "
                "delete it, so that the column names come first")
    return f"header lacks column(s) {missing}; found {header[:20]}; required: {list(required)}{hint}"


def _looks_like_rows(field: str, width: int, delimiter: str) -> str | None:
    # A field that runs over several lines, some of which parse as whole rows of the file, was opened by
    # a quote that was never closed: those rows were read as its text. Returns the first such line.
    for line in field.splitlines()[1:]:
        if line.count(delimiter) >= width - 1 and len(next(csv.reader([line], delimiter=delimiter), [])) == width:
            return line
    return None


# Required columns whose cell may be empty (an unknown speaker: flagged empty_speaker): a short row may lack them.
MAY_BE_EMPTY = ("speaker",)


def _short_row_problem(header: list[str], count: int, required: tuple[str, ...], whole_rows: bool) -> str | None:
    # A row with fewer fields than the header: the columns past its end are read as empty when each of them may
    # be (a writer that leaves trailing empty cells out), else the row was cut short or lost a delimiter, and
    # reading on would shift or blank a value that matters.
    absent = [name for name in header[count:] if name]
    needed = absent if whole_rows else [name for name in absent if name in required and name not in MAY_BE_EMPTY]
    if not needed:
        return None
    return (f"{count} field(s) but the header has {len(header)}: no value for {needed[:6]}; the row was cut short "
            "or lost a delimiter (a line break inside unquoted text splits a row in two): complete the row, and "
            "quote text that holds the delimiter or a line break")


def read_csv_records(path: Path, required: tuple[str, ...], delimiter: str = ",",
                     whole_rows: bool = False) -> list[CsvRecord]:
    """Rows of a CSV file as dicts keyed by (stripped) header names, with their line numbers.

    A header without the required columns or with a repeated one, a row with more (non-empty) fields
    than the header, a row too short to reach a required column (any column, with `whole_rows`), and
    broken quoting (a quote never closed, text after a closing quote) are a ManifestError naming the file
    and the line where the row starts. A shorter row that lacks only optional columns reads them as empty.
    """
    decoded = read_text(path)
    reader = csv.reader(io.StringIO(decoded.text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path} is empty; expected a header line with columns {list(required)}") from None
    except csv.Error as err:
        raise ManifestError(f"{path}, line 1: cannot parse the header ({err})") from err
    problem = _header_problem(header, required, delimiter)
    if problem:
        raise ManifestError(f"{path}: {problem}")
    records: list[CsvRecord] = []
    row_like_lines: list[tuple[int, int, str, str]] = []  # (first line, last line, column, the line)
    previous_end = reader.line_num
    start = previous_end + 1
    try:
        for fields in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if not any(f.strip() for f in fields):
                continue  # blank line
            if len(fields) > len(header):
                if any(f.strip() for f in fields[len(header):]):
                    raise ManifestError(f"{path}, line {start}: {len(fields)} fields but the header has "
                                        f"{len(header)}; quote fields that contain the delimiter")
                fields = fields[:len(header)]  # empty trailing fields, as spreadsheets write them
            if previous_end > start:
                for name, value in zip(header, fields):
                    row_like = _looks_like_rows(value, len(header), delimiter)
                    if row_like is not None:
                        row_like_lines.append((start, previous_end, name, row_like))
            if len(fields) < len(header):
                short = _short_row_problem(header, len(fields), required, whole_rows)
                if short:
                    raise ManifestError(f"{path}, line {start}: {short}")
                fields += [""] * (len(header) - len(fields))
            fixed = any(n in decoded.fixed_lines for n in range(start, previous_end + 1))
            records.append(CsvRecord(start, dict(zip(header, fields)), fixed))
    except csv.Error as err:
        start = previous_end + 1  # the reader failed inside the row after the last one it returned
        raise ManifestError(
            f"{path}, line {start}: cannot parse the row that starts on this line ({err}); check its quotes: a field "
            "that starts with a quote must end with one right before the delimiter, and a quote inside quoted text "
            "is written as two (\"\")") from err
    for start, end, name, line in row_like_lines:
        _judge_row_like_line(path, header, delimiter, records, start, end, name, line)
    return records


def _judge_row_like_line(path: Path, header: list[str], delimiter: str, records: list[CsvRecord], start: int,
                         end: int, name: str, line: str) -> None:
    """A quoted field over several lines, one of which parses as a row of the file: a quote left open swallowed
    the rows after it (a stray quote further down closed it) when that line names a dialogue or speaker of the file;
    else it is most likely text with line breaks and the delimiter in it ("Well, I have to finish" / "the report,
    by Monday."), valid CSV that was refused: read, with a warning."""
    keys = [column for column in ("dialogue_id", "speaker") if column in header]
    cells = dict(zip(header, (cell.strip() for cell in next(csv.reader([line], delimiter=delimiter)))))
    if not keys or any(cells[k] and cells[k] in {r.values.get(k, "").strip() for r in records} for k in keys):
        raise ManifestError(f"{path}, line {start}: the quoted {name} field that starts on this line runs to line "
                            f"{end} and holds what looks like a row ({line[:60]!r}): a quote on line {start} is not "
                            "closed; close it, or write a quote inside quoted text as two (\"\")")
    logger.warning("%s, line %d: the quoted %s field that starts on this line runs to line %d, and its line %r reads "
                   "like a row of the file; it is taken as text with line breaks. If a quote on line %d was left "
                   "open, close it (the rows after it are this text)", path, start, name, end, line[:60], start)


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


def _resolve(base: Path, value: str, real_base: Path | None = None) -> str:
    """The media path a CSV cell names: relative to `base`; a file that is not there under that name but is under
    the name's other Unicode form (NFC/NFD: a file copied from macOS), or relative to `real_base` (the folder a
    symlinked manifest really lives in), is taken from there, said in the log."""
    value = value.strip()
    if not value:
        return ""
    path = Path(value)
    resolved = path if path.is_absolute() else base / path
    if resolved.exists():
        return str(resolved)
    places = [(resolved, "")]
    if real_base is not None and real_base != base and not path.is_absolute():
        places.append((real_base / path, "relative to the folder the symlinked manifest is in"))
    for place, where in places:
        for form in ("NFC", "NFD"):
            candidate = Path(unicodedata.normalize(form, str(place)))
            if candidate != resolved and candidate.exists():
                why = ", ".join(w for w in (where, "" if candidate == place else "its name in another Unicode form")
                                if w)
                logger.info("csv: %s is not there; using %s (%s)", resolved, candidate, why)
                return str(candidate)
    return str(resolved)


def _missing_detail(path: str, given: str) -> str:
    """What issues.tsv says of a media file that is not there, with the likely cause when the CSV shows one."""
    if re.match(r"^[A-Za-z]:[\\/]", given) and os.sep != "\\":
        return (f"{path} does not exist: the CSV gives '{given}', a Windows drive path; write the file's path on "
                "this machine, best relative to the CSV's folder (with '/' between folders)")
    if "\\" in given and os.sep != "\\":
        return (f"{path} does not exist: the CSV gives '{given}', with '\\' as the folder separator; write '/' "
                "(it works on every system)")
    if given.startswith(("~", "$")):
        return (f"{path} does not exist: the CSV gives '{given}'; '~' and '$VARIABLES' in a CSV cell are not "
                "expanded: write the path itself, or relative to the CSV's folder")
    return missing_file_detail(path, f" (the CSV gives '{given}'); fix the path or restore the file")


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
            flag_row(row, f"missing_{kind}", issues, _missing_detail(path, row["_given"][kind]))
        elif Path(path).is_file() and Path(path).stat().st_size == 0:  # a stat, no decoding: with or without probing
            flag_row(row, f"corrupt_{kind}", issues, f"{path}: empty file (0 bytes); replace it with a complete copy")
        elif probes(probe_media, path):
            info = probe(path)
            if not info.decodable:
                flag_row(row, f"corrupt_{kind}", issues, f"{path}: {info.error}")
            elif kind == "audio" and not info.has_audio:
                flag_row(row, "no_audio_stream", issues, path)
            elif kind == "video" and not info.has_video:
                flag_row(row, "no_video", issues, f"{path}: the file has no video stream")
            else:
                flag_past_end(row, kind, info.duration, issues)


def key_cell(value: str) -> str:
    """An id, label or speaker cell as the reader keys rows by it: stripped ("joy " from a spreadsheet), and NFC (a
    name typed on another system can spell "ö" as "o" + a combining mark)."""
    return unicodedata.normalize("NFC", value.strip())


def speaker_cell(value: str) -> str:
    """A speaker's name as every reader and `ercpipe predict` key it: clean_text's (mojibake repaired, NFC, a run
    of spaces one: "Ann  Lee", "Ann Lee" and "JosÃ©" / "José" are one speaker each), stripped."""
    return clean_text(value)[0]


def _row_times(row: dict, record: CsvRecord) -> None:
    """The row's audio and video windows. What is wrong with them is kept in row["_time_problems"] as (kind, text,
    unknown window) and flagged by `_flag_bad_times`, which knows whether a file is the row's own."""
    row["_time_problems"] = []
    for kind in ("audio", "video"):
        raw_start, raw_end = record.values.get(f"{kind}_start", ""), record.values.get(f"{kind}_end", "")
        start, end = parse_seconds(raw_start), parse_seconds(raw_end)
        if start is None or end is None:
            # Never half a window: a start read as the beginning of the file would cut the wrong stretch of it.
            comma = (" (write them as seconds, e.g. 62.5 for 00:01:02.500)" if ":" in raw_start + raw_end else
                     " (write the decimal point as '.')" if "," in raw_start + raw_end else
                     " (negative: times count from the file's start)"
                     if raw_start.strip().startswith("-") or raw_end.strip().startswith("-") else "")
            row["_time_problems"].append((kind, f"{kind} times {raw_start!r}, {raw_end!r} are not seconds{comma}",
                                          True))
            start = end = math.nan
        elif math.isnan(start) != math.isnan(end):
            # Half a window: the extractors would read an empty end as the file's end (an empty start as 0),
            # which in a dialogue's recording is the other speakers' utterances.
            given, seconds, missing = ("start", start, "end") if math.isnan(end) else ("end", end, "start")
            row["_time_problems"].append((kind, f"{kind}_{given} {seconds} has no {kind}_{missing} (give both, or "
                                                f"neither for the whole file)", True))
            start = end = math.nan
        elif math.isfinite(start) and math.isfinite(end) and end <= start:
            row["_time_problems"].append((kind, f"{kind} end {end} is not after start {start}", False))
        row[f"{kind}_start"], row[f"{kind}_end"] = start, end


def _flag_bad_times(rows: list[dict], issues: IssueLog) -> None:
    """Flag bad_time, one issue per row naming each modality's problem. A row whose times could not be read takes
    its whole file only when the file is its own: from a file other rows are cut from (a dialogue's recording) the
    whole file is not the utterance, so the row gets no such media (zeros and a mask)."""
    users: dict[str, int] = {}
    for row in rows:
        for path in {row["audio_path"], row["video_path"]} - {""}:
            users[path] = users.get(path, 0) + 1
    for row in rows:
        problems = []
        for kind, text, unknown in row.pop("_time_problems", []):
            path = row[f"{kind}_path"]
            if unknown and path and users[path] > 1:
                row[f"{kind}_path"] = ""
                text += f"; {path} is shared with {users[path] - 1} other row(s), so the utterance gets no {kind}"
            elif unknown and path:
                text += f"; the whole of {path} is used"
            problems.append(text)
        if problems:
            flag_row(row, "bad_time", issues, "; ".join(problems) + "; fix the times")


def _parse_int(record: CsvRecord, column: str, path: Path) -> int | None:
    value = record.values.get(column, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ManifestError(f"{path}, line {record.line}: {column} {value!r} is not an integer") from None


def _split_hint(split: str) -> str:
    if split.casefold() in SPLITS:
        return f" (write it in lower case: {split.casefold()!r})"
    if split.casefold() in ("dev", "val", "validation", "development"):
        return " (the validation split is called 'valid' here: rename the value)"
    return ""


def _lines(rows) -> str:
    lines = [r["_line"] for r in rows]
    return ", ".join(map(str, lines[:5])) + (f", ... ({len(lines)} rows)" if len(lines) > 5 else "")


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
    if len(set(classes)) < 2:
        raise ValueError(f"dataset format 'csv' needs `classes`: at least two distinct class names in label-id "
                         f"order; got {list(classes)}")
    odd = [c for c in classes if not isinstance(c, str) or c != c.strip() or not c]
    if odd:
        raise ValueError(f"dataset format 'csv': `classes` must be names as the CSV writes them, without spaces "
                         f"around them; got {odd} (quote numbers and yes/no in YAML: ['0', '1'])")
    classes = tuple(unicodedata.normalize("NFC", c) for c in classes)
    same = [c for c in dict.fromkeys(classes) if classes.count(c) > 1]
    if same:
        given = [c for c in settings["classes"] if unicodedata.normalize("NFC", c) in same]
        if len(set(given)) < len(given):  # written the same way twice
            raise ValueError(f"dataset format 'csv': `classes` names {sorted(set(given))} more than once; give each "
                             "class once, in label-id order")
        raise ValueError(f"dataset format 'csv': `classes` entries {', '.join(map(ascii, given))} are the same "
                         "name written with different Unicode characters (equal after NFC normalization, as labels "
                         "are compared); keep one of them")
    path = Path(settings["manifest"])
    if not path.is_file():
        raise ManifestError(f"manifest CSV {path} does not exist (or is not a file); point `manifest` at your "
                            "CSV (format: docs/manifest.md)")
    base = Path(cfg["root"]) if cfg.get("root") else path.parent
    real_base = None if cfg.get("root") else path.resolve().parent
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    records = read_csv_records(path, REQUIRED_COLUMNS, delimiter)
    if not records:
        raise ManifestError(f"{path} has a header but no rows")
    header = list(records[0].values)
    # Optional columns are read by their exact name: a `Text` column would leave every row empty_text, silently.
    declared = cfg.get("modalities") or MODALITIES
    read = [c for c in OPTIONAL_COLUMNS if not c.startswith(("audio_", "video_"))
            or ("audio" in declared and c.startswith("audio_")) or ("visual" in declared and c.startswith("video_"))]
    cased = {c: h for c in read if c not in header for h in header if h.casefold() == c.casefold()}
    if cased:
        raise ManifestError(f"{path}: column names are case-sensitive: rename "
                            f"{', '.join(f'{h!r} to {c!r}' for c, h in cased.items())}")
    if "text" not in header and "text" in declared:
        raise ManifestError(f"{path} has no `text` column, but dataset {name} declares the text modality (every row "
                            f"would be empty_text); found {header[:20]}: add the transcripts as a `text` column, or "
                            "declare the modalities the dataset has, e.g. `modalities: [audio]`")
    issues = IssueLog()
    media = declared_media(cfg)
    for modality, column, flag in (("audio", "audio_path", "missing_audio"), ("visual", "video_path", "no_video")):
        if modality in media and column not in header:  # one line here, not only one flag per row in issues.tsv
            logger.warning("%s has no %s column, so every row is flagged %s in issues.tsv; if dataset %s has no "
                           "%s, declare the modalities it has (datasets.%s.modalities, e.g. [text]) and the flags "
                           "go", path, column, flag, name, modality, name)
    dialogues: dict[str, list[tuple[int | None, int, dict]]] = {}
    seen: dict[str, int] = {}
    for order, record in enumerate(records):
        values = {k: key_cell(v) for k, v in record.values.items() if k in REQUIRED_COLUMNS}
        values["speaker"] = speaker_cell(values["speaker"])
        speaker_repaired = repair_mojibake(record.values["speaker"])[1]
        for column in REQUIRED_COLUMNS:
            if not values[column] and column != "speaker":
                raise ManifestError(f"{path}, line {record.line}: empty {column}; every row needs "
                                    f"{list(REQUIRED_COLUMNS)}")
        for column in ("dialogue_id", "utterance_id"):
            if any(sep in values[column] for sep in ("/", "\\")) or values[column] in (".", ".."):
                raise ManifestError(f"{path}, line {record.line}: {column} {values[column]!r} contains a path "
                                    "separator (ids name files of the pipeline); replace '/' and '\\' in the ids, "
                                    "e.g. by '_'")
        uid = values["utterance_id"]
        if uid in seen:
            raise ManifestError(f"{path}, line {record.line}: utterance_id {uid!r} already used on line {seen[uid]}; "
                                "utterance ids must be unique")
        seen[uid] = record.line
        if values["split"] not in SPLITS:
            raise ManifestError(f"{path}, line {record.line}: split {values['split']!r} is not one of {list(SPLITS)}"
                                f"{_split_hint(values['split'])}")
        if values["label"] not in classes:
            raise ManifestError(f"{path}, line {record.line}: label {values['label']!r} of {uid} is not one of the "
                                f"configured classes {list(classes)}{_label_hint(values['label'], classes)}; fix the "
                                "label or the `classes` list")
        text, repaired = clean_text(record.values.get("text", ""))
        try:
            media_paths = {f"{kind}_path": _resolve(base, record.values.get(f"{kind}_path", ""), real_base)
                           for kind in ("audio", "video")}
        except PermissionError as err:  # a folder on the way to a media file the user may not enter
            raise ManifestError(f"{path}, line {record.line}: cannot look at {err.filename}: permission denied; make "
                                "it readable (e.g. chmod a+rx for a folder) and run again") from None
        row = new_row(dataset=name, split=values["split"], dialogue_id=values["dialogue_id"], utterance_id=uid,
                      speaker=values["speaker"], label=values["label"], text=text, **media_paths,
                      _file=str(path), _line=record.line,
                      _given={kind: record.values.get(f"{kind}_path", "").strip() for kind in ("audio", "video")})
        slot = _parse_int(record, "speaker_slot", path)
        row["_slot"] = slot
        if slot is not None and slot < 0:
            raise ManifestError(f"{path}, line {record.line}: speaker_slot {slot} must be >= 0")
        if record.fixed or repaired or speaker_repaired:
            flag_row(row, "text_fixed", issues, text_fixed_detail(
                {"text": record.values.get("text", ""), "speaker": record.values["speaker"]}, record.fixed))
        if not text:
            flag_row(row, "empty_text", issues)
        if not values["speaker"]:  # kept, and said: the dialogue's unnamed rows are one speaker to the model
            flag_row(row, "empty_speaker", issues, f"{path}, line {record.line}: the speaker cell is empty; " + (
                "speaker_slot tells the speakers apart, but a context with speakers shows no name" if slot is not None
                else f"the rows of dialogue {values['dialogue_id']} without a speaker share one speaker slot") +
                ": write the speaker's name (or an id, e.g. unknown1) if it is known")
        _row_times(row, record)
        _check_media(row, issues, probe if settings["probe_media"] else False, media)
        dialogues.setdefault(values["dialogue_id"], []).append(
            (_parse_int(record, "utterance_index", path), order, row))
    rows: list[dict] = []
    scattered: list[str] = []
    for dialogue_id, entries in dialogues.items():
        lines = _lines(e[2] for e in entries)
        where = f"{path}: dialogue {dialogue_id} (lines {lines})"
        given = [e[0] for e in entries]
        if any(g is not None for g in given):
            if any(g is None for g in given) or len(set(given)) != len(given):
                raise ManifestError(f"{where}: utterance_index must be given for every row and be distinct within "
                                    "the dialogue (or left out to use file order)")
            entries.sort(key=lambda e: e[0])
        elif entries[-1][1] - entries[0][1] != len(entries) - 1:
            scattered.append(dialogue_id)
            detail = (f"dialogue {dialogue_id}'s rows are on lines {lines}, with other dialogues' rows between them; "
                      "they are read as one dialogue in file order. If the id was reused for two conversations, give "
                      "them different dialogue_ids")
            for entry in entries:  # in issues.tsv too: a reused id merges two conversations into one context
                flag_row(entry[2], "scattered_dialogue", issues, detail)
        dialogue_rows = [e[2] for e in entries]
        if len({r["split"] for r in dialogue_rows}) > 1:
            raise ManifestError(f"{where} has rows in several splits {sorted({r['split'] for r in dialogue_rows})}; "
                                "a dialogue belongs to one split. If each split numbers its dialogues from 0 (as "
                                "MELD does), make the ids unique, e.g. with the split as a prefix (train_dia0, "
                                "test_dia0)")
        number_dialogue(dialogue_rows)
        slots = [r["_slot"] for r in dialogue_rows]
        if any(s is None for s in slots) and any(s is not None for s in slots):
            raise ManifestError(f"{where}: speaker_slot is given for some rows and not for others; give it for every "
                                "row of the dialogue, or for none (then slots follow the speakers' first appearance)")
        if slots[0] is None:
            assign_speaker_slots(dialogue_rows, dialogue_id)
        else:
            for r in dialogue_rows:
                r["speaker_slot"] = r["_slot"]
        flag_overlaps(dialogue_rows, issues, _overlap_times)
        rows.extend(dialogue_rows)
    _flag_bad_times(rows, issues)
    if scattered:
        logger.warning("csv %s: the rows of %d dialogue(s) are not next to each other in the file (e.g. %s); they "
                       "are read as one dialogue each, in file order. If an id was reused for two conversations, "
                       "give them different dialogue_ids", path, len(scattered), scattered[:5])
    unwindowed = [r["utterance_id"] for r in rows if r["audio_path"] and r["audio_path"] == r["video_path"]
                  and math.isfinite(r["audio_start"]) and not math.isfinite(r["video_start"])]
    if unwindowed and "visual" in media:
        logger.warning("csv %s: %d row(s) (e.g. %s) give audio_start/audio_end for a file that is also their "
                       "video_path, and no video times: their faces are taken from the whole file. Give video_start/"
                       "video_end (the same times) to take them from the utterance", path, len(unwindowed),
                       unwindowed[:5])
    used = {r["label"] for r in rows}
    unused = [c for c in classes if c not in used]
    if unused:
        logger.warning("csv %s: class(es) %s of `classes` label no row", path, unused)
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
        if set(valid) == train_set:
            raise ManifestError(f"{path}: valid_split.dialogues lists all {len(train)} train dialogues, which would "
                                "leave none to train on; list only some of them")
        record = {"protocol": "dialogues", "dialogues": valid, "note": "train dialogues listed in the configuration"}
    else:
        raise ValueError(f"valid_split {spec!r}: for a CSV use {{fraction: F, seed: S}}, {{dialogues: [ids]}} or none")
    return record


def _overlap_times(row: dict) -> tuple[float, float, str]:
    # Times are positions inside a media file, so only utterances cut from the same file can overlap.
    if math.isfinite(row["audio_start"]):
        return row["audio_start"], row["audio_end"], row["audio_path"]
    return row["video_start"], row["video_end"], row["video_path"]
