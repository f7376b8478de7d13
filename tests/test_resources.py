"""Job reservations that follow the data (ercpipe.resources), down to Snakemake evaluating them per job."""
from __future__ import annotations

import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ercpipe import resources
from ercpipe.io import manifest as manifest_io
from ercpipe.io.media import SAMPLE_RATE, write_wav

REPO = Path(__file__).resolve().parents[1]


def header_only_wav(path: Path, seconds: float, rate: int = SAMPLE_RATE) -> None:
    """A 16-bit mono WAV header announcing `seconds` of audio (no samples: only the header is read)."""
    data = int(seconds * rate) * 2
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " +
                     struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", data))


def write_manifest(path: Path, dialogues: dict[str, list[str]], **columns) -> Path:
    rows = []
    for dialogue, ids in dialogues.items():
        for index, uid in enumerate(ids):
            rows.append({"dataset": "t", "split": "test", "dialogue_id": dialogue, "utterance_index": index,
                         "utterance_id": uid, "speaker": "A", "speaker_slot": 0, "label": "neu", "text": "x",
                         "audio_path": f"/raw/{uid}.mp4", "audio_start": float("nan"), "audio_end": float("nan"),
                         "video_path": f"/raw/{uid}.mp4", "video_start": float("nan"),
                         "video_end": float("nan"), "flags": ""})
    frame = pd.DataFrame(rows)
    for column, values in columns.items():
        frame[column] = values
    manifest_io.write(frame, path)
    return path


@pytest.fixture()
def shard(tmp_path) -> tuple[Path, Path]:
    """Two dialogues: d0 (2 h, 1 h, 10 s of audio) and d1 (5 s, plus a row without a WAV)."""
    manifest = write_manifest(tmp_path / "manifest.tsv", {"d0": ["a", "b", "c"], "d1": ["d", "gone"]})
    audio_dir = tmp_path / "audio"
    for uid, seconds in {"a": 7200, "b": 3600, "c": 10, "d": 5}.items():
        header_only_wav(audio_dir / f"{uid}.wav", seconds)
    return manifest, audio_dir


def test_small_shards_get_the_rules_former_fixed_reservations(tmp_path):
    manifest = write_manifest(tmp_path / "m.tsv", {"d": ["a", "b"]}, video_start=[0.0, 2.0], video_end=[2.0, 4.0],
                              audio_start=[0.0, 2.0], audio_end=[2.0, 4.0])
    audio_dir = tmp_path / "audio"
    write_wav(audio_dir / "a.wav", np.full(2 * SAMPLE_RATE, 0.1, np.float32))
    write_wav(audio_dir / "b.wav", np.full(2 * SAMPLE_RATE, 0.1, np.float32))
    got = {m: resources.extraction_resources(manifest, 0, 1, m, 2, audio_dir=audio_dir) for m in resources.FLOORS}
    assert got == resources.FLOORS == {
        "utterance_audio": {"mem_mb": 2000, "runtime": 60}, "audio": {"mem_mb": 2000, "runtime": 120},
        "visual": {"mem_mb": 6000, "runtime": 480}, "text": {"mem_mb": 4000, "runtime": 120}}
    assert all(type(v) is int for r in got.values() for v in r.values())


def test_audio_reservation_follows_the_longest_utterances(shard):
    manifest, audio_dir = shard
    durations = resources.wav_durations(audio_dir, ["a", "b", "c", "d", "gone"])
    assert durations.tolist() == [7200.0, 3600.0, 10.0, 5.0, 0.0]  # headers only; no WAV = no audio

    def mem(threads, feature_set="IS10", shard_index=0):
        return resources.extraction_resources(manifest, shard_index, 2, "audio", threads, audio_dir=audio_dir,
                                              settings={"feature_set": feature_set})["mem_mb"]

    one, two = mem(1), mem(2)
    # 1 thread: the 2-h utterance; 2 threads: the 2-h and the 1-h one may run together.
    assert one == int(np.ceil(resources.MARGIN * (250 + 50 + 0.30 * 7200 + 2 * 3 * 1582 * 4 / 2**20)))
    assert two > one > resources.FLOORS["audio"]["mem_mb"]
    assert mem(1, "ComParE_2016") > one  # a steeper set
    assert mem(1, "emobase") == mem(1, "ComParE_2016")  # not measured: the steepest slope
    assert mem(2, shard_index=1) == resources.FLOORS["audio"]["mem_mb"]  # d1: 5 s of audio
    runtime = resources.extraction_resources(manifest, 0, 2, "audio", 1, audio_dir=audio_dir)["runtime"]
    assert runtime == resources.FLOORS["audio"]["runtime"]  # 3 h of audio: about 11 min, under the floor


def test_a_manifest_replaced_within_one_clock_tick_is_read_again(shard, tmp_path):
    """The rows of a shard were cached by the manifest's mtime: a manifest written again (temp file + rename)
    within one tick of a coarse file-system clock kept its mtime, and the old rows were served."""
    import os

    manifest, audio_dir = shard
    mtime = manifest.stat().st_mtime_ns
    before = resources.extraction_resources(manifest, 0, 2, "audio", 1, audio_dir=audio_dir)
    replacement = write_manifest(tmp_path / "new.tsv", {"d0": ["c"], "d1": ["d"]})  # d0 without its long rows
    os.utime(replacement, ns=(mtime, mtime))
    replacement.replace(manifest)
    assert manifest.stat().st_mtime_ns == mtime
    after = resources.extraction_resources(manifest, 0, 2, "audio", 1, audio_dir=audio_dir)
    assert before["mem_mb"] > after["mem_mb"] == resources.FLOORS["audio"]["mem_mb"]


@pytest.mark.parametrize("feature_set, seconds, measured_peak_mb", [
    # bench/bench_audio_memory.py on the project machine (docs/features.md), the extractor's path.
    ("IS10", 600, 342), ("eGeMAPSv02", 600, 331), ("ComParE_2016", 600, 422),
    ("IS10", 300, 270), ("ComParE_2016", 300, 304),
])
def test_model_without_margin_covers_the_measured_peaks(feature_set, seconds, measured_peak_mb):
    estimate, _ = resources.audio_estimate(pd.Series([float(seconds)]), feature_set, threads=1)
    assert measured_peak_mb <= estimate <= 2 * measured_peak_mb


def test_more_than_the_maximum_stops_naming_the_utterance(shard):
    manifest, audio_dir = shard
    message = r"audio shard 0 of .* needs about \d+ MB \(utterance a: 7200 s of audio\), more than the maximum of 3000"
    with pytest.raises(resources.ResourceLimitError, match=message + " MB; split that utterance"):
        resources.extraction_resources(manifest, 0, 2, "audio", 1, audio_dir=audio_dir, max_mem_mb=3000)


def test_missing_inputs_raise_file_not_found_naming_the_path_as_given(shard, tmp_path):
    """Snakemake shows <TBD> (and evaluates again later) only for a FileNotFoundError whose filename is
    one of the job's input paths, exactly as written in the rule."""
    manifest, audio_dir = shard
    with pytest.raises(FileNotFoundError) as err:
        resources.extraction_resources("features/nowhere/manifest.tsv", 0, 1, "text", 2)
    assert err.value.filename == "features/nowhere/manifest.tsv"
    with pytest.raises(FileNotFoundError) as err:
        resources.extraction_resources(manifest, 0, 1, "audio", 2, audio_dir=str(tmp_path / "no_shard"))
    assert err.value.filename == str(tmp_path / "no_shard")


def test_visual_memory_follows_max_frames_not_the_clip_and_text_the_rows(tmp_path):
    # The visual extractor holds at most max_frames frames per utterance, whatever its length
    # (tests/test_visual_features.py), so a 30-minute window and a whole file without times reserve the
    # same: the floor with the default settings.
    long = write_manifest(tmp_path / "long.tsv", {"d": ["a", "b"]}, video_start=[0.0, 100.0],
                          video_end=[100.0, 1900.0])
    whole = write_manifest(tmp_path / "whole.tsv", {"d": ["a"]})  # MELD: no times in the manifest
    short = write_manifest(tmp_path / "short.tsv", {"d": ["a"]}, video_start=[0.0], video_end=[2.0])
    for manifest in (long, whole, short):
        assert resources.extraction_resources(manifest, 0, 1, "visual", 1,
                                              settings={"fps": 2, "max_frames": 16})["mem_mb"] == 6000
    assert resources.MARGIN * resources.visual_estimate_mb(16, 32) < 6000
    # Many kept frames per utterance (or a large MTCNN batch) is what raises it: 400 frames of 720p.
    heavy = {"fps": 2, "max_frames": 400, "batch_size": 64}
    frame_mb = resources.FRAME_BYTES / 2**20
    expected = resources.VISUAL_BASE_MB + frame_mb * (resources.VISUAL_HELD_FRAMES * 400
                                                      + resources.VISUAL_BATCH_FRAMES * 64)
    for manifest in (long, whole, short):
        got = resources.extraction_resources(manifest, 0, 1, "visual", 1, settings=heavy)
        assert got["mem_mb"] == int(np.ceil(resources.MARGIN * expected)) > 6000
    message = r"visual shard 0 of .* \(max_frames 400, batch_size 64, 2764800 bytes per frame\).*lower max_frames"
    with pytest.raises(resources.ResourceLimitError, match=message):
        resources.extraction_resources(whole, 0, 1, "visual", 1, settings=heavy, max_mem_mb=8000)

    many = write_manifest(tmp_path / "many.tsv", {f"d{i}": [f"u{i}_{j}" for j in range(100)] for i in range(300)})
    text = resources.extraction_resources(many, 0, 1, "text", 1)
    assert text["mem_mb"] == 4000 and text["runtime"] > 120  # 30,000 rows on one thread
    assert resources.extraction_resources(many, 0, 2, "text", 1)["runtime"] < text["runtime"]  # half the rows


def test_utterance_audio_memory_is_bounded_and_time_follows_the_decoded_spans(tmp_path):
    # Windowed rows are decoded from the start of their file to audio_end (no seeking).
    manifest = write_manifest(tmp_path / "m.tsv", {"d": ["a", "b"]}, audio_start=[0.0, 86000.0],
                              audio_end=[60.0, 86400.0])
    got = resources.extraction_resources(manifest, 0, 1, "utterance_audio", 1)
    assert got["mem_mb"] == 2000  # media_prep streams every window (tests/test_audio_features.py)
    assert got["runtime"] == int(np.ceil((60 + 86460 * resources.DECODE_CPU_PER_SECOND * resources.TIME_MARGIN) / 60))


def test_unknown_modality_is_refused(shard):
    with pytest.raises(ValueError, match="modality 'audi'"):
        resources.extraction_resources(shard[0], 0, 1, "audi", 1)


SNAKEFILE = """
from ercpipe.resources import extraction_resources


def audio_resources(wc, input, threads):
    return extraction_resources(input.manifest, int(wc.shard), 2, "audio", threads, audio_dir=input.wavs,
                                settings={{"feature_set": "IS10"}})


rule all:
    input:
        expand("out/shard{{shard}}.txt", shard=[0, 1]),


rule build_manifest:
    output:
        "features/manifest.tsv",
    shell:
        "cp {source}/manifest.tsv {{output}}"


rule utterance_audio:
    input:
        "features/manifest.tsv",
    output:
        wavs=directory("features/audio/shard{{shard}}"),
    shell:
        "cp -rL {source}/audio {{output.wavs}}"


rule audio_features_shard:
    input:
        manifest="features/manifest.tsv",
        wavs="features/audio/shard{{shard}}",
    output:
        "out/shard{{shard}}.txt",
    threads: 2
    resources:
        mem_mb=lambda wc, input, threads: audio_resources(wc, input, threads)["mem_mb"],
        runtime=lambda wc, input, threads: audio_resources(wc, input, threads)["runtime"],
    shell:
        "echo {{resources.mem_mb}} {{resources.runtime}} {{threads}} > {{output}}"
"""


def test_snakemake_evaluates_input_dependent_resources_once_the_inputs_exist(shard, tmp_path):
    """Snakemake 9: `mem_mb=lambda wc, input, threads: ...` is <TBD> in a dry run before the inputs exist,
    and each job gets the value computed from its own inputs when it runs."""
    manifest, audio_dir = shard
    source = tmp_path / "source"
    source.mkdir()
    (source / "manifest.tsv").write_bytes(manifest.read_bytes())
    (source / "audio").symlink_to(audio_dir)
    work = tmp_path / "work"
    work.mkdir()
    (work / "Snakefile").write_text(textwrap.dedent(SNAKEFILE.format(source=source)))
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "2", "-d", str(work), "-s", str(work / "Snakefile")]

    dry = subprocess.run([*snakemake, "-n"], capture_output=True, text=True, cwd=work, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = re.findall(r"rule audio_features_shard:.*?resources: ([^\n]*)", dry.stdout + dry.stderr, re.S)
    assert len(planned) == 2 and all("mem_mb=<TBD>" in line and "runtime=<TBD>" in line for line in planned)

    run = subprocess.run(snakemake, capture_output=True, text=True, cwd=work, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = {k: resources.extraction_resources(manifest, k, 2, "audio", 2, audio_dir=audio_dir) for k in (0, 1)}
    for k in (0, 1):
        mem_mb, runtime, threads = (work / "out" / f"shard{k}.txt").read_text().split()
        assert (int(mem_mb), int(runtime), int(threads)) == (expected[k]["mem_mb"], expected[k]["runtime"], 2)
    assert expected[0]["mem_mb"] > expected[1]["mem_mb"] == 2000  # shard 0 holds the 2-h utterance
