"""Feature-extractor benchmark: utterances per second and peak memory per extractor.

    .venv/bin/python bench/bench_features.py                 # small + large corpus, about 5 minutes on 2 cores
    .venv/bin/python bench/bench_features.py --sizes small --json bench.json

Each measurement runs one `extract_shard` call in a fresh process, so the peak resident memory
(VmHWM of that process; see process_stats.peak_rss_mb) belongs to that extractor alone and includes its imports
and models.
The time is the wall time of the call (model loading included, as in a pipeline job).

The corpus is generated here: espeak-ng speech (a synthetic harmonic signal when espeak-ng is
absent) as 16 kHz utterance WAVs with the utterance-audio step's `_report.tsv`, and one H.264 .mp4
per dialogue (640x360, 10 fps) with two faces drawn by ercpipe.synthetic.faces, one utterance every
2 s, IEMOCAP-style.
Text is measured by bench_text() from bench/bench_text.py (--no-text leaves it out).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from process_stats import comma_list, cpu_seconds, markdown_row, markdown_table, peak_rss_mb  # noqa: E402
from ercpipe.io import manifest as manifest_io  # noqa: E402
from ercpipe.io.media import SAMPLE_RATE, write_wav  # noqa: E402

SIZES = {"small": (2, 4), "large": (4, 8)}  # dialogues x utterances per dialogue
UTTERANCE_SECONDS = 2.0
VIDEO_FPS = 10
SENTENCES = [
    "I cannot believe you did that to me again",
    "Well, that is fine, we can talk about it later",
    "Oh wow, this is the best news I have heard all year",
    "Please just leave me alone for a while",
    "Why would anyone think that was a good idea",
    "I guess we will see what happens tomorrow",
]
SIDE = {"mode": "side", "sides": {"F": "left", "M": "right"}}


# ------------------------------------------------------------------------------------------ corpus

def _speech(text: str, pitch: int, tmp: Path) -> np.ndarray:
    espeak = shutil.which("espeak-ng")
    if espeak is None:  # a voiced-sounding stand-in: harmonics of a gliding F0 under an envelope
        t = np.arange(int(1.8 * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = 110 + pitch + 30 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        signal = sum(np.sin(k * phase) / k for k in range(1, 8)) * np.abs(np.sin(2 * np.pi * 2 * t))
        return (0.2 * signal).astype(np.float32)
    import soundfile as sf
    from scipy.signal import resample_poly

    raw = tmp / "espeak.wav"
    subprocess.run([espeak, "-v", "en-us", "-p", str(pitch), "-s", "190", "-w", str(raw), text], check=True)
    signal, rate = sf.read(str(raw), dtype="float32")
    return resample_poly(signal, SAMPLE_RATE, rate).astype(np.float32)


def _write_dialogue_video(path: Path, seconds: float) -> None:
    import av

    from ercpipe.synthetic.faces import FaceStyle, draw_face

    left, right = FaceStyle(skin=(228, 176, 140)), FaceStyle(skin=(150, 100, 65), hair_style="long")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for i in range(int(seconds * VIDEO_FPS)):
            img = np.full((360, 640, 3), (70, 90, 110), np.uint8)
            draw_face(img, (170 + i % 7, 180), 160, "neutral", left)
            draw_face(img, (470 - i % 5, 185), 140, "happy", right)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def make_corpus(root: Path, n_dialogues: int, per_dialogue: int) -> tuple[Path, Path]:
    """manifest.tsv + audio/ (WAVs and _report.tsv) + one video per dialogue under `root`."""
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    voices = [_speech(s, 15 + 13 * i, root) for i, s in enumerate(SENTENCES)]
    rows, report = [], []
    for d in range(n_dialogues):
        video = root / f"dialogue{d}.mp4"
        _write_dialogue_video(video, per_dialogue * UTTERANCE_SECONDS)
        for u in range(per_dialogue):
            uid = f"d{d}_u{u}"
            write_wav(audio_dir / f"{uid}.wav", voices[(d + u) % len(voices)])
            report.append({"utterance_id": uid, "status": "ok", "detail": ""})
            start = u * UTTERANCE_SECONDS
            rows.append({"dataset": "bench", "split": "train", "dialogue_id": f"d{d}", "utterance_index": u,
                         "utterance_id": uid, "speaker": "Ses01_F" if u % 2 == 0 else "Ses01_M",
                         "speaker_slot": u % 2, "label": "neu", "text": SENTENCES[(d + u) % len(SENTENCES)],
                         "audio_path": str(audio_dir / f"{uid}.wav"), "audio_start": float("nan"),
                         "audio_end": float("nan"), "video_path": str(video), "video_start": start,
                         "video_end": start + UTTERANCE_SECONDS, "flags": ""})
    pd.DataFrame(report).to_csv(audio_dir / "_report.tsv", sep="\t", index=False)
    manifest = root / "manifest.tsv"
    manifest_io.write(pd.DataFrame(rows), manifest)
    return manifest, audio_dir


# ------------------------------------------------------------------------------------------ runs

def _timed_extract(kind: str, manifest: str, audio_dir: str, settings: dict, out: str, threads: int) -> dict:
    """Runs in a fresh process: one extract_shard call; returns seconds and this process's peak RSS.

    Imports happen before the clock starts; model loading (inside extract_shard) is timed.
    """
    from ercpipe.features import ExtractionContext, extract_shard, extractor

    extractor(kind)  # imported before the clock starts
    context = ExtractionContext(audio_dir=audio_dir) if kind == "audio" else ExtractionContext(face_selection=SIDE)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    extract_shard(kind, manifest, settings, out, threads=threads, device="cpu", context=context)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds well below seconds x threads mean the process waited for a core (other load).
    from ercpipe.io.features import read

    present = int(read(out).present.sum())  # a speed number only means something if rows were found
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_start,
            "peak_rss_mb": peak_rss_mb(), "present": present}


def measure(kind: str, name: str, manifest: Path, audio_dir: Path, settings: dict, threads: int,
            out_dir: Path) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(_timed_extract, kind, str(manifest), str(audio_dir), settings,
                             str(out_dir / f"{name}_{threads}.h5"), threads).result()
    n = len(manifest_io.read(manifest))
    return {"extractor": name, "utterances": n, "threads": threads, **result,
            "utt_per_s": n / result["seconds"]}


def _text_rows(manifest: Path, threads: int) -> list[dict]:
    from bench_text import bench_text  # same folder; it checks that every transcript got features

    return bench_text(manifest, threads=threads)


EXTRACTORS = {
    "opensmile IS10": ("audio", {"feature_set": "IS10"}),
    "opensmile ComParE_2016": ("audio", {"feature_set": "ComParE_2016"}),
    "mtcnn+densenet121": ("visual", {"backbone": "densenet121", "weights": "random"}),
    "mtcnn+denseface": ("visual", {"backbone": "denseface", "weights": "random"}),
}


def run(sizes: list[str], threads_list: list[int], extractors: list[str], with_text: bool) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        for size in sizes:
            n_dialogues, per_dialogue = SIZES[size]
            root = Path(tmp) / size
            start = time.perf_counter()
            manifest, audio_dir = make_corpus(root, n_dialogues, per_dialogue)
            print(f"{size} corpus: {n_dialogues * per_dialogue} utterances, made in "
                  f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
            if with_text:
                for threads in threads_list:
                    results += [{"corpus": size, **row} for row in _text_rows(manifest, threads)]
            for name in extractors:
                kind, settings = EXTRACTORS[name]
                for threads in threads_list:
                    row = measure(kind, name, manifest, audio_dir, settings, threads, root)
                    results.append({"corpus": size, **row})
                    print(_format_row(results[-1]), file=sys.stderr)
    return results


COLUMNS = [("corpus", lambda r: r["corpus"]), ("extractor", lambda r: r["extractor"]),
           ("present/utterances",
            lambda r: f"{r['present']}/{r['utterances']}" if "present" in r else str(r["utterances"])),
           ("threads", lambda r: f"{r['threads']}"), ("seconds", lambda r: f"{r['seconds']:.1f}"),
           ("CPU seconds", lambda r: f"{r.get('cpu_seconds', float('nan')):.1f}"),
           ("utterances/s", lambda r: f"{r['utt_per_s']:.1f}"), ("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:.0f}")]


def _format_row(row: dict) -> str:
    return markdown_row(row, COLUMNS)


def table(results: list[dict]) -> str:
    return markdown_table(results, COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,large", type=comma_list(SIZES), help="comma list of " + ",".join(SIZES))
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument("--extractors", default=",".join(EXTRACTORS), type=comma_list(EXTRACTORS),
                        help="comma list of " + ",".join(EXTRACTORS))
    parser.add_argument("--no-text", action="store_true", help="skip the text extractors")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = run(args.sizes, [int(t) for t in args.threads.split(",")], args.extractors, not args.no_text)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
