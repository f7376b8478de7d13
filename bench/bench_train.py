"""Training benchmark: SDT-VEGA (official configuration) on IEMOCAP-shaped random data.

    .venv/bin/python bench/bench_train.py                       # CPU: check + 1 epoch + 3 reference steps
    .venv/bin/python bench/bench_train.py --epochs 3 --ref-steps 14 --json bench_train.json
    .venv/bin/python bench/bench_train.py --device cuda         # GPU, fp16 autocast (default when CUDA exists)
    .venv/bin/python bench/bench_train.py --whole-run --epochs 6 --threads 2   # the whole run_training job

--whole-run times what a pipeline job costs: run_training (the `official` preset) in a fresh process on
feature files written beforehand (--run-dialogues train/valid/test dialogues of the IEMOCAP shape), from
process start to metrics.json: imports, loading, every epoch, the resume-state writes, the final
evaluation and model.pt. It reports wall time, peak RSS and the bytes the training process wrote to disk
(/proc/self/io write_bytes), in all and per epoch, next to the model's own size (fp32 weights).

Data: 151 dialogues / 7433 utterances (120 train / 5810, 31 test / 1623, like IEMOCAP), widths
1024 / 1582 / 342, 6 classes, 2 speaker slots, 35 random unit anchor images per class (k = 512).
Model and optimization: the `official` preset (d = 768, 4 heads, batch 9 dialogues, AdamW, all losses,
10 % feature masking).

Steps:
1. check: the library forward (padded batch, fused attention) and the eager reference of
   ercpipe/testing/reference_sdt_vega.py (per-dialogue Python loop, explicit softmax attention) give the same
   logits, loss and gradients on a few dialogues (eval mode, center anchors), or the benchmark stops;
2. library: full training epochs + one evaluation pass over the test split;
3. reference: the same training step done by the eager reference, for --ref-steps batches.
Each measurement runs in a fresh process, so its peak resident memory (ru_maxrss) is its own; on GPU the
peak allocated CUDA memory is reported too. "cpu s/step" is process CPU time (user + system), which is
less disturbed than wall time when other jobs share the machine (use --threads 1 to compare work).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ercpipe.model import ModelSpec, SDTVegaLoss, build_model, count_parameters  # noqa: E402
from ercpipe.model.batch import Dialogue, collate  # noqa: E402
from ercpipe.model.inference import autocast_context, eval_batches, run_eval  # noqa: E402
from ercpipe.testing.reference_sdt_vega import reference_forward  # noqa: E402
from ercpipe.train.data import batches, mask_feature_dims  # noqa: E402
from ercpipe.train.presets import preset  # noqa: E402

DIMS = {"text": 1024, "audio": 1582, "visual": 342}
SPLITS = {"train": (120, 5810), "test": (31, 1623)}
N_CLASSES, N_SPEAKERS, CLIP_DIM, IMAGES_PER_CLASS = 6, 2, 512, 35


def lengths(n_dialogues: int, n_utterances: int, rng: np.random.Generator) -> list[int]:
    """Random dialogue lengths (about 15-80, mean 48 as in IEMOCAP) summing exactly to n_utterances."""
    raw = rng.uniform(20, 110, n_dialogues)
    out = np.maximum(1, np.round(raw / raw.sum() * n_utterances)).astype(int)
    out[np.argmax(out)] += n_utterances - out.sum()
    return out.tolist()


def make_data(seed: int = 0) -> dict[str, list[Dialogue]]:
    rng = np.random.default_rng(seed)
    data = {}
    for split, (n_dialogues, n_utterances) in SPLITS.items():
        dialogues = []
        for k, n in enumerate(lengths(n_dialogues, n_utterances, rng)):
            ids = [f"{split}{k}_{i}" for i in range(n)]
            dialogues.append(Dialogue(
                f"{split}{k}", split, ids,
                {m: torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32)) for m, d in DIMS.items()},
                {m: torch.ones(n, dtype=torch.bool) for m in DIMS},
                torch.from_numpy(rng.integers(0, N_CLASSES, n)), torch.from_numpy(rng.integers(0, N_SPEAKERS, n))))
        data[split] = dialogues
    return data


def make_model(cfg: dict, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    m = cfg["model"]
    spec = ModelSpec(DIMS, N_CLASSES, N_SPEAKERS, hidden_dim=m["hidden_dim"], n_heads=m["n_heads"],
                     dropout=m["dropout"],
                     mask_fill=m["attention_mask_fill"], head_layers=m["head_layers"], head_dropout=m["head_dropout"],
                     clip_dim=CLIP_DIM, clip_proj_dropout=m["clip_proj_dropout"], p_random_anchor=m["p_random_anchor"])
    model = build_model(spec)
    rng = np.random.default_rng(seed + 1)
    images = []
    for _ in range(N_CLASSES):
        x = rng.standard_normal((IMAGES_PER_CLASS, CLIP_DIM)).astype(np.float32)
        images.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    model.set_anchors(np.stack([x.mean(0) for x in images]), images)
    return model.to(device)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ workers

def worker_check(args, device) -> dict:
    """Library vs eager reference: logits, loss and gradients (eval mode, so no dropout)."""
    cfg = preset("official")
    model = make_model(cfg, device).eval()
    dialogues = make_data()["test"][: args.check_dialogues]
    loss_fn = SDTVegaLoss(cfg["loss"], np.linspace(1, 2, N_CLASSES).astype(np.float32))
    batch = collate(dialogues).to(device)
    out = model(batch.features, batch.speakers, batch.mask)
    loss, _ = loss_fn(model, out, batch.labels, batch.mask)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    dev_dialogues = [Dialogue(d.dialogue_id, d.split, d.utterance_ids, {m: t.to(device) for m, t in d.features.items()},
                              d.present, d.labels.to(device), d.speakers.to(device)) for d in dialogues]
    ref = reference_forward(model, dev_dialogues, model.anchor_bank(sample=False))
    labels = torch.cat([d.labels for d in dev_dialogues]).unsqueeze(0)
    ref_loss, _ = loss_fn(model, ref, labels, torch.ones_like(labels, dtype=torch.bool))
    ref_grads = torch.autograd.grad(ref_loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    mask = batch.mask
    diffs = {f"logits_{h}": float((out["logits"][h][mask] - ref["logits"][h][0]).abs().max()) for h in out["logits"]}
    diffs.update({f"anchor_logits_{h}": float((out["anchor_logits"][h][mask] - ref["anchor_logits"][h][0]).abs().max())
                  for h in out["anchor_logits"]})
    diffs["loss"] = abs(float(loss) - float(ref_loss))
    # Relative difference of the whole gradient vector. (Per parameter it is meaningless for gradients that
    # are zero in exact arithmetic, e.g. the attention key biases: softmax ignores a per-query constant.)
    pairs = [(g.flatten(), r.flatten()) for g, r in zip(grads, ref_grads) if g is not None and r is not None]
    flat_g, flat_r = torch.cat([g for g, _ in pairs]), torch.cat([r for _, r in pairs])
    grad_rel = float((flat_g - flat_r).norm() / flat_r.norm())
    ok = all(torch.allclose(out["logits"][h][mask], ref["logits"][h][0], rtol=1e-4, atol=1e-4) for h in out["logits"])
    ok &= all(torch.allclose(out["anchor_logits"][h][mask], ref["anchor_logits"][h][0], rtol=1e-3, atol=2e-3)
              for h in out["anchor_logits"])
    ok &= math.isclose(float(loss), float(ref_loss), rel_tol=1e-4) and grad_rel < 1e-3
    return {"mode": "check", "ok": bool(ok), "max_abs_diff": diffs, "max_grad_rel_diff": grad_rel,
            "utterances": int(mask.sum())}


def _train_step(model, loss_fn, optimizer, scaler, batch, cfg, device, reference: bool) -> None:
    batch = mask_feature_dims(batch, cfg["train"]["feature_mask_ratio"])
    if reference:
        dialogues = [Dialogue(d_id, "train", u_ids,
                              {m: batch.features[m][i, : len(u_ids)].to(device) for m in DIMS}, {},
                              batch.labels[i, : len(u_ids)].to(device), batch.speakers[i, : len(u_ids)].to(device))
                     for i, (d_id, u_ids) in enumerate(zip(batch.dialogue_ids, batch.utterance_ids))]
        out = reference_forward(model, dialogues, model.anchor_bank(sample=True), training=True)
        labels = torch.cat([d.labels for d in dialogues]).unsqueeze(0)
        loss, _ = loss_fn(model, out, labels, torch.ones_like(labels, dtype=torch.bool))
    else:
        batch = batch.to(device)
        with autocast_context(device, cfg["train"]["amp"]):
            out = model(batch.features, batch.speakers, batch.mask)
            loss, _ = loss_fn(model, out, batch.labels, batch.mask)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def worker_train(args, device, reference: bool) -> dict:
    cfg = preset("official")
    if reference:
        cfg["train"]["amp"] = "off"  # the eager reference runs in fp32
    data = make_data()
    model = make_model(cfg, device).train()
    loss_fn = SDTVegaLoss(cfg["loss"], np.ones(N_CLASSES, dtype=np.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["train"]["lr"], weight_decay=cfg["train"]["weight_decay"],
                                  fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg["train"]["amp"] == "fp16")
    bs = cfg["train"]["batch_size"]
    steps_per_epoch = math.ceil(len(data["train"]) / bs)
    torch.manual_seed(1)
    # warm-up step (allocator, kernels), not timed
    _train_step(model, loss_fn, optimizer, scaler, next(batches(data["train"], bs, True)), cfg, device, reference)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {"mode": "reference" if reference else "library", "device": str(device),
              "amp": cfg["train"]["amp"] if device.type == "cuda" else "off", "threads": torch.get_num_threads(),
              "parameters": count_parameters(model), "steps_per_epoch": steps_per_epoch}
    if reference:
        steps = 0
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for batch in batches(data["train"], bs, True):
            if steps == args.ref_steps:
                break
            _train_step(model, loss_fn, optimizer, scaler, batch, cfg, device, True)
            steps += 1
        _sync(device)
        per_step = (time.perf_counter() - start) / steps
        result.update(steps=steps, s_per_step=per_step, s_per_epoch=per_step * steps_per_epoch,
                      cpu_s_per_step=(time.process_time() - cpu_start) / steps)
    else:
        epoch_times = []
        cpu_start = time.process_time()
        for _ in range(args.epochs):
            _sync(device)
            start = time.perf_counter()
            for batch in batches(data["train"], bs, True):
                _train_step(model, loss_fn, optimizer, scaler, batch, cfg, device, False)
            _sync(device)
            epoch_times.append(time.perf_counter() - start)
        cpu_train = time.process_time() - cpu_start
        eval_start = time.perf_counter()
        run_eval(model, eval_batches(data["test"], cfg["train"]["eval_batch_size"]), device, cfg["train"]["amp"],
                 loss_fn)
        _sync(device)
        result.update(steps=args.epochs * steps_per_epoch, s_per_epoch=float(np.mean(epoch_times)),
                      s_per_step=float(np.mean(epoch_times)) / steps_per_epoch, epoch_times=epoch_times,
                      cpu_s_per_step=cpu_train / (args.epochs * steps_per_epoch),
                      eval_s=time.perf_counter() - eval_start,
                      utterances_per_s=SPLITS["train"][1] / float(np.mean(epoch_times)))
    result["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


# ------------------------------------------------------------------------------------------ whole run

def write_run_files(root: Path, n_dialogues: tuple[int, int, int], seed: int = 0) -> dict:
    """Manifest, feature files and anchor file of an IEMOCAP-shaped random corpus (as the pipeline gives them)."""
    import pandas as pd

    from ercpipe import anchors as anchor_io
    from ercpipe.io import features as feature_io
    from ercpipe.io import manifest as manifest_io
    from ercpipe.labels import IEMOCAP_CLASSES, canonical_emotion

    rng = np.random.default_rng(seed)
    classes = list(IEMOCAP_CLASSES)
    rows = []
    for split, n in zip(("train", "valid", "test"), n_dialogues):
        for k, length in enumerate(lengths(n, n * 48, rng)):
            for j in range(length):
                slot = int(rng.integers(2))
                rows.append(dict(dataset="bench", split=split, dialogue_id=f"{split}_d{k:03d}", utterance_index=j,
                                 utterance_id=f"{split}_d{k:03d}_u{j:03d}", speaker="MF"[slot], speaker_slot=slot,
                                 label=classes[int(rng.integers(len(classes)))], text="", audio_path="",
                                 audio_start=np.nan, audio_end=np.nan, video_path="", video_start=np.nan,
                                 video_end=np.nan, flags=""))
    frame = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    manifest_io.write(frame, root / "manifest.tsv")
    (root / "summary.json").write_text(json.dumps({"classes": classes}))
    ids = frame["utterance_id"].tolist()
    features = {}
    for m, d in DIMS.items():
        features[m] = str(root / f"{m}.h5")
        feature_io.write(features[m], feature_io.FeatureSet(
            ids, rng.standard_normal((len(ids), d), dtype=np.float32), np.ones(len(ids), dtype=bool),
            {"modality": m, "extractor": "synthetic", "model": "none", "settings": {"seed": seed}}))
    names = [canonical_emotion(c) for c in classes]
    images = {}
    for name in names:
        x = rng.standard_normal((IMAGES_PER_CLASS, CLIP_DIM)).astype(np.float32)
        images[name] = x / np.linalg.norm(x, axis=1, keepdims=True)
    anchor_io.write(root / "anchors.h5", anchor_io.AnchorSet(
        class_names=names, centers=np.stack([images[n].mean(0) for n in names]).astype(np.float32),
        image_features=images, image_paths={n: [] for n in names}, clip_model="synthetic-clip", pretrained=None,
        dim=CLIP_DIM))
    return {"manifest": str(root / "manifest.tsv"), "features": features, "anchors": str(root / "anchors.h5")}


def io_write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def worker_run(args, device: str) -> dict:
    """run_training end to end in this (fresh) process; the files were written by the driver."""
    from ercpipe.train import run_training

    files = json.loads(args.run_files)
    experiment = {"preset": "official", "train": {"epochs": args.epochs, "patience": None}}
    if args.checkpoint_every:
        experiment["train"]["checkpoint_every"] = args.checkpoint_every
    written_before = io_write_bytes()
    metrics = run_training(files["manifest"], files["features"], files["anchors"], experiment, 0, args.run_out,
                           device=device, threads=args.threads)
    written = io_write_bytes() - written_before
    return {"mode": "whole run", "device": device, "threads": torch.get_num_threads(),
            "epochs": metrics["protocol"]["epochs_run"], "parameters": metrics["n_parameters"],
            "model_mib": metrics["n_parameters"] * 4 / 2**20,
            "s_per_epoch_logged": metrics["seconds_per_epoch"], "written_mib": written / 2**20,
            "written_mib_per_epoch": written / 2**20 / metrics["protocol"]["epochs_run"],
            "peak_rss_mib": peak_rss_mib(), "test_weighted_f1": metrics["test"]["weighted_f1"]}


def whole_run(args, device: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        files = write_run_files(Path(tmp) / "data", tuple(args.run_dialogues))
        cmd = [sys.executable, __file__, "--worker", "run", "--device", device, "--epochs", str(args.epochs),
               "--run-files", json.dumps(files), "--run-out", str(Path(tmp) / "run")]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.checkpoint_every:
            cmd += ["--checkpoint-every", str(args.checkpoint_every)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"whole-run worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def whole_run_table(r: dict) -> str:
    head = f"{'mode':<10} {'device':<6} {'thr':>3} {'epochs':>6} {'wall s':>7} {'s/epoch (log)':>13} " \
           f"{'RSS MiB':>8} {'written MiB':>11} {'MiB/epoch':>9} {'model MiB':>9}"
    return "\n".join([head, "-" * len(head),
                      f"{r['mode']:<10} {r['device']:<6} {r['threads']:>3} {r['epochs']:>6} {r['wall_s']:>7.1f} "
                      f"{r['s_per_epoch_logged']:>13.2f} {r['peak_rss_mib']:>8.0f} {r['written_mib']:>11.0f} "
                      f"{r['written_mib_per_epoch']:>9.0f} {r['model_mib']:>9.0f}"])


# ------------------------------------------------------------------------------------------ driver

def run_worker(mode: str, args, device: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--device", device, "--epochs", str(args.epochs),
           "--ref-steps", str(args.ref_steps), "--check-dialogues", str(args.check_dialogues)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {mode} on {device} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = f"{'mode':<10} {'device':<6} {'amp':<5} {'thr':>3} {'steps':>5} {'s/step':>8} {'cpu s/step':>10} " \
           f"{'s/epoch':>9} " \
           f"{'eval s':>7} {'utt/s':>7} {'RSS MiB':>8} {'CUDA MiB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['mode']:<10} {r['device']:<6} {r['amp']:<5} {r['threads']:>3} {r['steps']:>5} "
                     f"{r['s_per_step']:>8.3f} {r['cpu_s_per_step']:>10.3f} {r['s_per_epoch']:>9.2f} "
                     f"{r.get('eval_s', float('nan')):>7.2f} "
                     f"{SPLITS['train'][1] / r['s_per_epoch']:>7.1f} {r['peak_rss_mib']:>8.0f} "
                     f"{r.get('peak_cuda_mib', float('nan')):>9.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda")
    parser.add_argument("--epochs", type=int, default=1, help="library training epochs to time")
    parser.add_argument("--ref-steps", type=int, default=3, help="training steps to time with the eager reference")
    parser.add_argument("--check-dialogues", type=int, default=3, help="dialogues for the library/reference check")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-reference", action="store_true", help="time the library only")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--whole-run", action="store_true",
                        help="time the whole run_training job (startup, epochs, checkpoints, final evaluation)")
    parser.add_argument("--run-dialogues", type=int, nargs=3, default=[30, 8, 8], metavar=("TRAIN", "VALID", "TEST"),
                        help="dialogues per split for --whole-run (48 utterances each on average)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="train.checkpoint_every for --whole-run (default: the preset's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--run-files", help=argparse.SUPPRESS)
    parser.add_argument("--run-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    if args.worker == "run":
        print(json.dumps(worker_run(args, device)))
        return
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        dev = torch.device(device)
        result = worker_check(args, dev) if args.worker == "check" else \
            worker_train(args, dev, reference=args.worker == "reference")
        print(json.dumps(result))
        return
    print(f"SDT-VEGA official configuration on IEMOCAP-shaped random data; device {device}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)
    if args.whole_run:
        result = whole_run(args, device)
        print(whole_run_table(result))
        if args.json:
            args.json.write_text(json.dumps({"whole_run": result}, indent=2) + "\n")
        return
    check = run_worker("check", args, device)
    print(f"check library vs eager reference ({check['utterances']} utterances): "
          f"{'OK' if check['ok'] else 'MISMATCH'}; max |diff| {max(check['max_abs_diff'].values()):.2e}, "
          f"max relative gradient diff {check['max_grad_rel_diff']:.2e}", flush=True)
    if not check["ok"]:
        raise SystemExit(f"library and reference disagree: {check}")
    rows = [run_worker("library", args, device)]
    if not args.skip_reference:
        rows.append(run_worker("reference", args, device))
    print(table(rows))
    if len(rows) == 2:
        print(f"library speed-up over the eager reference per training step: wall "
              f"{rows[1]['s_per_step'] / rows[0]['s_per_step']:.2f}x, CPU time "
              f"{rows[1]['cpu_s_per_step'] / rows[0]['cpu_s_per_step']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"check": check, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
