"""Evaluation passes, checkpoint loading and prediction (used by the trainer and by the inference command)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ercpipe.device import resolve_device
from ercpipe.errors import ErcpipeError
from ercpipe.io import features as feature_io
from ercpipe.model.sdt import ModelSpec, SDTVega, build_model
from ercpipe.train.data import Batch, Dialogue, collate, standardize

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "ercpipe-sdt-vega"


class CheckpointError(ErcpipeError, ValueError):
    """A checkpoint file is missing or does not fit; the message names the file and what to do."""


def autocast_context(device: torch.device, amp: str):
    """fp16 / bf16 autocast on CUDA; nothing on CPU (mixed precision there is slower and not needed)."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


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


def load_checkpoint_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; train the model first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is not ours
        raise CheckpointError(f"{path} cannot be read as an ercpipe checkpoint ({type(err).__name__}: {err}); "
                              "it may be truncated or not a checkpoint") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an ercpipe SDT/SDT-VEGA checkpoint (no format marker "
                              f"{CHECKPOINT_FORMAT!r}); official checkpoints load with "
                              "ercpipe.model.load_official_backbone")
    return payload


def load_model(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> tuple[SDTVega, dict, list[str]]:
    """(model in eval mode on `device`, resolved experiment config, classes) from a model.pt written by
    run_training. weights_only loading, strict keys."""
    payload = load_checkpoint_file(checkpoint_path)
    spec = ModelSpec.from_dict(payload["spec"])
    model = build_model(spec)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint_path}: the stored weights do not fit the stored model spec: {err}") from err
    model.classes = list(payload["classes"])
    model.feature_stats = payload.get("feature_stats")
    model.feature_sources = payload.get("features") or {}
    model.checkpoint_path = str(checkpoint_path)
    model.to(resolve_device(device)).eval()
    return model, payload["config"], list(payload["classes"])


def trained_on(model: SDTVega, modality: str) -> str:
    """'audio features of width 1582 (setting is10: {feature_set: IS10, level: functionals})': what the
    model was trained on, from its checkpoint's records (setting name = the training file's stem)."""
    source = (getattr(model, "feature_sources", None) or {}).get(modality) or {}
    width = model.spec.input_dims.get(modality)
    text = f"{modality} features of width {width}"
    if source.get("settings") is not None:
        name = Path(source["path"]).stem if source.get("path") else None
        text += (f" (setting {name}: " if name else " (setting ") + \
            f"{feature_io.describe_settings(source['settings'])})"
    return text


def feature_expectations(model: SDTVega, checkpoint: str | Path | None = None) -> dict[str, feature_io.Expectation]:
    """Per modality of the model, what a feature file given to it must be: the width it was trained on
    and, where the checkpoint recorded it, the setting hash of its training file (pass the result as
    load_dialogues(..., expected=...))."""
    checkpoint = checkpoint or getattr(model, "checkpoint_path", None) or "the checkpoint"
    expected = {}
    for m in model.spec.modalities:
        source = (getattr(model, "feature_sources", None) or {}).get(m) or {}
        settings = source.get("settings") if isinstance(source.get("settings"), dict) else None
        fix = (f"give the {m} file made with that setting, or extract it again with that setting "
               "(ercpipe predict --conversation runs the checkpoint's extractors on raw media)")
        expected[m] = feature_io.Expectation(
            modality=m, settings=settings, setting_hash=source.get("setting_hash") or None,
            dim=model.spec.input_dims.get(m),
            source=f"the checkpoint {checkpoint}, trained on {trained_on(model, m)}", fix=fix)
    return expected


def check_dialogue_widths(model: SDTVega, dialogues: Sequence[Dialogue]) -> None:
    """Every dialogue's feature width must be the one the model was trained on (else a CheckpointError
    naming the modality and the training setting, instead of a tensor shape error deep in the model)."""
    problems = []
    for m in model.spec.modalities:
        want = model.spec.input_dims.get(m)
        widths = sorted({int(d.features[m].shape[1]) for d in dialogues if m in d.features})
        wrong = [w for w in widths if w != want]
        if wrong:
            problems.append(f"the {m} features have width {wrong[0]}, but the model{_named(model)} was trained on "
                            f"{trained_on(model, m)}; give {m} features made with that setting")
    if problems:
        raise CheckpointError("; ".join(problems))


def _named(model: SDTVega) -> str:
    path = getattr(model, "checkpoint_path", None)
    return f" {path}" if path else ""


def predict(model: SDTVega, dialogues: Sequence[Dialogue], batch_size: int = 32,
            device: str | torch.device | None = None, amp: str = "off") -> pd.DataFrame:
    """Per-utterance predictions (backbone-only forward, as at inference; spec 2.14).

    `dialogues` hold features as the extractors wrote them; the training split's standardisation stored
    in the checkpoint (load_model sets model.feature_stats) is applied to copies of them here.
    Columns: utterance_id, dialogue_id, label (name, "" if unlabelled), prediction (name), prob_<class>...
    """
    device = next(model.parameters()).device if device is None else resolve_device(device)
    classes = model.classes or [str(i) for i in range(model.spec.n_classes)]
    missing = [m for m in model.spec.modalities if dialogues and m not in dialogues[0].features]
    if missing:
        raise ValueError(f"the model needs {list(model.spec.modalities)} features; the dialogues lack {missing}")
    dialogues = list(dialogues)
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
