"""Optional step before text extraction: fine-tune the text encoder on the emotion labels (COSMIC-style).

The encoder (AutoModel) plus a linear head (dropout -> linear) learns to classify each TRAIN
utterance from its pooled vector; after every epoch the VALID split is scored and the epoch with the
best valid weighted F1 (ties: the earlier epoch) is kept. Epoch 0 is the encoder before training, so
a run that never improves keeps the original weights. Test rows are dropped right after the
manifest is read: nothing about them (text, labels, count) reaches this step. The kept encoder is
saved with save_pretrained together with its tokenizer and metrics.json, into a directory that
appears only when complete; `text.extract_shard(..., context=ExtractionContext(encoder_dir=...))` then uses it.

Inputs are built exactly as the extractor builds them (same pooling and context settings), so the
head is trained on the vectors the extractor will later write. Utterances with empty text are left
out (and counted in metrics.json). Computation is float32 unless `amp` asks for autocast (fp16 with a
GradScaler on CUDA, bf16 on CUDA or a CPU with bf16 kernels; ercpipe.model.inference.effective_amp); the weights
stay float32 either way.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from typing import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ercpipe import labels as labels_mod
from ercpipe.datasets import FINETUNE_VIEW
from ercpipe.device import device_description, rng_state, set_rng_state
from ercpipe.features import settings as settings_mod
from ercpipe.features import text_encoder as text_mod  # the encoder, not the extraction module
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.io.atomic import atomic_dir, write_json
from ercpipe.model.checkpoint import save_torch
from ercpipe.model.inference import autocast_context, effective_amp
from ercpipe.scores import is_better
from ercpipe.model.losses import inverse_frequency_weights, paper_class_weights
from ercpipe.runlog import outputs_complete

logger = logging.getLogger(__name__)

# The training keys (the `finetune` entry of a text setting), their defaults and checks: in
# ercpipe.features.settings, with the text setting's.
DEFAULT_SETTINGS = settings_mod.FINETUNE_DEFAULTS
finetune_settings = settings_mod.finetune_settings
training_view = settings_mod.training_view  # what a fine-tuned encoder depends on (its metrics.json holds it)

GROUP_POOL_BATCHES = 50  # a shuffled pool of this many batches is sorted by length before it is cut
MAX_GRAD_NORM = 1.0
TRAIN_SPLITS = FINETUNE_VIEW["splits"]  # what the workflow digests to decide a re-run (ercpipe.datasets)


def _classes(rows: pd.DataFrame, manifest_path) -> list[str]:
    """The dataset's class list (label-id order): summary.json's beside the manifest (what the dataset
    declares, read as training reads it), else IEMOCAP's or MELD's if the labels are theirs, else the sorted
    labels."""
    from ercpipe.train.data import DataError, read_classes

    try:
        return read_classes(manifest_path)
    except DataError:  # no summary.json (a hand-made manifest), or one without a class list
        pass
    seen = set(rows["label"])
    for classes in labels_mod.CLASSES_BY_FORMAT.values():
        if seen <= set(classes):
            return list(classes)
    return sorted(seen)


def _weighted_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    total, score = len(y_true), 0.0
    for c in range(n_classes):
        support = int((y_true == c).sum())
        if not support:
            continue
        tp = int(((y_pred == c) & (y_true == c)).sum())
        predicted = int((y_pred == c).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        score += f1 * support / total
    return score


def _epoch_batches(lengths: list[int], batch: int, group_by_length: bool, generator: torch.Generator) -> list[list[int]]:
    """One epoch's batches of input indices, every index once.

    Padding is most of the cost on a CPU when inputs carry context (lengths vary 3-5x). With
    group_by_length a random pool of GROUP_POOL_BATCHES batches is sorted by length and cut into
    batches, and the batches are shuffled: each batch is still a random draw, just of similar lengths.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if not group_by_length:
        return [order[start:start + batch] for start in range(0, len(order), batch)]
    batches = []
    pool = batch * GROUP_POOL_BATCHES
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[k:k + batch] for k in range(0, len(chunk), batch)]
    return [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]


def resume_path(out_dir: Path) -> Path:
    """Where a fine-tuning keeps its state between epochs: beside its output folder, which Snakemake deletes
    before it runs a killed job again."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.resume.pt")


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _input_identity(view: dict, classes: list[str], data: dict) -> dict:
    """What a resume state must have been made from: the training view, the class list and a digest of the
    train and valid inputs (token ids, target span, label) in order."""
    digest = hashlib.sha256()
    for split in TRAIN_SPLITS:
        inputs, label_ids = data[split]
        digest.update(f"{split}:{len(inputs)}".encode())
        for item, label in zip(inputs, label_ids):
            digest.update(f"{list(item.ids)}|{item.target_start}|{item.target_end}|{int(label)};".encode())
    return {"settings": json.loads(json.dumps(view)), "classes": list(classes), "inputs": digest.hexdigest()}


def _save_resume(path: Path, payload: dict) -> None:
    save_torch(payload, path)


def _load_resume(path: Path, identity: dict) -> dict | None:
    """The state in `path` when it was made from `identity`'s settings, classes and inputs; else None (a state
    made from anything else is deleted, with the reason in the log)."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file: say which and how to go on
        first_line = (str(err).splitlines() or [""])[0]
        raise ValueError(f"{path} (the state of an interrupted fine-tuning) cannot be read ({type(err).__name__}: "
                         f"{first_line}); delete it to fine-tune from the start") from err
    stored = payload.get("identity") or {}
    differ = [key for key in identity if stored.get(key) != identity[key]]
    if differ:
        logger.warning("not resuming from %s: it was made with other %s; fine-tuning from the start", path,
                       " and ".join({"settings": "settings", "classes": "classes", "inputs": "train or valid rows"}[k]
                                    for k in differ))
        path.unlink()
        return None
    return payload


class _Classifier(torch.nn.Module):
    def __init__(self, encoder: text_mod.TextEncoder, n_classes: int, dropout: float):
        super().__init__()
        self.text = encoder
        self.encoder = encoder.model  # registered so parameters() and train()/eval() reach it
        self.head = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(encoder.dim, n_classes))

    def forward(self, batch: list[text_mod.EncodedInput]) -> torch.Tensor:
        return self.head(self.text.forward_pooled(batch))


def _evaluate(model: _Classifier, inputs: list, y: np.ndarray, batch_size: int, n_classes: int,
              amp: str = "off") -> dict:
    model.eval()
    predictions = np.zeros(len(inputs), dtype=np.int64)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].ids))  # less padding
    with torch.inference_mode(), autocast_context(model.text.device, amp):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            predictions[chunk] = model([inputs[i] for i in chunk]).argmax(-1).cpu().numpy()
    return {"accuracy": float((predictions == y).mean()), "weighted_f1": _weighted_f1(y, predictions, n_classes)}


def _split_inputs(encoder: text_mod.TextEncoder, rows: pd.DataFrame, classes: list[str]):
    """Inputs and label ids per split (train, valid); empty-text rows are counted and left out."""
    texts = [str(t).strip() for t in rows["text"]]
    usable = [bool(t) and not manifest_io.has_flag(f, "empty_text") for t, f in zip(texts, rows["flags"])]
    inputs = encoder.build_inputs(texts, rows["speaker"].tolist(), rows["dialogue_id"].tolist(), usable)
    class_id = {c: i for i, c in enumerate(classes)}
    out, skipped = {}, {}
    for split in TRAIN_SPLITS:
        keep = [n for n in range(len(rows)) if rows["split"].iat[n] == split and inputs[n] is not None
                and inputs[n].target_end > inputs[n].target_start]
        skipped[split] = int((rows["split"] == split).sum()) - len(keep)
        label_ids = np.array([class_id[rows["label"].iat[n]] for n in keep], dtype=np.int64)
        out[split] = ([inputs[n] for n in keep], label_ids)
    return out, skipped


def loss_class_weights(choice: str, classes: list[str], train_y: np.ndarray, where) -> tuple[np.ndarray | None, str]:
    """(weights of the fine-tuning cross-entropy or None, where they came from); as the SDT loss's choices."""
    if choice == "none":
        return None, "none"
    if choice == "train":
        weights, absent = inverse_frequency_weights(train_y, len(classes))
        if absent:
            logger.warning("classes %s have no train utterance; they get the largest weight",
                           [classes[c] for c in absent])
        return weights, "inverse frequency over train"
    weights = paper_class_weights(classes)
    if weights is None:
        raise ValueError(f"{where}: finetune.class_weights 'paper' exists only for IEMOCAP's and MELD's class lists, "
                         f"not {classes}; use 'train' (inverse train frequency) or 'none'")
    return weights, "official (paper)"


def warmup_linear_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, steps: int):
    """Learning rate lr * (s + 1) / warmup_steps for optimizer step s < warmup_steps, then linear decay to 0.

    Not transformers' get_linear_schedule_with_warmup: that one gives lr * s / warmup_steps during the
    warm-up, so its first step runs at lr 0 and every warm-up step one step behind this schedule (the two
    agree after the warm-up and when warmup_steps is 0); tests/test_finetune.py compares them step by step.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup_steps) if step < warmup_steps
        else max(0.0, (steps - step) / max(1, steps - warmup_steps)))


def finetune_text_encoder(manifest_path, settings: dict, out_dir: Path, threads: int = 1,
                          device: str = "auto", classes: Sequence[str] | None = None,
                          on_epoch_end: Callable[[int], None] | None = None) -> None:
    """Fine-tune on TRAIN, pick the epoch on VALID, save the encoder + tokenizer + metrics.json to out_dir.

    `settings` is the text setting (the dict extract_shard gets); its `finetune` entry holds the
    training keys. `classes`: the dataset's class list in label-id order (the pipeline passes it; None:
    summary.json's beside the manifest, else guessed from the labels).

    Resume: after every epoch but the last, the training state (model, optimizer, schedule, batch order and
    dropout generators, history, the selected weights) is written beside `out_dir` (resume_path), and a run
    that finds one made from the same settings, classes and inputs continues after that epoch, with the same
    result as an uninterrupted run; a state made from anything else is discarded. `on_epoch_end(epoch)` is
    called after that state is written (tests stop a run there).
    """
    view = training_view(settings)
    train = {**settings_mod.VIEW_LEAVES_OUT, **view["finetune"]}  # the defaults the view leaves out, back in
    torch.set_num_threads(max(1, int(threads)))
    manifest = manifest_io.read(manifest_path)
    rows = manifest[manifest["split"].isin(TRAIN_SPLITS)].reset_index(drop=True)  # test never goes further
    del manifest
    counts = rows["split"].value_counts().to_dict()
    for split in TRAIN_SPLITS:
        if not counts.get(split):
            raise ValueError(f"{manifest_path}: no {split} rows; fine-tuning needs train rows to learn from and "
                             f"valid rows to choose the epoch (a dataset without valid rows: "
                             f"{manifest_io.valid_split_hint(rows)})")
    classes = list(classes) if classes is not None else _classes(rows, manifest_path)
    random.seed(train["seed"])
    np.random.seed(train["seed"])
    torch.manual_seed(train["seed"])
    encoder = text_mod.TextEncoder({"model": view["model"], "pooling": view["pooling"], "context": view["context"],
                                    "max_length": train["max_length"], "batch_size": train["batch_size"],
                                    "normalize": False, "dtype": "fp32"}, device)
    model = _Classifier(encoder, len(classes), train["head_dropout"]).to(encoder.device)
    data, skipped = _split_inputs(encoder, rows, classes)
    (train_x, train_y), (valid_x, valid_y) = data["train"], data["valid"]
    if not train_x or not valid_x:
        raise ValueError(f"{manifest_path}: after leaving out empty transcripts there are {len(train_x)} train "
                         f"and {len(valid_x)} valid utterances; both must be > 0")
    weights, weights_source = loss_class_weights(train["class_weights"], classes, train_y, manifest_path)
    loss_weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=encoder.device)
    requested = train["amp"]
    amp = effective_amp(encoder.device, requested)
    if amp != requested:
        logger.warning("finetune.amp is %s, which runs as fp32 on %s (fp16: CUDA only; bf16: CUDA or a CPU with bf16 "
                       "kernels or a GPU of compute capability 8.0+)", requested, encoder.device)
    precision = "fp32" if amp == "off" else f"{amp} autocast"
    logger.info("fine-tuning %s on %d train utterances, choosing the epoch on %d valid, %d classes %s, device %s, "
                "%s", view["model"], len(train_x), len(valid_x), len(classes), classes, encoder.device, precision)

    batch = train["batch_size"]
    steps = train["epochs"] * math.ceil(len(train_x) / batch)
    warmup_steps = int(round(train["warmup"] * steps))
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    scheduler = warmup_linear_decay(optimizer, warmup_steps, steps)
    generator = torch.Generator().manual_seed(train["seed"])
    scaler = torch.amp.GradScaler("cuda", enabled=encoder.device.type == "cuda" and amp == "fp16")

    state_path = resume_path(out_dir)
    identity = _input_identity(view, classes, data)
    resumed = _load_resume(state_path, identity)
    if resumed is None:
        history = [{"epoch": 0, "train_loss": None,
                    "valid": _evaluate(model, valid_x, valid_y, batch, len(classes), amp)}]
        best_epoch, best_score, elapsed, skipped_steps = 0, history[0]["valid"]["weighted_f1"], 0.0, 0
        best_state = _cpu_copy(model.encoder.state_dict())
        logger.info("epoch 0 (before training): valid %s", history[0]["valid"])
    else:
        history, best_epoch, best_score = resumed["history"], resumed["best_epoch"], float(resumed["best_score"])
        elapsed = float(resumed["seconds"])
        # The selected weights: the encoder before training (epoch 0), the resumed epoch's, or those saved.
        best_state = (_cpu_copy(model.encoder.state_dict()) if best_epoch == 0
                      else resumed["best_encoder"] if best_epoch < resumed["epoch"] else None)
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        generator.set_state(resumed["generator"])
        if resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
        skipped_steps = int(resumed.get("skipped_steps") or 0)
        set_rng_state(resumed["rng"], encoder.device)
        if best_state is None:
            best_state = _cpu_copy(model.encoder.state_dict())
        logger.info("resuming from %s after epoch %d of %d (best valid weighted F1 %.4f at epoch %d)", state_path,
                    resumed["epoch"], train["epochs"], best_score, best_epoch)
    devices = list(resumed.get("devices") or []) if resumed is not None else []
    here = device_description(encoder.device, precision)
    if devices and not feature_io.same_kind(devices[-1], here):  # another GPU of the same model is no change
        logger.warning("this fine-tuning ran on %s until epoch %d and continues on %s: its weights differ from an "
                       "uninterrupted run on either (metrics.json: devices lists both)", devices[-1],
                       resumed["epoch"], here)
    if not devices or devices[-1] != here:
        devices.append(here)
    lengths = [len(x.ids) for x in train_x]
    for epoch in range(len(history), train["epochs"] + 1):
        started = time.perf_counter()
        model.train()
        losses = []
        for chunk in tqdm(_epoch_batches(lengths, batch, train["group_by_length"], generator),
                          desc=f"fine-tune epoch {epoch}", unit="batch"):
            target = torch.from_numpy(train_y[chunk]).to(encoder.device)
            with autocast_context(encoder.device, amp):
                logits = model([train_x[i] for i in chunk])
            loss = torch.nn.functional.cross_entropy(logits.float(), target, weight=loss_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # the clipping norm is of the true gradients
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            scale = scaler.get_scale() if scaler.is_enabled() else None
            scaler.step(optimizer)  # skipped when fp16 gradients overflowed (the scale then shrinks)
            scaler.update()
            if scale is not None and scaler.get_scale() < scale:
                skipped_steps += 1
            scheduler.step()
            losses.append(float(loss.detach()))
        valid = _evaluate(model, valid_x, valid_y, batch, len(classes), amp)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "valid": valid})
        logger.info("epoch %d: train loss %.4f, valid %s", epoch, history[-1]["train_loss"], valid)
        if is_better(valid["weighted_f1"], best_score):  # a tie keeps the earlier epoch
            best_epoch, best_score = epoch, valid["weighted_f1"]
            best_state = _cpu_copy(model.encoder.state_dict())
        elapsed += time.perf_counter() - started
        if epoch < train["epochs"]:
            _save_resume(state_path, {
                "identity": identity, "epoch": epoch, "history": history, "best_epoch": best_epoch,
                "best_score": best_score, "seconds": elapsed, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(), "rng": rng_state(encoder.device),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "skipped_steps": skipped_steps,
                "devices": devices,
                # the selected weights only when they are neither the pretrained encoder's nor this epoch's
                "best_encoder": best_state if 0 < best_epoch < epoch else None})
            if on_epoch_end is not None:
                on_epoch_end(epoch)

    model.encoder.load_state_dict(best_state)
    metrics = {
        "model": view["model"], "settings": view, "classes": classes,
        "selected_epoch": best_epoch, "selected_by": "valid weighted_f1",
        "valid_at_selected_epoch": history[best_epoch]["valid"], "history": history,
        "utterances": {"train": len(train_x), "valid": len(valid_x)},
        "class_weights": {"source": weights_source, "values": None if weights is None else [float(w) for w in weights]},
        "skipped_empty_text": skipped, "splits_read": list(TRAIN_SPLITS),
        "seconds": elapsed, "device": str(encoder.device),
        "devices": devices,  # where and in what precision it ran, e.g. ["cuda:0 (NVIDIA H100 ...), fp16 autocast"]
        "precision": precision,
        "skipped_steps": skipped_steps,  # fp16 steps the GradScaler skipped (overflowing gradients); else 0
    }
    with atomic_dir(out_dir) as tmp:
        model.encoder.save_pretrained(tmp)
        encoder.tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / "metrics.json", metrics)
    outputs_complete()  # before the resume state goes: a stop from here on must not fail the job
    state_path.unlink(missing_ok=True)  # complete: a forced re-run fine-tunes from the start
    logger.info("fine-tuned encoder saved to %s (epoch %d, valid weighted F1 %.4f)", out_dir, best_epoch, best_score)
