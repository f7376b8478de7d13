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
out (and counted in metrics.json). Computation is float32 (no mixed precision).
"""
from __future__ import annotations

import logging
import math
import random
import time
from typing import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ercpipe import labels as labels_mod
from ercpipe.datasets import FINETUNE_VIEW
from ercpipe.features import settings as settings_mod
from ercpipe.features import text_encoder as text_mod  # the encoder, not the extraction module
from ercpipe.io import manifest as manifest_io
from ercpipe.io.atomic import atomic_dir, write_json
from ercpipe.model.losses import inverse_frequency_weights, paper_class_weights

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


class _Classifier(torch.nn.Module):
    def __init__(self, encoder: text_mod.TextEncoder, n_classes: int, dropout: float):
        super().__init__()
        self.text = encoder
        self.encoder = encoder.model  # registered so parameters() and train()/eval() reach it
        self.head = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(encoder.dim, n_classes))

    def forward(self, batch: list[text_mod.EncodedInput]) -> torch.Tensor:
        return self.head(self.text.forward_pooled(batch))


def _evaluate(model: _Classifier, inputs: list, y: np.ndarray, batch_size: int, n_classes: int) -> dict:
    model.eval()
    predictions = np.zeros(len(inputs), dtype=np.int64)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].ids))  # less padding
    with torch.inference_mode():
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
                          device: str = "auto", classes: Sequence[str] | None = None) -> None:
    """Fine-tune on TRAIN, pick the epoch on VALID, save the encoder + tokenizer + metrics.json to out_dir.

    `settings` is the text setting (the dict extract_shard gets); its `finetune` entry holds the
    training keys. `classes`: the dataset's class list in label-id order (the pipeline passes it; None:
    summary.json's beside the manifest, else guessed from the labels).
    """
    view = training_view(settings)
    train = view["finetune"]
    torch.set_num_threads(max(1, int(threads)))
    manifest = manifest_io.read(manifest_path)
    rows = manifest[manifest["split"].isin(TRAIN_SPLITS)].reset_index(drop=True)  # test never goes further
    del manifest
    counts = rows["split"].value_counts().to_dict()
    for split in TRAIN_SPLITS:
        if not counts.get(split):
            raise ValueError(f"{manifest_path}: no {split} rows; fine-tuning needs train rows to learn from and "
                             "valid rows to choose the epoch (a dataset without valid rows: "
                             "datasets.<name>.valid_split: {fraction: 0.1, seed: 0} holds out train dialogues)")
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
    weights, weights_source = loss_class_weights(train.get("class_weights", "none"), classes, train_y, manifest_path)
    loss_weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=encoder.device)
    logger.info("fine-tuning %s on %d train utterances, choosing the epoch on %d valid, %d classes %s, device %s",
                view["model"], len(train_x), len(valid_x), len(classes), classes, encoder.device)

    batch = train["batch_size"]
    steps = train["epochs"] * math.ceil(len(train_x) / batch)
    warmup_steps = int(round(train["warmup"] * steps))
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    scheduler = warmup_linear_decay(optimizer, warmup_steps, steps)
    generator = torch.Generator().manual_seed(train["seed"])

    history = [{"epoch": 0, "train_loss": None, "valid": _evaluate(model, valid_x, valid_y, batch, len(classes))}]
    best_epoch, best_state = 0, {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}
    best_score = history[0]["valid"]["weighted_f1"]
    logger.info("epoch 0 (before training): valid %s", history[0]["valid"])
    lengths = [len(x.ids) for x in train_x]
    started = time.perf_counter()
    for epoch in range(1, train["epochs"] + 1):
        model.train()
        losses = []
        for chunk in tqdm(_epoch_batches(lengths, batch, train["group_by_length"], generator),
                          desc=f"fine-tune epoch {epoch}", unit="batch"):
            logits = model([train_x[i] for i in chunk])
            target = torch.from_numpy(train_y[chunk]).to(encoder.device)
            loss = torch.nn.functional.cross_entropy(logits, target, weight=loss_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        valid = _evaluate(model, valid_x, valid_y, batch, len(classes))
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "valid": valid})
        logger.info("epoch %d: train loss %.4f, valid %s", epoch, history[-1]["train_loss"], valid)
        if valid["weighted_f1"] > best_score:
            best_epoch, best_score = epoch, valid["weighted_f1"]
            best_state = {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}

    model.encoder.load_state_dict(best_state)
    metrics = {
        "model": view["model"], "settings": view, "classes": classes,
        "selected_epoch": best_epoch, "selected_by": "valid weighted_f1",
        "valid_at_selected_epoch": history[best_epoch]["valid"], "history": history,
        "utterances": {"train": len(train_x), "valid": len(valid_x)},
        "class_weights": {"source": weights_source, "values": None if weights is None else [float(w) for w in weights]},
        "skipped_empty_text": skipped, "splits_read": list(TRAIN_SPLITS),
        "seconds": time.perf_counter() - started, "device": str(encoder.device),
    }
    with atomic_dir(out_dir) as tmp:
        model.encoder.save_pretrained(tmp)
        encoder.tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / "metrics.json", metrics)
    logger.info("fine-tuned encoder saved to %s (epoch %d, valid weighted F1 %.4f)", out_dir, best_epoch, best_score)
