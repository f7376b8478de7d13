"""Text-extractor benchmark: utterances per second and peak memory of `text.extract_shard`.

    .venv/bin/python bench/bench_text.py                       # 512 synthetic utterances, 1 and 2 threads
    .venv/bin/python bench/bench_text.py --n 2000 --threads 2 --json text.json

`bench_text(manifest, threads=...)` is also called by bench/bench_features.py on its corpus. Each
measurement runs in a fresh process, so its peak resident memory (VmHWM, see
process_stats.peak_rss_mb) belongs to that extractor alone (imports and model included).
`load_seconds` is the first model load in that process (cold: transformers imports its model code
lazily, 2-4 s here); `seconds` is then one extract_shard call, its own (warm) model load and the HDF5
write included.

Extractors: "minilm" (packaged all-MiniLM-L6-v2, mean pooling), "minilm ctx2" (the same with two
previous utterances as context), "tiny" (a random-init 32-wide, 3-layer RoBERTa built here: the
cost of the machinery around the model); on request "large-shape random" (roberta-large's shape with
random weights and a small vocabulary, cls pooling: the paper setting's speed, which does not depend
on the weight values).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from process_stats import comma_list, markdown_row, markdown_table, peak_rss_mb  # noqa: E402  (same folder)
from ercpipe.io import manifest as manifest_io  # noqa: E402

WORDS = ("i you we they really never always think know feel want said told going maybe today tomorrow "
         "again please sorry great terrible fine okay why what where when how this that there here home work "
         "love hate time money call back right now later just about something nothing everything").split()

EXTRACTORS: dict[str, dict] = {
    "minilm": {"model": "packaged:minilm"},
    "minilm ctx2": {"model": "packaged:minilm", "context": {"previous": 2}},
    "tiny": {"model": "TINY"},  # replaced by the directory write_tiny_roberta makes
    "large-shape random": {"model": "LARGE", "pooling": "cls"},  # roberta-large's shape, random weights
}
DEFAULT_EXTRACTORS = ("minilm", "minilm ctx2", "tiny")
# Model directories made here: write_tiny_roberta arguments.
BUILT_MODELS = {"TINY": {}, "LARGE": {"hidden_size": 1024, "layers": 24, "heads": 16, "intermediate_size": 4096}}


def synthetic_manifest(path: Path, n: int, per_dialogue: int = 16, seed: int = 0) -> Path:
    """n utterances of 3-25 random words in dialogues of `per_dialogue`."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        d, u = divmod(i, per_dialogue)
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))).capitalize() + "."
        rows.append({"dataset": "bench", "split": "train", "dialogue_id": f"d{d}", "utterance_index": u,
                     "utterance_id": f"d{d}_u{u}", "speaker": "A" if u % 2 else "B", "speaker_slot": u % 2,
                     "label": "neu", "text": sentence, "audio_path": "", "audio_start": float("nan"),
                     "audio_end": float("nan"), "video_path": "", "video_start": float("nan"),
                     "video_end": float("nan"), "flags": ""})
    manifest_io.write(pd.DataFrame(rows), path)
    return path



def _timed_extract(manifest: str, settings: dict, out: str, threads: int) -> dict:
    """In a fresh process: load the model once (timed as load_seconds: transformers imports its model
    code lazily, so this is the cold start), then time one extract_shard call (its own model load
    included); CPU seconds of that call and this process's peak RSS."""
    import gc

    import torch

    from ercpipe.features import extract_shard, text
    from ercpipe.io.features import read

    torch.set_num_threads(threads)
    start = time.perf_counter()
    text.TextEncoder(settings, device="cpu")
    load_seconds = time.perf_counter() - start
    gc.collect()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start, start = usage.ru_utime + usage.ru_stime, time.perf_counter()
    extract_shard("text", manifest, settings, out, threads=threads, device="cpu")
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_start,
            "load_seconds": load_seconds, "peak_rss_mb": peak_rss_mb(), "present": int(read(out).present.sum())}


def bench_text(manifest: Path, threads: int = 1, extractors: list[str] | None = None,
               batch_size: int = 32) -> list[dict]:
    """One row per extractor: extractor, utterances, threads, seconds, cpu_seconds, utt_per_s, peak_rss_mb."""
    from ercpipe.testing.tiny_models import write_tiny_roberta

    frame = manifest_io.read(manifest)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_text_") as tmp:
        built: dict[str, Path] = {}
        for name in extractors or list(DEFAULT_EXTRACTORS):
            settings = {**EXTRACTORS[name], "batch_size": batch_size}
            key = settings["model"]
            if key in BUILT_MODELS:
                if key not in built:
                    built[key] = write_tiny_roberta(Path(tmp) / key, frame["text"].tolist(), **BUILT_MODELS[key])
                settings["model"] = str(built[key])
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                result = pool.submit(_timed_extract, str(manifest), settings,
                                     str(Path(tmp) / f"{name.replace(' ', '_')}_{threads}.h5"), threads).result()
            # Every row with a transcript must have features: a bench of an extractor that drops rows is no bench.
            expected = int((frame["text"].astype(str).str.strip() != "").sum())
            if result["present"] != expected:
                raise SystemExit(f"text {name}: {result['present']} of {len(frame)} utterances have features, "
                                 f"{expected} have a transcript")
            rows.append({"extractor": f"text {name}", "utterances": len(frame), "threads": threads, **result,
                         "utt_per_s": len(frame) / result["seconds"]})
            print(_format_row(rows[-1]), file=sys.stderr)
    return rows


COLUMNS = [("extractor", lambda r: r["extractor"]), ("utterances", lambda r: f"{r['utterances']}"),
           ("threads", lambda r: f"{r['threads']}"), ("cold load (s)", lambda r: f"{r['load_seconds']:.1f}"),
           ("seconds", lambda r: f"{r['seconds']:.1f}"), ("CPU seconds", lambda r: f"{r['cpu_seconds']:.1f}"),
           ("utterances/s", lambda r: f"{r['utt_per_s']:.0f}"), ("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:.0f}")]


def _format_row(row: dict) -> str:
    return markdown_row(row, COLUMNS)


def table(rows: list[dict]) -> str:
    return markdown_table(rows, COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512, help="synthetic utterances")
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument("--extractors", default=",".join(DEFAULT_EXTRACTORS), type=comma_list(EXTRACTORS),
                        help="comma list of " + ",".join(EXTRACTORS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_text_corpus_") as tmp:
        manifest = synthetic_manifest(Path(tmp) / "manifest.tsv", args.n)
        for threads in [int(t) for t in args.threads.split(",")]:
            rows += bench_text(manifest, threads=threads, extractors=args.extractors,
                               batch_size=args.batch_size)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
