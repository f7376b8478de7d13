"""Evaluation passes and per-utterance predictions of a model (the trainer's validation and test passes,
and prediction with a loaded checkpoint: ercpipe.model.checkpoint.load_model)."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import numbers
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ercpipe.device import cuda_has_bf16, resolve_device
from ercpipe.model.batch import Batch, Dialogue, collate, standardize
from ercpipe.model.checkpoint import check_dialogue_widths
from ercpipe.model.sdt import SDTVega


@functools.cache
def cpu_has_bf16_kernels() -> bool:
    """Whether this CPU's bf16 matrix products go through oneDNN (AVX-512 or AMX; fastest with avx512_bf16 /
    AMX). Where they do not (AVX2-only CPUs, e.g. many AMD EPYC nodes) torch computes them in a generic loop:
    measured on a 2-core AMD EPYC with torch 2.14.1, one step of the official preset took 76 s in bf16
    autocast against 4.2 s in fp32. A torch without the probe is taken at its word (True)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def has_bf16_kernels(device: torch.device) -> bool:
    """Whether bf16 autocast is worth running on this device: a CPU with bf16 kernels (cpu_has_bf16_kernels), a GPU
    with native bf16 (ercpipe.device.cuda_has_bf16: compute capability 8.0 and later)."""
    return cpu_has_bf16_kernels() if device.type == "cpu" else cuda_has_bf16(device)


def effective_amp(device: torch.device, amp: str) -> str:
    """What the train.amp setting runs as on this device: "fp16" = fp16 autocast on CUDA, fp32 ("off") on the
    CPU (fp16 matrix products are slow there); "bf16" = bf16 autocast on a CPU or GPU with bf16 kernels
    (has_bf16_kernels; fast on a CPU with avx512_bf16 / AMX), fp32 on one without them; "off" = fp32."""
    if amp == "off" or device.type not in ("cuda", "cpu"):
        return "off"
    if device.type == "cpu" and amp != "bf16":
        return "off"
    if amp == "bf16" and not has_bf16_kernels(device):
        return "off"
    return amp


def bf16_fallback_note(device: torch.device) -> str:
    """Why a bf16 setting runs in fp32 on this device (effective_amp), as logs and metrics.json say it."""
    if device.type == "cpu":
        return "fp32 on this CPU (no bf16 kernels)"
    return "fp32 on this GPU (no native bf16: compute capability below 8.0)"


def autocast_context(device: torch.device, amp: str):
    """The autocast of the train.amp setting on this device (effective_amp)."""
    amp = effective_amp(device, amp)
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


@dataclass
class EvalResult:
    utterance_ids: list[str]
    dialogue_ids: list[str]
    labels: np.ndarray  # int64 [N], -1 = unlabelled
    logits: dict[str, np.ndarray]  # head -> float32 [N, C]  (t, a, v, all)
    fused: np.ndarray | None  # float32 [N, d]
    losses: dict[str, float] = field(default_factory=dict)

    @property
    def predictions(self) -> np.ndarray:
        return self.logits["all"].argmax(axis=1)

    def probabilities(self) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits["all"]), dim=1).numpy()


@torch.no_grad()
def run_eval(model: SDTVega, batches: Sequence[Batch], device: torch.device, amp: str = "off", loss_fn=None,
             keep_fused: bool = False) -> EvalResult:
    """One pass in eval mode (dropout off). With loss_fn the VEGA branch runs too and losses are averaged
    over utterances; without it the forward is backbone-only (what inference needs)."""
    was_training = model.training
    model.eval()
    ids, dialogue_ids, labels, fused = [], [], [], []
    logits: dict[str, list[torch.Tensor]] = {}
    sums: dict[str, torch.Tensor] = {}
    n_total = 0
    # model.anchor_sampling_at_eval draws anchors from torch's CPU generator: on a fork of it, so that the
    # per-epoch evaluation leaves the training's shuffles, masks and dropout as they are without it (the
    # official code draws them from Python's `random`, which its training does not use either).
    with torch.random.fork_rng(devices=[]):
        try:
            for cpu_batch in batches:
                batch = cpu_batch.to(device)
                with autocast_context(device, amp):
                    out = model(batch.features, batch.speakers, batch.mask, with_vega=loss_fn is not None)
                    if loss_fn is not None:
                        _, parts = loss_fn(model, out, batch.labels, batch.mask)
                mask = batch.mask
                if loss_fn is not None:
                    n = int((batch.labels[mask] >= 0).sum())
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + v.float() * n
                    n_total += n
                for head, z in out["logits"].items():
                    logits.setdefault(head, []).append(z[mask].float().cpu())
                if keep_fused:
                    fused.append(out["fused"][mask].float().cpu())
                labels.append(batch.labels[mask].cpu())
                for d_id, u_ids in zip(cpu_batch.dialogue_ids, cpu_batch.utterance_ids):
                    ids += u_ids
                    dialogue_ids += [d_id] * len(u_ids)
        finally:
            model.train(was_training)
    return EvalResult(
        utterance_ids=ids, dialogue_ids=dialogue_ids, labels=torch.cat(labels).numpy(),
        logits={h: torch.cat(v).numpy() for h, v in logits.items()},
        fused=torch.cat(fused).numpy() if keep_fused else None,
        losses={k: float(v) / max(n_total, 1) for k, v in sums.items()})


def eval_batches(dialogues: Sequence[Dialogue], batch_size: int) -> list[Batch]:
    """Collated once and reused every epoch (order = manifest order)."""
    return [collate(dialogues[i:i + batch_size]) for i in range(0, len(dialogues), batch_size)]


def predict(model: SDTVega, dialogues: Sequence[Dialogue], batch_size: int = 32,
            device: str | torch.device | None = None, amp: str = "off") -> pd.DataFrame:
    """Per-utterance predictions (backbone-only forward, as at inference; spec 2.14).

    `dialogues` hold features as the extractors wrote them; the training split's standardization stored
    in the checkpoint (load_model sets model.feature_stats) is applied to copies of them here.
    Columns: utterance_id, dialogue_id, label (name, "" if unlabelled), prediction (name), prob_<class>...
    """
    if device is None:
        device = next(model.parameters()).device
    else:  # the model goes where the batches go (load_model leaves it on the CPU by default)
        device = resolve_device(device)
        model.to(device)
    classes = model.classes or [str(i) for i in range(model.spec.n_classes)]
    if isinstance(dialogues, Dialogue):
        raise TypeError("predict takes a list of dialogues; for one write predict(model, [dialogue])")
    dialogues = list(dialogues)
    if not dialogues:
        raise ValueError("predict got no dialogues")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1 (dialogues per forward pass), got {batch_size!r}")
    for d in dialogues:
        missing = [m for m in model.spec.modalities if m not in d.features]
        if missing:
            raise ValueError(f"the model needs {list(model.spec.modalities)} features; dialogue {d.dialogue_id} "
                             f"lacks {missing}")
        if len(d.labels) and int(d.labels.max()) >= len(classes):
            raise ValueError(f"dialogue {d.dialogue_id} has label id {int(d.labels.max())}, but the model has "
                             f"{len(classes)} classes {list(classes)} "
                             f"(label ids 0..{len(classes) - 1}, -1 = unlabelled)")
        # Checked here on the CPU tensors: the forward checks CPU batches only, and on a GPU an out-of-range slot is
        # a device-side assert that names nothing and leaves the CUDA context unusable.
        n_speakers = model.spec.n_speakers
        if model.spec.speaker_embeddings and len(d.speakers) and not 0 <= int(d.speakers.min()) <= \
                int(d.speakers.max()) < n_speakers:
            raise ValueError(f"dialogue {d.dialogue_id} has speaker slots {int(d.speakers.min())}.."
                             f"{int(d.speakers.max())}, but the model has {n_speakers} (slots 0..{n_speakers - 1})")
    check_dialogue_widths(model, dialogues)
    if getattr(model, "feature_stats", None):
        dialogues = [dataclasses.replace(d, features=dict(d.features)) for d in dialogues]
        standardize(dialogues, model.feature_stats)
    result = run_eval(model, eval_batches(dialogues, batch_size), device, amp)
    return predictions_frame(result, classes)


def predictions_frame(result: EvalResult, classes: Sequence[str], split: str | None = None) -> pd.DataFrame:
    probs = result.probabilities()
    frame = pd.DataFrame({"utterance_id": result.utterance_ids, "dialogue_id": result.dialogue_ids})
    if split is not None:
        frame["split"] = split
    frame["label"] = [classes[i] if i >= 0 else "" for i in result.labels]
    frame["prediction"] = [classes[i] for i in result.predictions]
    for i, c in enumerate(classes):
        frame[f"prob_{c}"] = probs[:, i]
    return frame
