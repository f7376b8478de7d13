"""Training benchmark: SDT-VEGA (official configuration) on IEMOCAP-shaped random data, library vs the
official formulation.

    .venv/bin/python bench/bench_train.py --threads 2                 # the whole table (check, epochs, whole runs)
    .venv/bin/python bench/bench_train.py --threads 2 --epochs 3 --json bench_train.json
    .venv/bin/python bench/bench_train.py --threads 2 --skip-whole-run  # per-epoch rows only
    .venv/bin/python bench/bench_train.py --threads 1 --whole-run-only  # whole-run rows only
    .venv/bin/python bench/bench_train.py --threads 2 --accuracy        # fp32 vs bf16 accuracy over seeds
    .venv/bin/python bench/bench_train.py --threads 1 --accounting      # where an fp32 step's time goes
    .venv/bin/python bench/bench_train.py --device cuda               # GPU: fp16 autocast as the reduced mode
    .venv/bin/python bench/bench_train.py --device cuda --profile fp32,fp16,bf16  # where an epoch's time goes

Three ways of training the same model on the same batches:
* fp32 — the library (ercpipe.model: packed valid utterances, fused attention, cheap dropout draw), fp32;
* bf16 (CPU) / fp16 (CUDA) — the same with train.amp autocast (--amp picks it);
* reference — ercpipe/testing/reference_sdt_vega.py, the official code's formulation: padded [B, L, *]
  batches everywhere, explicit softmax attention, F.dropout; vectorized, the same kernels as the
  official modules, fp32 (what the official code does on a CPU).

Steps (each in a fresh process, so peak memory is its own):
1. check: the library (fp32) and the reference give the same logits, anchor logits, fused features, loss
   and gradients on a padded batch of test dialogues (eval mode, center anchors), or the benchmark stops;
   the reduced-precision library is compared too (its loss must stay within 5 %);
2. epochs: one model and optimizer; every round draws one shuffled, feature-masked epoch of batches and
   trains one epoch on them in each mode, the mode order rotating from round to round (same process, same
   threads, same batches), after one untimed warm-up step per mode. Wall and CPU seconds (user + system;
   less disturbed than wall time when other jobs share the machine) per epoch, averaged over --epochs rounds;
3. whole runs: run_training (the `official` preset) in a fresh process on feature files written
   beforehand (--run-dialogues train/valid/test dialogues of the IEMOCAP shape), from process start to
   metrics.json: imports, loading, every epoch, the resume-state writes, the final evaluation and
   model.pt; once per mode (the reference by replacing SDTVega.forward with the reference in that
   process). Wall time, peak RSS (VmHWM) and the bytes the process wrote (/proc/self/io write_bytes),
   in all and per epoch, next to the model's own size (fp32 weights).
The load average before and after is printed with the tables.

--accounting splits an fp32 step of the library and of the reference into matrix products and the rest:
the products' FLOPs (torch.utils.flop_counter over the same batches), the CPU seconds per step, and the
products' time at the rate of an isolated sgemm of the same width on this CPU (cold weights), so that
what is left for everything else (dropout, optimizer, elementwise ops) can be read off, with the budget
that leaves the library for the fp32 goal; and the forward FLOPs of one library batch per module (which
part of the model the products belong to).

--profile MODES trains, per mode (fp32, fp16, bf16, reference) and on the same batches, one untimed warm-up
epoch, one timed epoch (wall and CPU seconds) and one epoch under torch.profiler: the device's kernel time and
kernel launches (CUDA), and the operators with the most self CPU time and self device time. On a GPU this says whether an epoch is
bound by the host (launching kernels) or by the device.

--accuracy trains fp32 and the reduced mode on a learnable variant of the data (class-dependent feature
shifts) for --acc-seeds seeds and --acc-epochs epochs and prints test accuracy / weighted F1 per seed:
the reduced mode is "within seed noise" when its mean is within two fp32 standard deviations (over seeds)
of the fp32 mean.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from process_stats import markdown_table, peak_rss_mb  # noqa: E402

from ercpipe.model import ModelSpec, SDTVegaLoss, build_model, count_parameters  # noqa: E402
from ercpipe.model.batch import Dialogue, collate  # noqa: E402
from ercpipe.model.inference import autocast_context, effective_amp, eval_batches, run_eval  # noqa: E402
from ercpipe.testing.reference_sdt_vega import reference_forward  # noqa: E402
from ercpipe.train.data import batches, mask_feature_dims  # noqa: E402
from ercpipe.train.presets import preset  # noqa: E402

DIMS = {"text": 1024, "audio": 1582, "visual": 342}
SPLITS = {"train": (120, 5810), "test": (31, 1623)}
N_CLASSES, N_SPEAKERS, CLIP_DIM, IMAGES_PER_CLASS = 6, 2, 512, 35
GOALS = {"fp32": 1.8, "reduced": 2.5, "whole": 2.0, "rss_gib": 2.4}


def _peak_cuda_mib(device) -> float | None:
    """The most GPU memory tensors of this process held (torch's allocator), MiB; None off CUDA."""
    return torch.cuda.max_memory_allocated() / 2**20 if str(device).startswith("cuda") else None


def lengths(n_dialogues: int, n_utterances: int, rng: np.random.Generator) -> list[int]:
    """Random dialogue lengths (about 15-80, mean 48 as in IEMOCAP) summing exactly to n_utterances."""
    raw = rng.uniform(20, 110, n_dialogues)
    out = np.maximum(1, np.round(raw / raw.sum() * n_utterances)).astype(int)
    out[np.argmax(out)] += n_utterances - out.sum()
    return out.tolist()


def make_data(seed: int = 0, signal: float = 0.0) -> dict[str, list[Dialogue]]:
    """Random features; with signal > 0 every modality gets a class-dependent shift of that size per
    dimension (a fixed random direction per class), so the labels can be learned."""
    rng = np.random.default_rng(seed)
    shifts = {m: rng.standard_normal((N_CLASSES, d)).astype(np.float32) * signal for m, d in DIMS.items()}
    data = {}
    for split, (n_dialogues, n_utterances) in SPLITS.items():
        dialogues = []
        for k, n in enumerate(lengths(n_dialogues, n_utterances, rng)):
            ids = [f"{split}{k}_{i}" for i in range(n)]
            feats = {m: rng.standard_normal((n, d), dtype=np.float32) for m, d in DIMS.items()}
            labels = rng.integers(0, N_CLASSES, n)
            if signal:
                feats = {m: x + shifts[m][labels] for m, x in feats.items()}
            dialogues.append(Dialogue(
                f"{split}{k}", split, ids, {m: torch.from_numpy(x) for m, x in feats.items()},
                {m: torch.ones(n, dtype=torch.bool) for m in DIMS},
                torch.from_numpy(labels), torch.from_numpy(rng.integers(0, N_SPEAKERS, n))))
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reduced_amp(args, device: str) -> str:
    return args.amp or ("fp16" if device == "cuda" else "bf16")


# ------------------------------------------------------------------------------------------ workers

def _library_outputs(model, loss_fn, batch, device, amp):
    with autocast_context(device, amp):
        out = model(batch.features, batch.speakers, batch.mask)
        loss, _ = loss_fn(model, out, batch.labels, batch.mask)
    return out, loss


def _reference_outputs(model, loss_fn, batch, anchors, training):
    out = reference_forward(model, batch.features, batch.speakers, batch.mask, anchors, training=training)
    loss, _ = loss_fn(model, out, batch.labels, batch.mask)
    return out, loss


def worker_check(args, device) -> dict:
    """Library (fp32, and the reduced mode) vs the reference: logits, loss and gradients (eval mode)."""
    cfg = preset("official")
    model = make_model(cfg, device).eval()
    loss_fn = SDTVegaLoss(cfg["loss"], np.linspace(1, 2, N_CLASSES).astype(np.float32))
    batch = collate(make_data()["test"][: args.check_dialogues]).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    out, loss = _library_outputs(model, loss_fn, batch, device, "off")
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    ref, ref_loss = _reference_outputs(model, loss_fn, batch, model.anchor_bank(sample=False), False)
    ref_grads = torch.autograd.grad(ref_loss, params, allow_unused=True)
    with torch.no_grad():
        return _check_result(args, model, loss_fn, batch, device, out, loss, ref, ref_loss, grads, ref_grads)


def _check_result(args, model, loss_fn, batch, device, out, loss, ref, ref_loss, grads, ref_grads) -> dict:
    low, low_loss = _library_outputs(model, loss_fn, batch, device, args.amp_mode)
    mask = batch.mask
    diffs = {f"logits_{h}": float((out["logits"][h][mask] - ref["logits"][h][mask]).abs().max()) for h in out["logits"]}
    diffs.update({f"anchor_logits_{h}": float((out["anchor_logits"][h][mask] - ref["anchor_logits"][h][mask]).abs().max())
                  for h in out["anchor_logits"]})
    diffs["fused"] = float((out["fused"][mask] - ref["fused"][mask]).abs().max())
    diffs["loss"] = abs(float(loss) - float(ref_loss))
    # Relative difference of the whole gradient vector. (Per parameter it is meaningless for gradients that
    # are zero in exact arithmetic, e.g. the attention key biases: softmax ignores a per-query constant.)
    pairs = [(g.flatten(), r.flatten()) for g, r in zip(grads, ref_grads) if g is not None and r is not None]
    flat_g, flat_r = torch.cat([g for g, _ in pairs]), torch.cat([r for _, r in pairs])
    grad_rel = float((flat_g - flat_r).norm() / flat_r.norm())
    ok = all(torch.allclose(out["logits"][h][mask], ref["logits"][h][mask], rtol=1e-4, atol=1e-4) for h in out["logits"])
    ok &= all(torch.allclose(out["anchor_logits"][h][mask], ref["anchor_logits"][h][mask], rtol=1e-3, atol=2e-3)
              for h in out["anchor_logits"])
    ok &= torch.allclose(out["fused"][mask], ref["fused"][mask], rtol=1e-4, atol=1e-4)
    ok &= math.isclose(float(loss), float(ref_loss), rel_tol=1e-4) and grad_rel < 1e-3
    low_diff = max(float((low["logits"][h][mask].float() - out["logits"][h][mask]).abs().max()) for h in out["logits"])
    low_agree = float((low["logits"]["all"][mask].argmax(-1) == out["logits"]["all"][mask].argmax(-1)).float().mean())
    low_ok = math.isclose(float(low_loss), float(loss), rel_tol=5e-2)
    return {"mode": "check", "ok": bool(ok and low_ok), "fp32_ok": bool(ok), "max_abs_diff": diffs,
            "max_grad_rel_diff": grad_rel, "utterances": int(mask.sum()), "amp": args.amp_mode,
            "amp_max_logit_diff": low_diff, "amp_argmax_agreement": low_agree,
            "amp_loss_rel_diff": abs(float(low_loss) - float(loss)) / abs(float(loss))}


def _train_step(model, loss_fn, optimizer, scaler, batch, mode, amp, device) -> None:
    if mode == "reference":
        _, loss = _reference_outputs(model, loss_fn, batch, model.anchor_bank(sample=True), True)
    else:
        _, loss = _library_outputs(model, loss_fn, batch, device, "off" if mode == "fp32" else amp)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _training_setup(device):
    """The official configuration, the random data, the model in training mode, its loss and fused AdamW."""
    cfg = preset("official")
    model = make_model(cfg, device).train()
    loss_fn = SDTVegaLoss(cfg["loss"], np.ones(N_CLASSES, dtype=np.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["train"]["lr"], weight_decay=cfg["train"]["weight_decay"],
                                  fused=True)
    return cfg, make_data(), model, loss_fn, optimizer


def worker_epochs(args, device) -> dict:
    """Alternating epochs of the three modes on one model, the same batches for every mode (see the
    module docstring, step 2)."""
    cfg, data, model, loss_fn, optimizer = _training_setup(device)
    amp_scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and args.amp_mode == "fp16")
    scalers = {"fp32": torch.amp.GradScaler("cuda", enabled=False), args.amp_mode: amp_scaler,
               "reference": torch.amp.GradScaler("cuda", enabled=False)}
    bs, ratio = cfg["train"]["batch_size"], cfg["train"]["feature_mask_ratio"]
    modes = ["fp32", args.amp_mode, "reference"]
    torch.manual_seed(1)
    warm = mask_feature_dims(next(batches(data["train"], bs, True)), ratio).to(device)
    for mode in modes:  # allocator, kernels, oneDNN primitives; not timed
        _train_step(model, loss_fn, optimizer, scalers[mode], warm, mode, args.amp_mode, device)
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    padded = valid = 0
    for r in range(args.epochs):
        epoch = [mask_feature_dims(b, ratio).to(device) for b in batches(data["train"], bs, True)]
        padded += sum(b.mask.numel() for b in epoch)
        valid += sum(int(b.mask.sum()) for b in epoch)
        for mode in modes[r % 3:] + modes[: r % 3]:
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            for batch in epoch:
                _train_step(model, loss_fn, optimizer, scalers[mode], batch, mode, args.amp_mode, device)
            _sync(device)
            times[mode].append((time.perf_counter() - wall, time.process_time() - cpu))
    rows = []
    for mode in modes:
        wall = [w for w, _ in times[mode]]
        cpu = [c for _, c in times[mode]]
        rows.append({"mode": mode, "device": str(device), "threads": torch.get_num_threads(),
                     "epochs": args.epochs, "s_per_epoch": float(np.mean(wall)), "cpu_s_per_epoch": float(np.mean(cpu)),
                     "epoch_times": wall, "epoch_cpu_times": cpu})
    return {"rows": rows, "padded_positions_per_valid": padded / valid, "parameters": count_parameters(model),
            "peak_rss_mib": peak_rss_mb(), "peak_cuda_mib": _peak_cuda_mib(device)}


def _profile_tables(prof, cuda: bool, top: int = 12) -> dict:
    events = prof.key_averages()
    dev_attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"

    def rows(key):
        ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
        return [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                 "self_device_ms": getattr(e, dev_attr) / 1e3} for e in ranked]

    out = {"by_cpu": rows("self_cpu_time_total")}
    if cuda:
        kernels = [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
        out["kernel_ms"] = sum(e.device_time if hasattr(e, "device_time") else e.cuda_time for e in kernels) / 1e3
        out["kernels"] = len(kernels)
        out["by_device"] = rows(dev_attr)
    return out


def worker_profile(args, device) -> dict:
    """One warm-up epoch, then one profiled epoch per mode on the same batches (module docstring, --profile)."""
    from torch.profiler import ProfilerActivity, profile

    cfg, data, model, loss_fn, optimizer = _training_setup(device)
    modes = args.profile.split(",")
    scalers = {m: torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and m == "fp16") for m in modes}
    torch.manual_seed(1)
    epoch = [mask_feature_dims(b, cfg["train"]["feature_mask_ratio"]).to(device)
             for b in batches(data["train"], cfg["train"]["batch_size"], True)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    def train_epoch(mode: str) -> None:
        amp = mode if mode in ("fp16", "bf16") else "off"
        for batch in epoch:
            _train_step(model, loss_fn, optimizer, scalers[mode], batch, mode, amp, device)
        _sync(device)

    results = []
    for mode in modes:
        train_epoch(mode)  # warm-up epoch: allocator, kernels, cuBLAS handles
        wall, cpu = time.perf_counter(), time.process_time()
        train_epoch(mode)  # timed without the profiler
        row = {"mode": mode, "steps": len(epoch), "s_per_epoch": time.perf_counter() - wall,
               "cpu_s_per_epoch": time.process_time() - cpu}
        with profile(activities=activities) as prof:
            train_epoch(mode)
        row.update(_profile_tables(prof, device.type == "cuda"))
        results.append(row)
    return {"rows": results}


def worker_accuracy(args, device) -> dict:
    """fp32 vs the reduced mode on learnable synthetic data: test accuracy / weighted F1 per seed."""
    from sklearn.metrics import accuracy_score, f1_score

    cfg = preset("official")
    data = make_data(seed=7, signal=args.acc_signal)
    results = []
    for seed in range(args.acc_seeds):
        for mode in ("fp32", args.amp_mode):
            model = make_model(cfg, device, seed=seed).train()
            loss_fn = SDTVegaLoss(cfg["loss"], np.ones(N_CLASSES, dtype=np.float32))
            optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["train"]["lr"],
                                          weight_decay=cfg["train"]["weight_decay"], fused=True)
            scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and mode == "fp16")
            torch.manual_seed(1000 + seed)
            for _ in range(args.acc_epochs):
                for batch in batches(data["train"], cfg["train"]["batch_size"], True):
                    batch = mask_feature_dims(batch, cfg["train"]["feature_mask_ratio"]).to(device)
                    _train_step(model, loss_fn, optimizer, scaler, batch, mode, args.amp_mode, device)
            amp = "off" if mode == "fp32" else args.amp_mode
            result = run_eval(model, eval_batches(data["test"], cfg["train"]["eval_batch_size"]), device, amp)
            results.append({"seed": seed, "mode": mode, "accuracy": accuracy_score(result.labels, result.predictions),
                            "weighted_f1": f1_score(result.labels, result.predictions, average="weighted")})
    return {"runs": results}


# ------------------------------------------------------------------------------------------ whole run

def sgemm_rate(rows: int, width: int, reps: int = 30) -> float:
    """FLOP per CPU second of [rows, width] x [width, width]^T products, a fresh weight each time (cold)."""
    weights = [torch.randn(width, width) for _ in range(reps)]
    inputs = [torch.randn(rows, width) for _ in range(reps)]
    for i in range(3):
        torch.nn.functional.linear(inputs[i], weights[i])
    start = time.process_time()
    for x, w in zip(inputs, weights):
        torch.nn.functional.linear(x, w)
    return 2.0 * rows * width * width * reps / (time.process_time() - start)


def worker_accounting(args, device) -> dict:
    """FLOPs of the matrix products per training step and CPU seconds per step, library fp32 and reference
    (see the module docstring, --accounting)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg, data, model, loss_fn, optimizer = _training_setup(device)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    torch.manual_seed(1)
    steps = [mask_feature_dims(b, cfg["train"]["feature_mask_ratio"]).to(device)
             for b in batches(data["train"], cfg["train"]["batch_size"], True)]
    warm, steps = steps[0], steps[: args.accounting_steps or None]  # the warm-up step is not timed
    rows = []
    for mode in ("fp32", "reference"):
        _train_step(model, loss_fn, optimizer, scaler, warm, mode, args.amp_mode, device)
        with FlopCounterMode(display=False) as counter:
            for batch in steps:
                _train_step(model, loss_fn, optimizer, scaler, batch, mode, args.amp_mode, device)
        cpu = []
        for _ in range(2):
            start = time.process_time()
            for batch in steps:
                _train_step(model, loss_fn, optimizer, scaler, batch, mode, args.amp_mode, device)
            cpu.append((time.process_time() - start) / len(steps))
        rows.append({"mode": mode, "gflop_per_step": counter.get_total_flops() / len(steps) / 1e9,
                     "cpu_s_per_step": min(cpu)})
    with torch.no_grad(), FlopCounterMode(display=False, depth=3) as counter:  # one forward pass, per module
        _library_outputs(model, loss_fn, warm, device, "off")
    modules = [{"module": name, "gflop": sum(ops.values()) / 1e9} for name, ops in counter.get_flop_counts().items()
               if name.count(".") == 2 or name in ("Global",)]
    valid_rows = int(np.mean([int(b.mask.sum()) for b in steps]))
    rate = sgemm_rate(valid_rows, cfg["model"]["hidden_dim"])
    for r in rows:
        r["products_s"] = r["gflop_per_step"] * 1e9 / rate
        r["rest_s"] = r["cpu_s_per_step"] - r["products_s"]
    return {"rows": rows, "sgemm_gflops": rate / 1e9, "sgemm_shape": [valid_rows, cfg["model"]["hidden_dim"]],
            "threads": torch.get_num_threads(), "steps": len(steps), "forward_modules": modules,
            "forward_utterances": int(warm.mask.sum())}


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


def use_reference_forward() -> None:
    """Make SDTVega compute its forward pass with the reference (the official formulation), in this process."""
    from ercpipe.model.sdt import SDTVega

    def forward(self, features, speakers, mask, with_vega=True):
        anchors = None
        if self.spec.vega and with_vega:
            anchors = self.anchor_bank(sample=self.training or self.spec.anchor_sampling_at_eval)
        return reference_forward(self, features, speakers, mask, anchors, training=self.training)

    SDTVega.forward = forward


def worker_run(args, device: str) -> dict:
    """run_training end to end in this (fresh) process; the files were written by the driver."""
    from ercpipe.train import run_training

    mode = args.run_mode
    if mode == "reference":
        use_reference_forward()
    files = json.loads(args.run_files)
    experiment = {"preset": "official", "train": {"epochs": args.run_epochs, "patience": None,
                                                  "amp": "off" if mode in ("fp32", "reference") else mode}}
    if args.checkpoint_every:
        experiment["train"]["checkpoint_every"] = args.checkpoint_every
    written_before = io_write_bytes()
    metrics = run_training(files["manifest"], files["features"], files["anchors"], experiment, 0, args.run_out,
                           device=device, threads=args.threads)
    written = io_write_bytes() - written_before
    return {"mode": mode, "device": device, "threads": torch.get_num_threads(),
            "epochs": metrics["protocol"]["epochs_run"], "parameters": metrics["n_parameters"],
            "model_mib": metrics["n_parameters"] * 4 / 2**20,
            "s_per_epoch_logged": metrics["seconds_per_epoch"], "written_mib": written / 2**20,
            "written_mib_per_epoch": written / 2**20 / metrics["protocol"]["epochs_run"],
            "peak_rss_mib": peak_rss_mb(), "peak_cuda_mib": _peak_cuda_mib(device),
            "test_weighted_f1": metrics["test"]["weighted_f1"]}


def whole_runs(args, device: str, modes: list[str]) -> list[dict]:
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        files = write_run_files(Path(tmp) / "data", tuple(args.run_dialogues))
        for mode in modes:
            cmd = [sys.executable, __file__, "--worker", "run", "--device", device, "--run-epochs",
                   str(args.run_epochs), "--run-mode", mode, "--run-files", json.dumps(files),
                   "--run-out", str(Path(tmp) / f"run_{mode}")]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.checkpoint_every:
                cmd += ["--checkpoint-every", str(args.checkpoint_every)]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"whole-run worker ({mode}) failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["wall_s"] = wall
            rows.append(result)
            print(f"  whole run {mode}: {wall:.1f} s", flush=True)
    return rows


# ------------------------------------------------------------------------------------------ driver

def run_worker(mode: str, args, device: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--device", device, "--epochs", str(args.epochs),
           "--check-dialogues", str(args.check_dialogues), "--amp", args.amp_mode,
           "--acc-seeds", str(args.acc_seeds), "--acc-epochs", str(args.acc_epochs), "--acc-signal", str(args.acc_signal),
           "--accounting-steps", str(args.accounting_steps)]
    if args.profile:
        cmd += ["--profile", args.profile]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {mode} on {device} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _f(fmt: str, key: str):
    return lambda r: "" if r.get(key) is None else format(r[key], fmt)


EPOCH_COLUMNS = [("mode", lambda r: r["mode"]), ("device", lambda r: r["device"]), ("threads", _f("d", "threads")),
                 ("rounds", _f("d", "epochs")), ("s/epoch (wall)", _f(".2f", "s_per_epoch")),
                 ("CPU s/epoch", _f(".2f", "cpu_s_per_epoch")), ("speed-up (wall)", _f(".2f", "speedup_wall")),
                 ("speed-up (CPU)", _f(".2f", "speedup_cpu")), ("goal", lambda r: r.get("goal", ""))]
RUN_COLUMNS = [("mode", lambda r: r["mode"]), ("threads", _f("d", "threads")), ("epochs", _f("d", "epochs")),
               ("wall s", _f(".1f", "wall_s")), ("s/epoch (log)", _f(".2f", "s_per_epoch_logged")),
               ("speed-up", _f(".2f", "speedup")), ("peak RSS MiB", _f(".0f", "peak_rss_mib")),
               ("written MiB", _f(".0f", "written_mib")), ("MiB/epoch", _f(".0f", "written_mib_per_epoch")),
               ("model MiB", _f(".0f", "model_mib")), ("test wF1", _f(".3f", "test_weighted_f1"))]


ACCOUNTING_COLUMNS = [("mode", lambda r: r["mode"]), ("GFLOP/step (products)", _f(".1f", "gflop_per_step")),
                      ("CPU s/step", _f(".3f", "cpu_s_per_step")),
                      ("products at sgemm rate (s)", _f(".3f", "products_s")), ("rest (s)", _f(".3f", "rest_s"))]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def epoch_rows(result: dict, amp: str) -> list[dict]:
    rows = {r["mode"]: dict(r) for r in result["rows"]}
    ref = rows["reference"]
    for mode, goal in (("fp32", GOALS["fp32"]), (amp, GOALS["reduced"])):
        r = rows[mode]
        r["speedup_wall"] = ref["s_per_epoch"] / r["s_per_epoch"]
        r["speedup_cpu"] = ref["cpu_s_per_epoch"] / r["cpu_s_per_epoch"]
        r["goal"] = f">= {goal}x: {_met(min(r['speedup_wall'], r['speedup_cpu']) >= goal)}"
    return [rows["fp32"], rows[amp], ref]


def run_rows(rows: list[dict], amp: str) -> list[dict]:
    by_mode = {r["mode"]: dict(r) for r in rows}
    ref = by_mode.get("reference")
    for r in by_mode.values():
        if ref is not None and r is not ref:
            r["speedup"] = ref["wall_s"] / r["wall_s"]
    return [by_mode[m] for m in ("fp32", amp, "reference") if m in by_mode]


def accuracy_summary(runs: list[dict], amp: str) -> tuple[list[dict], str]:
    rows, line = [], []
    for mode in ("fp32", amp):
        acc = np.array([r["accuracy"] for r in runs if r["mode"] == mode])
        f1 = np.array([r["weighted_f1"] for r in runs if r["mode"] == mode])
        rows.append({"mode": mode, "seeds": len(acc), "accuracy": " ".join(f"{a:.3f}" for a in acc),
                     "mean_acc": acc.mean(), "std_acc": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                     "mean_f1": f1.mean(), "std_f1": f1.std(ddof=1) if len(f1) > 1 else float("nan")})
    fp32, low = rows
    within = abs(low["mean_acc"] - fp32["mean_acc"]) <= 2 * fp32["std_acc"]
    line = (f"{amp} - fp32 mean test accuracy: {low['mean_acc'] - fp32['mean_acc']:+.4f} (fp32 seed std "
            f"{fp32['std_acc']:.4f}): {'within' if within else 'NOT within'} seed noise")
    return rows, line


ACC_COLUMNS = [("mode", lambda r: r["mode"]), ("seeds", _f("d", "seeds")), ("test accuracy per seed", lambda r: r["accuracy"]),
               ("mean acc", _f(".4f", "mean_acc")), ("std acc", _f(".4f", "std_acc")),
               ("mean wF1", _f(".4f", "mean_f1")), ("std wF1", _f(".4f", "std_f1"))]


PROFILE_COLUMNS = [("op", lambda r: r["op"][:60]), ("calls", lambda r: str(r["calls"])),
                   ("self CPU ms", _f(".1f", "self_cpu_ms")), ("self device ms", _f(".1f", "self_device_ms"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda")
    parser.add_argument("--epochs", type=int, default=2, help="rounds of alternating epochs (one epoch per mode each)")
    parser.add_argument("--amp", default=None, choices=["bf16", "fp16"],
                        help="the reduced-precision mode (default: bf16 on the CPU, fp16 on CUDA)")
    parser.add_argument("--check-dialogues", type=int, default=3, help="dialogues for the library/reference check")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-whole-run", action="store_true", help="per-epoch rows only")
    parser.add_argument("--whole-run-only", action="store_true", help="whole-run rows only (no check, no epochs)")
    parser.add_argument("--run-epochs", type=int, default=10, help="epochs of each whole run")
    parser.add_argument("--run-dialogues", type=int, nargs=3, default=[30, 8, 8], metavar=("TRAIN", "VALID", "TEST"),
                        help="dialogues per split for the whole runs (48 utterances each on average)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="train.checkpoint_every for the whole runs (default: the preset's)")
    parser.add_argument("--accuracy", action="store_true", help="only the fp32 vs reduced-precision accuracy check")
    parser.add_argument("--accounting", action="store_true",
                        help="only the split of an fp32 step into matrix products and the rest")
    parser.add_argument("--accounting-steps", type=int, default=0,
                        help="training steps per mode for --accounting (0: one whole epoch, 14 steps)")
    parser.add_argument("--profile", default=None, metavar="MODES",
                        help="only profile one epoch per mode, comma list of fp32,fp16,bf16,reference")
    parser.add_argument("--acc-seeds", type=int, default=3, help="at least 2: seed noise is their spread")
    parser.add_argument("--acc-epochs", type=int, default=3)
    parser.add_argument("--acc-signal", type=float, default=0.1, help="class shift per feature dimension")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--run-files", help=argparse.SUPPRESS)
    parser.add_argument("--run-out", help=argparse.SUPPRESS)
    parser.add_argument("--run-mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.acc_seeds < 2:
        parser.error("--acc-seeds: give at least 2 (whether two modes differ is judged against the seeds' spread)")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    args.amp_mode = reduced_amp(args, device)
    if args.worker == "run":
        print(json.dumps(worker_run(args, device)))
        return
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        dev = torch.device(device)
        worker = {"check": worker_check, "epochs": worker_epochs, "accuracy": worker_accuracy,
                  "accounting": worker_accounting, "profile": worker_profile}[args.worker]
        print(json.dumps(worker(args, dev)))
        return
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    print(f"SDT-VEGA official configuration on IEMOCAP-shaped random data; device {device} ({cpu}), torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs, threads {args.threads or torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if device == "cpu" and args.amp_mode == "bf16" and effective_amp(torch.device("cpu"), "bf16") == "off":
        print("this CPU has no bf16 kernels (no AVX-512): train.amp bf16 trains in fp32 here, so the bf16 rows "
              "below are fp32 runs (docs/training.md, 'Mixed precision')", flush=True)
    out: dict = {}
    if args.profile:
        result = run_worker("profile", args, device)
        for r in result["rows"]:
            kernels = (f"; device kernels {r['kernel_ms'] / 1e3:.3f} s in {r['kernels']} launches "
                       f"({r['kernels'] / r['steps']:.0f} per step)" if "kernel_ms" in r else "")
            print(f"\n{r['mode']}: {r['s_per_epoch']:.3f} s/epoch wall, {r['cpu_s_per_epoch']:.3f} CPU s, "
                  f"{r['steps']} steps{kernels}")
            for key in ("by_cpu", "by_device"):
                if key in r:
                    print(markdown_table(r[key], PROFILE_COLUMNS))
        out["profile"] = result
    elif args.accounting:
        result = run_worker("accounting", args, device)
        lib, ref = result["rows"]
        budget = ref["cpu_s_per_step"] / GOALS["fp32"] - lib["products_s"]
        print(markdown_table(result["rows"], ACCOUNTING_COLUMNS))
        print(f"isolated sgemm {result['sgemm_shape'][0]}x{result['sgemm_shape'][1]}: {result['sgemm_gflops']:.0f} "
              f"GFLOP/s; products {ref['gflop_per_step'] / lib['gflop_per_step']:.2f}x, step "
              f"{ref['cpu_s_per_step'] / lib['cpu_s_per_step']:.2f}x; for {GOALS['fp32']}x the library's rest would "
              f"have to be <= {budget:.3f} s (now {lib['rest_s']:.3f} s)")
        print(f"forward FLOPs of one library batch ({result['forward_utterances']} utterances) per module:")
        print(markdown_table(result["forward_modules"], [("module", lambda r: r["module"]),
                                                         ("GFLOP (forward)", _f(".3f", "gflop"))]))
        out["accounting"] = result
    elif args.accuracy:
        result = run_worker("accuracy", args, device)
        rows, line = accuracy_summary(result["runs"], args.amp_mode)
        print(markdown_table(rows, ACC_COLUMNS))
        print(line)
        out["accuracy"] = {"runs": result["runs"], "summary": line}
    else:
        if not args.whole_run_only:
            check = run_worker("check", args, device)
            print(f"check library vs reference ({check['utterances']} utterances): "
                  f"{'OK' if check['fp32_ok'] else 'MISMATCH'}; max |diff| {max(check['max_abs_diff'].values()):.2e}, "
                  f"relative gradient diff {check['max_grad_rel_diff']:.2e}; {check['amp']}: max |logit diff| "
                  f"{check['amp_max_logit_diff']:.3f}, argmax agreement {check['amp_argmax_agreement']:.3f}, "
                  f"loss within {check['amp_loss_rel_diff']:.2%}", flush=True)
            if not check["ok"]:
                raise SystemExit(f"library and reference disagree: {check}")
            out["check"] = check
            epochs = run_worker("epochs", args, device)
            rows = epoch_rows(epochs, args.amp_mode)
            print(f"\nTraining epochs ({SPLITS['train'][0]} dialogues / {SPLITS['train'][1]} utterances, padded "
                  f"positions per utterance {epochs['padded_positions_per_valid']:.3f}; "
                  f"load average {os.getloadavg()[0]:.2f}):")
            print(markdown_table(rows, EPOCH_COLUMNS))
            out["epochs"] = {**epochs, "rows": rows}
        if not args.skip_whole_run:
            runs = run_rows(whole_runs(args, device, ["fp32", args.amp_mode, "reference"]), args.amp_mode)
            print(f"\nWhole runs (run_training, official preset, {args.run_epochs} epochs, dialogues "
                  f"{'/'.join(map(str, args.run_dialogues))}; load average {os.getloadavg()[0]:.2f}):")
            print(markdown_table(runs, RUN_COLUMNS))
            best = max(r.get("speedup", 0) for r in runs)
            worst_rss = max(r["peak_rss_mib"] for r in runs if r["mode"] != "reference") / 1024
            disk_ok = all(r["written_mib_per_epoch"] <= r["model_mib"] for r in runs if r["mode"] != "reference")
            print(f"goals: whole run >= {GOALS['whole']}x: {_met(best >= GOALS['whole'])} ({best:.2f}x); "
                  f"peak RSS <= {GOALS['rss_gib']} GiB: {_met(worst_rss <= GOALS['rss_gib'])} ({worst_rss:.2f} GiB); "
                  f"written per epoch <= model size: {_met(disk_ok)}")
            out["whole_runs"] = runs
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
