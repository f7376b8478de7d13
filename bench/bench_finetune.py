"""Fine-tuning benchmark: seconds per training step of the packaged MiniLM, batches grouped by length or not.

    .venv/bin/python bench/bench_finetune.py                                  # synthetic corpus, 2 threads
    .venv/bin/python bench/bench_finetune.py --manifest features/meld/manifest.tsv --threads 1

Times `--steps` optimizer steps (forward, backward, AdamW) of the model fine-tuning trains
(ercpipe.features.finetune: encoder + linear head), on batches that `_epoch_batches` draws with
group_by_length true and false, without context and with two previous utterances + speaker names
(max_length 128). The first two steps of each measurement are a warm-up and are not timed. Rows:
seconds per step, the epoch time that implies for the corpus's train rows, and the share of padded
tokens in the timed batches. Inputs and labels are built by fine-tuning's own `_split_inputs`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_text import synthetic_manifest  # noqa: E402  (same folder)

CONTEXTS = {"none": ({}, 64), "previous 2 + speaker names": ({"previous": 2, "speaker_names": True}, 128)}
WARMUP_STEPS = 2


def bench_finetune(manifest: Path, threads: int, steps: int, batch_size: int) -> list[dict]:
    import torch

    from ercpipe.features import finetune, text
    from ercpipe.io import manifest as manifest_io

    torch.set_num_threads(threads)
    rows = manifest_io.read(manifest)
    rows = rows[rows["split"] == "train"].reset_index(drop=True)
    classes = finetune._classes(rows, manifest)
    out = []
    for context_name, (context, max_length) in CONTEXTS.items():
        encoder = text.TextEncoder({"model": text.PACKAGED_MINILM, "pooling": "mean", "context": context,
                                    "max_length": max_length, "normalize": False, "dtype": "fp32"}, "cpu")
        # The inputs and labels fine-tuning itself builds (empty transcripts left out the same way).
        inputs, labels = finetune._split_inputs(encoder, rows, classes)[0]["train"]
        lengths = [len(x.ids) for x in inputs]
        if len(lengths) <= (WARMUP_STEPS + 1) * batch_size:
            raise SystemExit(f"{manifest}: {len(lengths)} train utterances are too few to time "
                             f"{WARMUP_STEPS} warm-up steps and one more of batch {batch_size}")
        model = finetune._Classifier(encoder, len(classes), 0.1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        model.train()
        for group in (False, True):
            batches = finetune._epoch_batches(lengths, batch_size, group, torch.Generator().manual_seed(0))
            timed = batches[WARMUP_STEPS:WARMUP_STEPS + steps]
            for n, batch in enumerate(batches[:WARMUP_STEPS + steps]):
                if n == WARMUP_STEPS:
                    started = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model([inputs[i] for i in batch]),
                                                         torch.from_numpy(labels[batch]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            per_step = (time.perf_counter() - started) / len(timed)
            padded = sum(len(b) * max(lengths[i] for i in b) for b in timed)
            real = sum(lengths[i] for b in timed for i in b)
            out.append({"context": context_name, "group_by_length": group, "threads": threads,
                        "mean_tokens": sum(lengths) / len(lengths), "seconds_per_step": per_step,
                        "epoch_minutes": per_step * len(batches) / 60, "train_utterances": len(inputs),
                        "padding_share": 1 - real / padded})
    return out


def table(rows: list[dict]) -> str:
    head = ("| context | group_by_length | threads | mean tokens | s / step | epoch (min) | train utterances | "
            "padded tokens |\n|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['context']} | {str(r['group_by_length']).lower()} | {r['threads']} | {r['mean_tokens']:.1f} | "
             f"{r['seconds_per_step']:.2f} | {r['epoch_minutes']:.1f} | {r['train_utterances']} | "
             f"{100 * r['padding_share']:.0f} % |" for r in rows]
    return "\n".join([head] + lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, help="a manifest with train rows (default: synthetic corpus)")
    parser.add_argument("--n", type=int, default=2000, help="synthetic train utterances")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        manifest = args.manifest or synthetic_manifest(Path(tmp) / "manifest.tsv", args.n)
        print(table(bench_finetune(manifest, args.threads, args.steps, args.batch_size)))


if __name__ == "__main__":
    main()
