"""Utterance audio: one 16 kHz mono WAV per utterance of a dialogue shard, plus a status report.

For each row of the shard, [audio_start, audio_end) of audio_path (the whole file when the times are
empty) is decoded to 16 kHz mono (the samples of ercpipe.io.media.load_audio) and written to
out_dir/{utterance_id}.wav.
out_dir/_report.tsv has one line per row: utterance_id, status, detail, where status is

    ok               the WAV was written
    missing_audio    no audio_path, or the file does not exist
    no_audio_stream  the file has no audio track
    corrupt_audio    the file cannot be decoded
    silent_audio     the window decodes to nothing or to digital silence

A row that is not ok gets no WAV (the audio extractor then stores zeros with present=False); no row is
ever left out of the report. A row the reader flagged missing_audio, no_audio_stream or corrupt_audio (e.g. a
WAV cut short, which decodes to part of the utterance without an error) is not decoded. The directory is
built under a temporary name and renamed when complete.

Memory does not grow with the utterance: each window is decoded and written block by block
(`stream_utterance_wav`), giving exactly the samples of ercpipe.io.media.load_audio, which holds
the decoded window whole, twice (about 0.14 MB per second of it); a window late in a long file is decoded from
a seek shortly before it, not from the file's start.
Nothing is cut: the whole window is written.
"""
from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm.auto import tqdm

from ercpipe.io import manifest as manifest_io
from ercpipe.errors import DISK_FULL
from ercpipe.io.atomic import WriteFailedError, atomic_dir, write_failed
from ercpipe.io.media import (SAMPLE_RATE, SILENCE_PEAK, MediaError, empty_window_problem, iter_audio, probe,
                              require_readable, sndfile_write_error)
from ercpipe.runlog import worker_context

logger = logging.getLogger(__name__)

REPORT_NAME = "_report.tsv"
STATUSES: tuple[str, ...] = ("ok", "missing_audio", "no_audio_stream", "corrupt_audio", "silent_audio", "bad_time")


# What the dataset's reader found wrong with a row's audio file: the row gets no WAV (zeros and present = False),
# as a flagged video gets no faces. A WAV cut short decodes without an error, to part of the utterance.
READER_AUDIO_FLAGS: tuple[str, ...] = ("missing_audio", "no_audio_stream", "corrupt_audio")


def utterance_audio(row, out_dir: Path) -> tuple[str, str]:
    """Write one utterance's WAV into out_dir; returns (status, detail)."""
    flagged = [f for f in READER_AUDIO_FLAGS if manifest_io.has_flag(row.flags, f)]
    if flagged:
        return flagged[0], f"{row.audio_path or 'no audio_path'}: flagged {flagged[0]} by the dataset's reader " \
                           "(issues.tsv says why); fix the file to use it"
    if not row.audio_path and manifest_io.has_flag(row.flags, "bad_time"):  # a shared recording it cannot be cut from
        return "bad_time", "no usable times to cut the audio (issues.tsv says why)"
    if not row.audio_path:
        return "missing_audio", "the manifest row has no audio_path"
    wav = out_dir / f"{row.utterance_id}.wav"
    if Path(row.audio_path).is_file() and Path(row.audio_path).stat().st_size == 0:
        return "corrupt_audio", f"{row.audio_path}: empty file (0 bytes)"
    if Path(row.audio_path).is_file():
        require_readable(row.audio_path)  # stop: a chmod fixes it without a new mtime, so zeros would stay
    try:
        samples, peak, mean = stream_utterance_wav(row.audio_path, row.audio_start, row.audio_end, wav)
    except MediaError as err:
        return err.reason, str(err)
    except WriteFailedError:  # the WAV could not be written (a full disk): the job's problem, not the recording's
        raise
    except (OSError, ValueError, UnicodeDecodeError) as err:
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise write_failed(wav, wav, err) from err
        # PyAV raises these (not FFmpegError) for some damaged containers and headers.
        return "corrupt_audio", f"{row.audio_path}: {type(err).__name__}: {err}"
    if samples == 0 or peak < SILENCE_PEAK:  # ercpipe.io.media.is_silent
        wav.unlink(missing_ok=True)
        problem = empty_window_problem(row.audio_path, row.audio_start, row.audio_end, "audio") if samples == 0 \
            else None
        if problem:
            return problem
        window = "" if math.isnan(row.audio_start) and math.isnan(row.audio_end) else \
            f" in [{row.audio_start}, {row.audio_end}) s"
        what = "no samples" if samples == 0 else "digital silence"
        return "silent_audio", f"{row.audio_path}{window}: {what}"
    seconds = samples / SAMPLE_RATE
    detail = f"{seconds:.3f} s"
    if not math.isnan(row.audio_start) and not math.isnan(row.audio_end) \
            and seconds < row.audio_end - row.audio_start - 0.1:
        # Kept (the utterance's start is there), but said: the times may be wrong, or the file cut short.
        detail += (f": the window [{row.audio_start}, {row.audio_end}) s runs past the end of {row.audio_path} "
                   f"({probe(row.audio_path).duration:.2f} s); check its times")
    return "ok", "; ".join([detail, *_level_notes(peak, mean)])


# A recording's mean level beyond this (in full scale) is a shifted zero line, not speech: IS10's energy features
# follow it (a DC offset of 0.3 moved the IS10 vector further than any lossy codec did).
DC_OFFSET = 0.05


def _level_notes(peak: float, mean: float) -> list[str]:
    """What the WAV's levels say about the recording, for the report's detail (the row keeps its audio)."""
    notes = []
    if peak > 1.0:  # a float recording, or a decoder's overshoot: the 16-bit WAV holds at most full scale
        notes.append(f"peak {peak:.2f} beyond full scale, clipped in the 16-bit WAV (the loudest stretches' "
                     "features change; lower the recording's gain to keep them)")
    if abs(mean) > DC_OFFSET:
        notes.append(f"DC offset {mean:+.2f} of full scale (the zero line is shifted, and the energy features with "
                     "it; remove it, e.g. `sox in.wav out.wav highpass 10`)")
    return notes


def stream_utterance_wav(path, start: float | None, end: float | None, out_path: Path,
                         sample_rate: int = SAMPLE_RATE) -> tuple[int, float, float]:
    """Write the [start, end) window of the first audio stream of `path` to `out_path` (mono, 16-bit PCM)
    about a second at a time; returns (samples written, peak |amplitude|, mean amplitude) of the samples before
    their conversion to 16 bits. No file is left behind on an error. The samples are those of
    ercpipe.io.media.load_audio(path, start, end).
    """
    written, peak, total = 0, 0.0, 0.0
    sink = None
    pending: list[np.ndarray] = []  # decoded blocks are small: write about a second at a time

    def flush() -> None:
        nonlocal written, peak, total, sink
        if not pending:
            return
        block = np.concatenate(pending)
        pending.clear()
        if sink is None:
            sink = sf.SoundFile(str(out_path), "w", samplerate=sample_rate, channels=1, subtype="PCM_16",
                                format="WAV")
        sink.write(block)
        written += block.size
        peak = max(peak, float(np.max(np.abs(block))))
        total += float(np.sum(block, dtype=np.float64))

    try:
        try:
            try:
                for block in iter_audio(path, start, end, sample_rate):
                    pending.append(block)
                    if sum(x.size for x in pending) >= sample_rate:
                        flush()
                flush()
            finally:
                if sink is not None:
                    sink.close()
        except sf.LibsndfileError as err:  # only the sink is libsndfile's (PyAV decodes)
            raise sndfile_write_error(Path(out_path), Path(out_path), err) from err
    except BaseException:
        Path(out_path).unlink(missing_ok=True)
        raise
    return written, peak, total / written if written else 0.0


def write_utterance_audio(manifest_path, shard: int, n_shards: int, out_dir: Path, threads: int = 1) -> None:
    """WAVs and _report.tsv for the dialogues of one shard (ercpipe.io.manifest.shard_rows)."""
    rows = manifest_io.shard_rows(manifest_io.read(manifest_path), shard, n_shards)
    # The pipeline gives each job its shard's own manifest (shard 0 of 1): name the file, not a shard number.
    where = str(manifest_path) if n_shards == 1 else f"{manifest_path} (shard {shard} of {n_shards})"
    logger.info("utterance audio of %s: %d utterances, %d thread(s)", where, len(rows), threads)
    with atomic_dir(out_dir) as tmp:
        records = [SimpleNamespace(**record) for record in rows.to_dict("records")]
        write = partial(utterance_audio, out_dir=tmp)
        if int(threads) > 1:
            # Processes: decoding runs in PyAV's Python loop, and two threads took longer than one (200 AAC clips:
            # 4.3 s against 3.8 s; two processes 2.2 s).
            with ProcessPoolExecutor(max_workers=int(threads), mp_context=worker_context()) as pool:
                results = list(tqdm(pool.map(write, records, chunksize=4), total=len(records),
                                    desc="utterance audio", unit="utt"))
        else:
            results = [write(record) for record in tqdm(records, desc="utterance audio", unit="utt")]
        report = pd.DataFrame({"utterance_id": rows["utterance_id"].tolist(),
                               "status": [status for status, _ in results],
                               "detail": [detail for _, detail in results]})
        report.to_csv(tmp / REPORT_NAME, sep="\t", index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    counts = Counter(report["status"])
    failed = {s: n for s, n in counts.items() if s != "ok"}
    if failed:
        logger.warning("utterance audio of %s: %d of %d rows without audio: %s", where, sum(failed.values()),
                       len(rows), failed)
    logger.info("utterance audio of %s: wrote %d WAV(s) to %s", where, counts.get("ok", 0), out_dir)
