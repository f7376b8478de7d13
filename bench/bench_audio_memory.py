"""Peak memory and time of openSMILE extraction against the utterance's duration.

    .venv/bin/python bench/bench_audio_memory.py                       # IS10, eGeMAPSv02, ComParE_2016; 10-600 s
    .venv/bin/python bench/bench_audio_memory.py --sets IS10 --seconds 10,600 --json out.json

Every point runs in a fresh process (peak RSS = that process's VmHWM, imports included):

* `process_signal`: openSMILE's own call on the whole signal (`Smile.process_signal`, which ercpipe
  used until the memory fix): the WAV read into memory, handed to openSMILE in one write.
* `ercpipe`: `ercpipe.features.audio.wav_functionals`, the extractor's call: the WAV read from disk
  in blocks and streamed into openSMILE's ring buffer.
* `shard` (with --shard): `extract_shard` on a one-utterance manifest, 1 and 2 threads, next to the
  `mem_mb` that `ercpipe.resources.extraction_resources` reserves for that shard.
* `load_audio` and `utterance_audio` (with --utterance-audio; set "-"): the utterance-audio step's
  decoding of the whole file, as `ercpipe.io.media.load_audio` + `write_wav` (what media_prep did
  until the memory fix) and as `media_prep.stream_utterance_wav` (block by block); `identical`
  compares the two WAVs byte for byte.

`identical` says whether the two vectors are bit-identical. `above base` is the peak minus the peak
after imports and the first `Smile` (what the utterance itself costs). The audio is espeak-ng speech
(several pitches, concatenated and repeated to length with sox), or a harmonic stand-in when espeak-ng
or sox is missing; the table says which.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from process_stats import cpu_seconds, markdown_row, markdown_table, peak_rss_mb  # noqa: E402  (same folder)

SENTENCES = [
    "I cannot believe you did that to me again, after everything we talked about last week.",
    "Well, that is fine, we can talk about it later when everybody has calmed down a little.",
    "Oh wow, this is the best news I have heard all year, I have to tell my sister right away.",
    "Please just leave me alone for a while, I need some time to think about what happened.",
]
SAMPLE_RATE = 16000


# ------------------------------------------------------------------------------------------ audio

def make_speech(path: Path, seconds: float, workdir: Path) -> str:
    """A 16 kHz mono PCM-16 WAV of `seconds` at `path`; returns how it was made."""
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak and sox:
        base = workdir / "speech_base.wav"
        if not base.exists():
            parts = []
            for i, (text, pitch) in enumerate(zip(SENTENCES * 2, (15, 40, 65, 90, 30, 55, 80, 20))):
                raw = workdir / f"part{i}.wav"
                subprocess.run([espeak, "-v", "en-us" if i % 2 else "en-us+f3", "-p", str(pitch), "-s", "170",
                                "-w", str(raw), text], check=True, capture_output=True)
                parts.append(str(raw))
            subprocess.run([sox, *parts, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(base)], check=True)
        length = float(subprocess.run(["soxi", "-D", str(base)], capture_output=True, text=True,
                                      check=True).stdout) if shutil.which("soxi") else 40.0
        repeats = int(np.ceil(seconds / length))
        subprocess.run([sox, str(base), str(path), "repeat", str(max(0, repeats - 1)), "trim", "0", str(seconds)],
                       check=True)
        return "espeak-ng + sox"
    import soundfile as sf

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8)) * (np.sin(2 * np.pi * 1.5 * t) > -0.3)
    noise = np.random.default_rng(0).normal(0, 0.01, t.size)
    sf.write(str(path), (0.2 * voiced + noise).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return "harmonic stand-in (espeak-ng or sox missing)"


def write_shard(root: Path, wav: Path, seconds: float) -> tuple[Path, Path]:
    """A one-utterance manifest and utterance-audio directory (WAV + _report.tsv) around `wav`."""
    import pandas as pd

    from ercpipe.io import manifest as manifest_io

    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    target = audio_dir / "u0.wav"
    if not target.exists():
        shutil.copy(wav, target)
    pd.DataFrame({"utterance_id": ["u0"], "status": ["ok"], "detail": [f"{seconds:.3f} s"]}).to_csv(
        audio_dir / "_report.tsv", sep="\t", index=False)
    manifest = root / "manifest.tsv"
    manifest_io.write(pd.DataFrame([{
        "dataset": "bench", "split": "test", "dialogue_id": "d0", "utterance_index": 0, "utterance_id": "u0",
        "speaker": "A", "speaker_slot": 0, "label": "neutral", "text": "x", "audio_path": str(wav),
        "audio_start": float("nan"), "audio_end": float("nan"), "video_path": "", "video_start": float("nan"),
        "video_end": float("nan"), "flags": ""}]), manifest)
    return manifest, audio_dir


# ------------------------------------------------------------------------------------------ one point

def child(mode: str, feature_set: str, wav: str, out: str, threads: int) -> dict:
    """One measurement in this (fresh) process."""
    if mode in ("load_audio", "utterance_audio"):
        from ercpipe.datasets.media_prep import stream_utterance_wav
        from ercpipe.io.media import load_audio, write_wav

        base = peak_rss_mb()
        start, cpu0 = time.perf_counter(), cpu_seconds()
        if mode == "load_audio":
            write_wav(out, load_audio(wav))
        else:
            stream_utterance_wav(wav, None, None, Path(out))
        return {"peak_rss_mb": peak_rss_mb(), "base_mb": base, "seconds": time.perf_counter() - start,
                "cpu_seconds": cpu_seconds() - cpu0}
    from ercpipe.features import audio

    smile = audio.make_smile({"feature_set": feature_set})
    base = peak_rss_mb()
    start, cpu0 = time.perf_counter(), cpu_seconds()
    if mode == "process_signal":
        from ercpipe.io.media import read_wav

        signal, rate = read_wav(wav)
        vector = smile.process_signal(signal, rate).to_numpy(dtype=np.float32).reshape(-1)
    elif mode == "ercpipe":
        vector = audio.wav_functionals(smile, Path(wav))
    elif mode == "shard":
        from ercpipe.features import ExtractionContext, extract_shard
        from ercpipe.io import features as feature_io

        root = Path(out).parent
        extract_shard("audio", root / "manifest.tsv", {"feature_set": feature_set}, out, threads=threads,
                      context=ExtractionContext(audio_dir=root / "audio"))
        vector = feature_io.read(out).features[0]
    else:
        raise ValueError(mode)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    if mode != "shard":
        np.save(out, vector)
    return {"peak_rss_mb": peak_rss_mb(), "base_mb": base, "seconds": seconds, "cpu_seconds": cpu}


def measure(mode: str, feature_set: str, wav: Path, out: Path, threads: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, feature_set, str(wav), str(out), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sets: list[str], durations: list[float], modes: list[str], shard: bool,
        utterance_audio: bool = False) -> tuple[list[dict], str]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_audio_memory_") as tmp:
        tmp = Path(tmp)
        source = ""
        for seconds in durations:
            wav = tmp / f"speech_{seconds:g}s.wav"
            source = make_speech(wav, seconds, tmp)
            if utterance_audio:
                outs = {m: tmp / f"{m}_{seconds:g}.wav" for m in ("load_audio", "utterance_audio")}
                for mode, out in outs.items():
                    rows.append({"set": "-", "audio_s": seconds, "mode": mode, "threads": 1,
                                 **measure(mode, "-", wav, out)})
                same = outs["load_audio"].read_bytes() == outs["utterance_audio"].read_bytes()
                for row in rows[-2:]:
                    row["identical"] = same
                    print(format_row(row), file=sys.stderr)
                for out in outs.values():
                    out.unlink()
            for feature_set in sets:
                vectors = {}
                for mode in modes:
                    out = tmp / f"{mode}_{feature_set}_{seconds:g}.npy"
                    row = {"set": feature_set, "audio_s": seconds, "mode": mode, "threads": 1,
                           **measure(mode, feature_set, wav, out)}
                    vectors[mode] = np.load(out)
                    rows.append(row)
                if len(vectors) == 2:
                    a, b = vectors.values()
                    for row in rows[-2:]:
                        row["identical"] = bool(a.shape == b.shape and np.array_equal(a, b, equal_nan=True))
                for row in rows[len(rows) - len(modes):]:
                    print(format_row(row), file=sys.stderr)
                if shard:
                    from ercpipe import resources

                    root = tmp / f"shard_{feature_set}_{seconds:g}"
                    manifest, audio_dir = write_shard(root, wav, seconds)
                    for threads in (1, 2):
                        reserved = resources.extraction_resources(manifest, 0, 1, "audio", threads,
                                                                  audio_dir=audio_dir,
                                                                  settings={"feature_set": feature_set})
                        row = {"set": feature_set, "audio_s": seconds, "mode": "shard", "threads": threads,
                               **measure("shard", feature_set, wav, root / f"out{threads}.h5", threads),
                               "mem_mb_reserved": reserved["mem_mb"], "runtime_min_reserved": reserved["runtime"]}
                        rows.append(row)
                        print(format_row(row), file=sys.stderr)
            wav.unlink()
    return rows, source


COLUMNS = [("set", lambda r: r["set"]), ("audio (s)", lambda r: f"{r['audio_s']:g}"), ("call", lambda r: r["mode"]),
           ("threads", lambda r: f"{r['threads']}"), ("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:.0f}"),
           ("above base (MB)", lambda r: f"{r['peak_rss_mb'] - r['base_mb']:.0f}"),
           ("seconds", lambda r: f"{r['seconds']:.1f}"), ("CPU seconds", lambda r: f"{r['cpu_seconds']:.1f}"),
           ("identical", lambda r: {True: "yes", False: "NO"}.get(r.get("identical"), "")),
           ("mem_mb reserved", lambda r: f"{r['mem_mb_reserved']}" if "mem_mb_reserved" in r else "")]


def format_row(row: dict) -> str:
    return markdown_row(row, COLUMNS)


def table(rows: list[dict]) -> str:
    return markdown_table(rows, COLUMNS)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, feature_set, wav, out, threads = sys.argv[2:7]
        print(json.dumps(child(mode, feature_set, wav, out, int(threads))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="IS10,eGeMAPSv02,ComParE_2016")
    parser.add_argument("--seconds", default="10,60,300,600", help="comma list of utterance durations")
    parser.add_argument("--modes", default="process_signal,ercpipe")
    parser.add_argument("--shard", action="store_true", help="also extract_shard (1, 2 threads) vs its reservation")
    parser.add_argument("--utterance-audio", action="store_true",
                        help="also the utterance-audio step's decoding (load_audio vs media_prep's streaming)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    sets = [s for s in args.sets.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    rows, source = run(sets, [float(s) for s in args.seconds.split(",")], modes, args.shard,
                       args.utterance_audio)
    print(f"audio: {source}; {os.cpu_count()} CPU(s)")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
