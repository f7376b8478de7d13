"""The training run: one seed of one experiment, resumable, writing everything atomically (docs/training.md).

Protocol. By default the model is selected on the manifest's `valid` split (IEMOCAP's 12 standard
validation dialogues, MELD dev) and the test split is touched once, at the end, with the selected
checkpoint: the training loop never receives the test dialogues. `train.paper_compat: true` gives the
official protocol instead (O8): train on train + valid, select the best epoch on test (scores rounded to
two decimals as the official code compares them, O19), hard-coded whole-dataset class weights (O10).
The protocol is recorded in metrics.json.
"""
from __future__ import annotations

import csv
import ctypes
import hashlib
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ercpipe.device import device_description, resolve_device, rng_state, set_rng_state
from ercpipe.errors import MORE_MEMORY, ErcpipeError, is_out_of_memory
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.io.atomic import atomic_path, remove_stale_temporaries, write_json
from ercpipe.model.anchors import subsample_anchor_images
from ercpipe.model.batch import standardize
from ercpipe.model.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, checkpoint_payload, load_checkpoint_file,
                                      model_from_payload, save_torch)
from ercpipe.model.inference import (EvalResult, autocast_context, bf16_fallback_note, effective_amp, eval_batches,
                                     predictions_frame, run_eval)
from ercpipe.labels import official_class_list
from ercpipe.model.losses import SDTVegaLoss, inverse_frequency_weights, paper_class_weights
from ercpipe.model.sdt import ModelSpec, SDTVega, build_model, count_parameters
from ercpipe.model.spec import spec_from_experiment
from ercpipe.train.data import DialogueData, batches, load_dialogues, mask_feature_dims, standardization
from ercpipe.scores import is_better
from ercpipe.train.metrics import SCALAR_METRICS, classification_metrics, weighted_f1
from ercpipe.runlog import job_end_time, outputs_are_complete, outputs_complete
from ercpipe.train.presets import active_settings, inactive_keys, resolve_experiment, without_non_training_keys

logger = logging.getLogger(__name__)

# model.pt is the rule's output and appears only when the run has finished; while training, the resume
# state (which holds the selected epoch's weights too) lives in last.pt, which Snakemake does not know about
# (it deletes a killed job's outputs before re-running it, and the resume state must survive that).
# best.pt is where versions before train.checkpoint_every kept the selected weights: still read on resume.
BEST_NAME, WORK_BEST_NAME, LAST_NAME = "model.pt", "best.pt", "last.pt"
# The history while the run goes on; history.tsv (an output) is written at the end only, so a killed run leaves no
# well-formed but partial history.tsv.
RUNNING_HISTORY_NAME = "history.running.tsv"


class TrainingError(ErcpipeError, ValueError):
    """The run cannot start or continue as configured; the message says why and what to do."""


# ------------------------------------------------------------------------------------------ set-up

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def model_spec(cfg: dict, data: DialogueData, clip_dim: int) -> ModelSpec:
    return spec_from_experiment(cfg, input_dims=data.dims, n_classes=len(data.classes), n_speakers=data.n_speakers,
                                clip_dim=clip_dim, trained_speakers=data.trained_speakers)


def _dataset_format(manifest_path) -> str | None:
    """The `format` the dataset's summary.json records (None without one)."""
    summary = Path(manifest_path).parent / "summary.json"
    return json.loads(summary.read_text()).get("format") if summary.is_file() else None


def class_weights_for(cfg: dict, data: DialogueData, train_splits: tuple[str, ...]) -> tuple[np.ndarray | None, str]:
    """(weights or None, where they came from). 'auto' = train-split inverse frequency, or the official
    hard-coded vector under train.paper_compat."""
    choice = cfg["loss"]["class_weights"]
    n = len(data.classes)
    if isinstance(choice, list):
        if len(choice) != n:
            raise TrainingError(f"loss.class_weights has {len(choice)} values for {n} classes {data.classes}")
        return np.asarray(choice, dtype=np.float32), "configured"
    if choice == "none":
        return None, "none"
    if choice == "paper" or (choice == "auto" and cfg["train"]["paper_compat"]):
        weights = paper_class_weights(data.classes)
        if weights is not None:
            official = official_class_list(data.classes).upper()
            fmt = _dataset_format(data.source) if data.source else None
            if fmt not in (None, "iemocap", "meld", "vega_pickle", "sdt_pickle"):
                logger.warning("loss.class_weights = 'paper': the official vector is %s's whole-dataset counts; this "
                               "dataset (format %s) only shares its class names ('train' weighs by its own counts)",
                               official, fmt)
            return weights, f"paper (official hard-coded {official} whole-dataset counts, includes test labels)"
        if choice == "paper":
            raise TrainingError(f"loss.class_weights = 'paper' exists only for IEMOCAP and MELD classes, not "
                                f"{data.classes}; use 'train' or a list")
        logger.warning("no official class weights for classes %s; using training-split inverse frequency", data.classes)
    weights, absent = inverse_frequency_weights(data.labels(*train_splits), n)
    if absent:
        logger.warning("class(es) %s have no training utterance; they get the largest weight",
                       [data.classes[i] for i in absent])
    return weights, f"inverse frequency over {'+'.join(train_splits)}"


def read_anchors(anchor_path, cfg: dict):
    from ercpipe import anchors as anchor_io

    return anchor_io.read(anchor_path, expect_clip_model=cfg["model"]["clip_model"])


def prepare_anchors(model: SDTVega, cfg: dict, anchor_set, classes: list[str]) -> dict:
    """Put the anchor set's centers and images (dataset label order, optionally subsampled) into the model."""
    centers, images = anchor_set.for_classes(classes)
    per_class = cfg["model"]["anchors_per_class"]
    if per_class is not None:
        centers, images = subsample_anchor_images(images, per_class, cfg["model"]["anchor_subsample_seed"], classes)
    model.set_anchors(centers, images)
    return {"clip_model": anchor_set.clip_model, "dim": anchor_set.dim, "source": anchor_set.source,
            "images_per_class": [int(x.shape[0]) for x in images]}


def make_optimizer(model: SDTVega, train: dict) -> torch.optim.Optimizer:
    # One group over every trainable parameter: the official code decays biases, norms, embeddings and
    # temperatures too (O21).
    # The fused kernels (CPU and CUDA) compute the same update with far fewer small ops.
    params = [p for p in model.parameters() if p.requires_grad]
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"],
                                 betas=tuple(train["betas"]), eps=train["eps"], fused=True)
    if train["optimizer"] == "adam":  # SDT: coupled L2
        return torch.optim.Adam(params, lr=train["lr"], weight_decay=train["weight_decay"],
                                betas=tuple(train["betas"]), eps=train["eps"], fused=True)
    return torch.optim.SGD(params, lr=train["lr"], weight_decay=train["weight_decay"], momentum=train["momentum"])


def limit_allocator_caches() -> None:
    """Keep a CPU training process's resident memory near what it uses (docs/model.md, "Benchmarks": about
    0.3 GiB less in fp32, 0.9 GiB less with bf16, at no measurable cost in speed):
    * glibc serves blocks of 1 MiB and more with mmap, so freed tensors go back to the system instead of
      staying in fragmented heap arenas (glibc's default threshold climbs to 32 MiB after the first frees);
    * oneDNN keeps at most 8 primitives: batches have a new shape every step, and every cached primitive
      (bf16 matrix products go through oneDNN) holds its own buffers;
    * so does ideep's own cache of computations (LRU_CACHE_CAPACITY, 1024 by default), which sits in front of
      oneDNN's: with bf16 it kept about 30 MiB more per epoch (a new entry for every new batch shape) and
      raised a 10-epoch run's peak from 2.4 to 2.8 GiB; 8 entries stop that growth at no cost in speed.
    Environment settings win (MALLOC_MMAP_THRESHOLD_, ONEDNN_PRIMITIVE_CACHE_CAPACITY, LRU_CACHE_CAPACITY).
    Both cache sizes are read from the environment when the cache is first used, so setting them here, after
    torch is imported, works (measured) as long as no oneDNN / ideep operation ran before in this process."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")
    os.environ.setdefault("LRU_CACHE_CAPACITY", "8")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (glibc)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def amp_description(device: torch.device, amp: str) -> str:
    """What train.amp does on this device (ercpipe.model.inference.effective_amp)."""
    if amp == "off":
        return "off (fp32)"
    if effective_amp(device, amp) != "off":
        return f"{amp} autocast"
    if amp == "fp16":
        return "fp16 requested, fp32 on the CPU"
    return f"bf16 requested, {bf16_fallback_note(device)}"


def device_label(device: torch.device, amp: str) -> str:
    """Where and how a run trains, as metrics.json records it (`devices`)."""
    return device_description(device, amp_description(device, amp))


def make_scheduler(optimizer, train: dict, steps_per_epoch: int):
    if train["scheduler"] == "none":
        return None
    total = max(1, train["epochs"] * steps_per_epoch)
    warmup = int(train["warmup_fraction"] * total)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _json_clean(obj):
    """Plain JSON types only, so checkpoints load with weights_only=True."""
    return json.loads(json.dumps(obj, default=str))


# ------------------------------------------------------------------------------------------ epochs

def train_epoch(model, loss_fn, optimizer, scaler, scheduler, train_dialogues, cfg, device) -> dict:
    train = cfg["train"]
    model.train()
    sums: dict[str, torch.Tensor] = {}
    n_total, skipped, steps = 0, 0, 0
    # No progress bar per batch: an epoch takes seconds, and the epochs bar and the epoch log lines say enough.
    for cpu_batch in batches(train_dialogues, train["batch_size"], shuffle=True):
        cpu_batch = mask_feature_dims(cpu_batch, train["feature_mask_ratio"])
        batch = cpu_batch.to(device)
        with autocast_context(device, train["amp"]):
            out = model(batch.features, batch.speakers, batch.mask)
            loss, parts = loss_fn(model, out, batch.labels, batch.mask)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if train["grad_clip"]:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
        if scaler.is_enabled():
            scale_before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() < scale_before:  # the step was skipped (inf/NaN gradients)
                skipped += 1
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = int((cpu_batch.labels >= 0).sum())
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v.float() * n
        n_total += n
        steps += 1
    row = {f"train_{k}": float(v) / max(n_total, 1) for k, v in sums.items()}
    row.update(steps=steps, skipped_steps=skipped, lr=optimizer.param_groups[0]["lr"])
    return row


def split_metrics(result: EvalResult, classes: list[str]) -> dict:
    metrics = classification_metrics(result.labels, result.predictions, classes)
    metrics["unimodal_weighted_f1"] = {h: weighted_f1(result.labels, z.argmax(1), len(classes))
                                       for h, z in result.logits.items() if h != "all"}
    if result.losses:
        metrics["loss"] = dict(result.losses)
    return metrics


def history_row(split: str, metrics: dict) -> dict:
    row = {f"{split}_{k}": metrics[k] for k in SCALAR_METRICS}
    row.update({f"{split}_f1_{h}": v for h, v in metrics["unimodal_weighted_f1"].items()})
    row.update({f"{split}_loss_{k}": v for k, v in metrics.get("loss", {}).items()})
    return row


# ------------------------------------------------------------------------------------------ checkpoints

def write_history(history: list[dict], path: Path) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp:
        pd.DataFrame(history, columns=columns).to_csv(tmp, sep="\t", index=False, lineterminator="\n",
                                                      quoting=csv.QUOTE_MINIMAL, float_format="%.6g")


# ------------------------------------------------------------------------------------------ the run

def config_expectations(feature_settings: dict | None, feature_paths: dict, modalities,
                         face_selection: dict | None = None) -> dict[str, feature_io.Expectation] | None:
    """What each feature file must be, from the config's feature settings ({modality: setting dict}, the
    dicts under features.{modality}.{name}); the setting's name is the file's stem. None: nothing to check."""
    if feature_settings is None:
        return None
    expected = {}
    for m in modalities:
        if m not in feature_settings:
            logger.warning("no feature setting given for %s: its file %s is checked for its utterance ids only",
                           m, feature_paths.get(m))
            continue
        name = Path(feature_paths[m]).stem if m in feature_paths else None
        try:
            expected[m] = feature_io.expect(m, feature_settings[m], name=name,
                                            face_selection=face_selection if m == "visual" else None)
        except ValueError as err:
            raise TrainingError(f"the {m} feature setting {name!r} is not valid: {err}") from None
    return expected


def run_training(manifest_path, feature_paths: dict, anchor_path, experiment: dict, seed: int, out_dir,
                 device: str = "auto", threads: int | None = None,
                 on_epoch_end: Callable[[int], None] | None = None, *, feature_settings: dict | None = None,
                 face_selection: dict | None = None, classes: Sequence[str] | None = None) -> dict:
    """Train one seed; return the content of metrics.json. A run restarted on the same out_dir continues
    from out_dir/last.pt if that state belongs to the same config, seed and features, else starts afresh
    (logged). `on_epoch_end(epoch)` is called after each epoch, after the resume state if that epoch
    writes it (tests use it to kill the process there).

    Checkpoint policy: the selected epoch's weights are kept in memory; the resume state (with them) is
    written after every `train.checkpoint_every`-th epoch that does not end the run, and after the current
    epoch when SIGTERM or SIGINT arrives (the run then stops: SystemExit(143) for SIGTERM,
    KeyboardInterrupt for SIGINT; a second signal stops at once) or when an exception (e.g. from
    on_epoch_end) interrupts the run between epochs. model.pt is written once, at the end.

    feature_settings: {modality: the config's setting dict} the feature files must have been made with
    (the pipeline passes them; None = not checked). Each file's setting hash (and width, where the
    setting tells it) must match, else a FeatureFileError names the file, the differing keys and the
    fix. face_selection: the dataset's face-selection rule, part of a visual file's settings (None =
    not compared). Every file's utterance ids must be the manifest's in any case. classes: the dataset's class
    list in label-id order (the pipeline passes it; None: summary.json's beside the manifest).
    """
    out_dir = Path(out_dir)
    cfg = _json_clean(resolve_experiment(experiment))
    train_cfg, paper_compat = cfg["train"], cfg["train"]["paper_compat"]
    if threads:
        torch.set_num_threads(int(threads))
    device = resolve_device(device)
    if device.type == "cpu":
        limit_allocator_caches()
    seed_everything(seed)

    expected = config_expectations(feature_settings, feature_paths, cfg["model"]["modalities"], face_selection)
    data = load_dialogues(manifest_path, feature_paths, cfg["model"]["modalities"], classes=classes,
                          n_speakers=cfg["model"]["n_speakers"], expected=expected)
    train_splits = ("train", "valid") if paper_compat else ("train",)
    selection_split = "test" if paper_compat else "valid"
    train_dialogues = data.split(*train_splits)
    selection_dialogues = data.split(selection_split)
    if not train_dialogues:
        raise TrainingError(f"{manifest_path} has no {'/'.join(train_splits)} dialogues to train on")
    if not selection_dialogues:
        raise TrainingError(
            f"{manifest_path} has no '{selection_split}' dialogues, so no epoch can be selected. "
            + ("Give the manifest a valid split (IEMOCAP standard split, MELD dev; a dataset without one: "
               f"{manifest_io.valid_split_hint(manifest_io.read(manifest_path))}) or set train.paper_compat: true "
               "to select on test as the official code does." if not paper_compat else ""))

    feature_stats = None
    if train_cfg["feature_norm"] == "standardize":
        feature_stats = standardization(train_dialogues, data.modalities,
                                        {m: source["path"] for m, source in data.feature_sources.items()})
        standardize(data.dialogues, feature_stats)
        logger.info("features standardized with the statistics of the %s split (%s)", "+".join(train_splits),
                    ", ".join(f"{m}: {len(s['mean'])} dims" for m, s in feature_stats.items()))
    weights, weights_source = class_weights_for(cfg, data, train_splits)
    loss_fn = SDTVegaLoss(cfg["loss"], weights)
    vega = cfg["loss"]["clip_loss"]
    if vega and anchor_path is None:
        raise TrainingError("the experiment uses the VEGA branch (loss.clip_loss: true) but no anchor file was given")
    if not vega and anchor_path is not None:
        logger.info("loss.clip_loss is off: the anchor file %s is not used", anchor_path)
    anchor_set = read_anchors(anchor_path, cfg) if vega else None
    spec = model_spec(cfg, data, anchor_set.dim if vega else 512)
    model = build_model(spec)
    model.classes = list(data.classes)
    anchor_info = None
    if vega:
        anchor_info = {"path": str(anchor_path), **prepare_anchors(model, cfg, anchor_set, data.classes)}
    model.to(device)
    optimizer = make_optimizer(model, train_cfg)
    scheduler = make_scheduler(optimizer, train_cfg, math.ceil(len(train_dialogues) / train_cfg["batch_size"]))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and train_cfg["amp"] == "fp16")
    select_batches = eval_batches(selection_dialogues, train_cfg["eval_batch_size"])
    logger.info("model: %s parameters (%s trainable); training on %d dialogues (%s), selecting on %s (%d dialogues); "
                "device %s, amp %s, %d CPU thread(s)", f"{count_parameters(model):,}", f"{count_parameters(model, True):,}",
                len(train_dialogues), "+".join(train_splits), selection_split, len(selection_dialogues), device,
                amp_description(device, train_cfg["amp"]), torch.get_num_threads())
    if train_cfg["amp"] == "bf16" and effective_amp(device, "bf16") == "off":
        logger.warning("train.amp is bf16, but %s: bf16 autocast runs slower than fp32 here (about 20x on an AVX2 "
                       "CPU), so this run trains in fp32 (metrics.json: devices). Set train.amp: off to say so, or "
                       "train on a CPU with avx512_bf16 / AMX or on a GPU of compute capability 8.0 or later",
                       "this CPU has no bf16 kernels (no AVX-512)" if device.type == "cpu"
                       else f"{device} has no native bf16 (compute capability below 8.0)")

    state = {"epoch": 0, "history": [], "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0,
             "finished": False, "skipped_steps": 0}
    best = None  # the selected epoch's checkpoint payload (model.pt to be), in memory
    last_path, best_path = out_dir / LAST_NAME, out_dir / WORK_BEST_NAME
    identity = _input_identity(data, anchor_set)
    if last_path.exists():
        state, best = _resume(last_path, best_path, cfg, seed, model, optimizer, scaler, scheduler, device,
                              identity) or (state, best)
    # Each device the run has trained on, in order: a run resumed elsewhere (a GPU job re-run on a CPU node)
    # continues in another precision and summation order, which its metrics must not hide.
    here, before = device_label(device, train_cfg["amp"]), state.setdefault("devices", [])
    if before and not feature_io.same_kind(before[-1], here):
        logger.warning("this run trained on %s until epoch %d and continues on %s: its weights differ from an "
                       "uninterrupted run on either (metrics.json lists both)", before[-1], state["epoch"], here)
    if not before or before[-1] != here:
        before.append(here)
    # The same for the thread count on a CPU (the sums' order follows it): a run killed under --cores 1 and resumed
    # under --cores 2 is neither run.
    counts = state.setdefault("thread_counts", [])
    if device.type == "cpu":
        threads_here = torch.get_num_threads()
        if counts and counts[-1] != threads_here:
            logger.warning("this run trained with %d CPU thread(s) until epoch %d and continues with %d: its weights "
                           "differ from an uninterrupted run with either (metrics.json's thread_counts lists both)",
                           counts[-1], state["epoch"], threads_here)
        if not counts or counts[-1] != threads_here:
            counts.append(threads_here)

    def save_state() -> None:
        save_torch(_last_payload(model, optimizer, scaler, scheduler, cfg, seed, state, device, identity, best),
                   last_path)

    epochs = tqdm(range(state["epoch"] + 1, train_cfg["epochs"] + 1), desc="epochs", mininterval=5,
                  initial=state["epoch"], total=train_cfg["epochs"]) if not state["finished"] else []
    job_end = _JobEnd()
    with _StopSignals() as stop_signal:
        unsaved = False  # an epoch has completed whose state is not on disk
        try:
            for epoch in epochs:
                unsaved = False  # from here until the epoch's bookkeeping is done, the state is inconsistent
                started = time.monotonic()
                epoch_done = _run_epoch(epoch, model, loss_fn, optimizer, scaler, scheduler, train_dialogues,
                                        select_batches, cfg, device, data, state, selection_split, paper_compat,
                                        spec, seed, feature_stats, best)
                if epoch_done["best"] is not None:
                    best = epoch_done["best"]
                unsaved = True
                due = ((epoch % train_cfg["checkpoint_every"] == 0 or job_end.near(time.monotonic() - started))
                       and not state["finished"])
                if due or (stop_signal.received and not state["finished"]):
                    save_state()
                    unsaved = False
                write_history(state["history"], out_dir / RUNNING_HISTORY_NAME)
                row, metrics, score = epoch_done["row"], epoch_done["metrics"], epoch_done["score"]
                logger.info("epoch %d: train loss %.4f | %s %s %.2f, acc %.2f (best %.2f at epoch %d) | %.1f s",
                            epoch, row.get("train_total", float("nan")), selection_split,
                            train_cfg["selection_metric"], score, metrics["accuracy"], state["best_score"],
                            state["best_epoch"], row["seconds"])
                if stop_signal.received and not state["finished"]:
                    stop_signal.stop(f"{last_path} holds the state after epoch {epoch}; run again to resume")
                if on_epoch_end is not None:
                    on_epoch_end(epoch)
                if state["finished"] and state["epoch"] < train_cfg["epochs"]:
                    logger.info("early stop: %d epochs without improvement", state["bad_epochs"])
                if state["finished"]:
                    break
        except BaseException:
            if unsaved:  # interrupted between epochs: keep what was done
                save_state()
                logger.warning("run interrupted after epoch %d; its state is in %s", state["epoch"], last_path)
            raise
        # A stop during the final evaluation waits for it too: the outputs are minutes away at most, while stopping
        # here would repeat up to checkpoint_every epochs (the last epoch writes no state) and, with the default
        # action, end the job with no word in its log.
        stop_signal.finishing = True
        return _finish(out_dir, cfg, data, seed, state, best, device, selection_split, train_splits, weights,
                       weights_source, anchor_info, loss_fn, anchor_set, identity)


class _JobEnd:
    """The scheduler's time limit of this job (ercpipe.runlog.job_end_time): once the time left is less than two
    epochs and a margin, the resume state is written after every epoch, so a job stopped at its limit loses at
    most the epoch it was in (a SLURM job gets SIGTERM only KillWait, 30 s by default, before SIGKILL; an
    epoch may take longer), whatever train.checkpoint_every says."""

    MARGIN_S = 60.0

    def __init__(self) -> None:
        self.end = job_end_time()
        self.warned = False
        if self.end is not None:
            logger.info("the job's time limit ends in %s (at %s): the resume state is also written after every "
                        "epoch from two epochs and %.0f s before it", _duration(self.end - time.time()),
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.end)), self.MARGIN_S)

    def near(self, epoch_seconds: float) -> bool:
        if self.end is None:
            return False
        left = self.end - time.time()
        near = left < 2 * epoch_seconds + self.MARGIN_S
        if near and not self.warned:
            self.warned = True
            logger.warning("%s left before the job's time limit, and an epoch takes %.0f s: the resume state is "
                           "written after every epoch from now on", _duration(left), epoch_seconds)
        return near


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _StopSignals:
    """While training: SIGTERM / SIGINT ask for a stop after the current epoch (its state is written first);
    a second signal stops at once. Installed only in the main thread (Python delivers signals there).
    A SIGTERM within DUPLICATE_S of the first is the same request: a SLURM job step gets one from slurmstepd
    and one from the Snakemake that runs the job inside it, milliseconds apart."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    DUPLICATE_S = 2.0

    def __init__(self):
        self.received: int | None = None
        self.finishing = False  # the epochs are done: the final evaluation and the outputs are under way
        self._received_at = 0.0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            if signum == signal.SIGTERM == self.received and time.monotonic() - self._received_at < self.DUPLICATE_S:
                logger.info("SIGTERM again %.2f s after the first: the same request",
                            time.monotonic() - self._received_at)
                return
            self._raise(signum, "second signal: stopping without writing the state")
        self.received, self._received_at = signum, time.monotonic()
        if self.finishing:
            logger.warning("received %s during the final evaluation: the run finishes first (its outputs are "
                           "written; a second signal stops it at once)", signal.Signals(signum).name)
        else:
            logger.warning("received %s: stopping after the current epoch (its state is written first)",
                           signal.Signals(signum).name)

    def _raise(self, signum: int, message: str):
        logger.warning("%s: %s", signal.Signals(signum).name, message)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt(message)
        raise SystemExit(128 + signum)

    def stop(self, message: str):
        self._raise(self.received, message)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        if not outputs_are_complete():  # else the job's outputs are written: stops stay ignored (outputs_complete)
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        return False


def _check_finite_weights(model, epoch: int, row: dict) -> None:
    """Stop a run whose weights became NaN or inf (a diverged training: a learning rate too high for the features'
    scales). Its NaN model used to be kept and scored: every prediction class 0, its accuracy read as a result, and
    the aggregation failing later in t-SNE. Checked once per epoch, on the weights rather than each step's loss
    (no device sync per step; the fp16 loss scaler's skipped steps leave the weights finite)."""
    names, params = zip(*[(name, p) for name, p in model.named_parameters() if p.numel()])
    # Largest magnitude per tensor (NaN where one is NaN), in a few fused kernels and one device sync.
    finite = torch.isfinite(torch.stack(torch._foreach_norm([p.detach() for p in params], float("inf"))))
    if not bool(finite.all()):
        bad = [name for name, ok in zip(names, finite.tolist()) if not ok]
        losses = ", ".join(f"{k[len('train_'):]} {v:.4g}" for k, v in row.items() if k.startswith("train_"))
        raise TrainingError(
            f"training diverged in epoch {epoch}: {len(bad)} weight tensor(s) became NaN or inf (e.g. {bad[0]}; mean "
            f"training losses: {losses}); lower train.lr, set train.grad_clip, or check the features' scales "
            "(train.feature_norm: standardize); the last saved state is from before, and a changed setting starts "
            "afresh")


def _run_epoch(epoch, model, loss_fn, optimizer, scaler, scheduler, train_dialogues, select_batches, cfg, device,
               data, state, selection_split, paper_compat, spec, seed, feature_stats, previous_best=None) -> dict:
    """Train one epoch, score the selection split, update `state` (history, best epoch, early stopping).
    Returns {"row", "metrics", "score", "best": the checkpoint payload if this epoch is the new best, else None}."""
    train_cfg = cfg["train"]
    start = time.time()
    row = {"epoch": epoch}
    row.update(train_epoch(model, loss_fn, optimizer, scaler, scheduler, train_dialogues, cfg, device))
    _check_finite_weights(model, epoch, row)
    result = run_eval(model, select_batches, device, train_cfg["amp"], loss_fn)
    metrics = split_metrics(result, data.classes)
    row.update(history_row(selection_split, metrics))
    for branch, temps in model.temperatures().items():
        row.update({f"T_{branch}_{m}": v for m, v in temps.items()})
    score = metrics[train_cfg["selection_metric"]]
    compared = round(score, 2) if paper_compat else score
    improved = is_better(compared, state["best_score"])  # strict: a tie keeps the earlier epoch (O19)
    best = None
    if improved:
        state.update(best_score=compared, best_epoch=epoch, bad_epochs=0)
        best = checkpoint_payload(model, spec=spec, config=cfg, classes=data.classes, epoch=epoch, seed=seed,
                                  selection_split=selection_split, feature_stats=feature_stats,
                                  features=data.feature_sources, speaker_slots=data.speaker_slots,
                                  into=None if previous_best is None else previous_best.get("state_dict"))
    else:
        state["bad_epochs"] += 1
    state["skipped_steps"] += row["skipped_steps"]
    if row["skipped_steps"]:
        logger.warning("epoch %d: %d of %d optimizer steps skipped by the fp16 loss scaler (inf/NaN gradients)",
                       epoch, row["skipped_steps"], row["steps"])
    row.update(improved=improved, best_epoch=state["best_epoch"], seconds=round(time.time() - start, 3))
    state["history"].append(row)
    state["epoch"] = epoch
    patience = train_cfg["patience"]
    stop = patience is not None and state["bad_epochs"] >= patience
    state["finished"] = stop or epoch == train_cfg["epochs"]
    return {"row": row, "metrics": metrics, "score": score, "best": best}


def _input_identity(data: DialogueData, anchor_set) -> dict:
    """What a resume state must have been trained on: per modality the feature file's setting hash, width and
    content; the dialogues' ids, splits, labels and speakers (a fixed label or another valid split leaves the
    feature files as they were); the anchors' vectors."""
    identity: dict = {m: {k: src.get(k) for k in ("setting_hash", "dim", "content_sha256")}
                      for m, src in data.feature_sources.items()}
    labels = hashlib.sha256(json.dumps(data.classes).encode())
    for d in data.dialogues:
        labels.update(json.dumps([d.dialogue_id, d.split, d.utterance_ids, d.labels.tolist(),
                                  d.speakers.tolist()]).encode())
    identity["labels"] = labels.hexdigest()
    if anchor_set is not None:
        anchors = hashlib.sha256(np.ascontiguousarray(anchor_set.centers, dtype=np.float32).tobytes())
        for name in anchor_set.class_names:
            anchors.update(np.ascontiguousarray(anchor_set.image_features[name], dtype=np.float32).tobytes())
        identity["anchors"] = anchors.hexdigest()
    return identity


def _last_payload(model, optimizer, scaler, scheduler, cfg, seed, state, device, identity, best) -> dict:
    return {"format": CHECKPOINT_FORMAT + "-last", "config": cfg, "seed": seed, "features": identity,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(device), "state": _json_clean(state), "best": best}


def training_config(cfg: dict) -> dict:
    """The sections that shape the training, without the keys inactive under the others (presets.inactive_keys)
    and the NON_TRAINING_KEYS (when the state is written, which CLIP the anchors must come from): the run's
    metrics.json holds those, the job's params do not, and aggregation compared the two (an experiment setting
    model.clip_model could never be aggregated)."""
    out = {k: cfg.get(k) for k in ("preset", "model", "loss", "train")}
    return active_settings(without_non_training_keys(out))


def _resume(path: Path, best_path: Path, cfg, seed, model, optimizer, scaler, scheduler, device,
            features: dict | None = None) -> tuple[dict, dict | None] | None:
    """(the saved training state, the selected epoch's checkpoint payload) with model, optimizer, RNG ...
    restored, or None after discarding a state that cannot be continued: another configuration or seed
    (e.g. Snakemake re-runs the job because a training setting changed), other feature files (re-extracted
    after a fix), or a selected checkpoint that is gone."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        if is_out_of_memory(err):  # the state is fine: deleting it would throw the epochs run away
            raise MemoryError(f"{path} could not be loaded: not enough memory ({type(err).__name__}: {err}); "
                              f"{MORE_MEMORY} and run again: training resumes from it") from err
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}); "
                              "delete it to start afresh") from err
    # Only what shapes the training must match; pipeline keys (e.g. the list of seeds) may change.
    stored, current = training_config(payload.get("config") or {}), training_config(cfg)
    changed = [k for k in current if stored.get(k) != current.get(k)]
    reason = None
    if changed or payload.get("seed") != seed:
        reason = (f"it belongs to a run with a different configuration or seed (seed {payload.get('seed')} vs "
                  f"{seed}; differing sections: {changed or 'none'})")
    elif features is not None and payload.get("features") is not None and payload["features"] != features:
        differ = sorted(m for m in set(features) | set(payload["features"])
                        if features.get(m) != payload["features"].get(m))
        reason = f"it was trained on other inputs ({', '.join(differ)} changed since)"
    else:
        best = payload.get("best")
        if best is None and "best" not in payload and best_path.exists():  # written before checkpoint_every
            best = load_checkpoint_file(best_path)
        if payload["state"]["best_epoch"] and (best is None or best.get("epoch") != payload["state"]["best_epoch"]):
            reason = f"its selected checkpoint (epoch {payload['state']['best_epoch']}) is missing"
    if reason:
        logger.warning("not resuming from %s: %s; training from scratch", path, reason)
        path.unlink()
        best_path.unlink(missing_ok=True)
        return None
    model.load_state_dict(payload["model"], strict=True)
    optimizer.load_state_dict(payload["optimizer"])
    if payload["scaler"]:
        scaler.load_state_dict(payload["scaler"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"], device)
    state = payload["state"]
    state["best_score"] = float(state["best_score"])
    logger.info("resuming from %s after epoch %d (best %.2f at epoch %d)", path, state["epoch"], state["best_score"],
                state["best_epoch"])
    return state, best


def _finish(out_dir, cfg, data, seed, state, payload, device, selection_split, train_splits, weights, weights_source,
            anchor_info, loss_fn, anchor_set, identity) -> dict:
    """Build the selected checkpoint's model, score valid (if held out) and test once, write the outputs."""
    train_cfg = cfg["train"]
    if payload is None:  # no epoch was ever selected (every score NaN)
        raise TrainingError(f"no epoch of the run in {out_dir} was selected (no {train_cfg['selection_metric']} "
                            "score above -inf); nothing to write")
    model = model_from_payload(payload, out_dir / BEST_NAME)
    model.classes = list(data.classes)
    if anchor_set is not None:
        prepare_anchors(model, cfg, anchor_set, data.classes)
    model.to(device)
    results: dict[str, dict] = {}
    frames = []
    fused = None
    for split in ("valid", "test"):
        if split in train_splits or not data.split(split):
            continue
        # The test split is read here, once, after selection (never during training unless paper_compat).
        result = run_eval(model, eval_batches(data.split(split), train_cfg["eval_batch_size"]), device,
                          train_cfg["amp"], loss_fn, keep_fused=split == "test")
        results[split] = split_metrics(result, data.classes)
        frames.append(predictions_frame(result, data.classes, split))
        if split == "test":
            fused = result
    with atomic_path(out_dir / "predictions.tsv") as tmp:
        pd.concat(frames).to_csv(tmp, sep="\t", index=False, lineterminator="\n", float_format="%.6g")
    with atomic_path(out_dir / "fused.npz") as tmp:  # written without a test split too: zero rows
        if fused is not None:
            np.savez_compressed(tmp, fused=fused.fused.astype(np.float32), labels=fused.labels,
                                predictions=fused.predictions, utterance_ids=np.array(fused.utterance_ids),
                                classes=np.array(data.classes))
        else:
            np.savez_compressed(tmp, fused=np.zeros((0, 0), np.float32), labels=np.zeros(0, np.int64),
                                predictions=np.zeros(0, np.int64), utterance_ids=np.array([], dtype=str),
                                classes=np.array(data.classes))
    history = state["history"]
    write_history(history, out_dir / "history.tsv")
    metrics = {
        "protocol": {
            "selection_split": selection_split, "paper_compat": train_cfg["paper_compat"],
            "train_splits": list(train_splits), "selection_metric": train_cfg["selection_metric"],
            "selected_epoch": payload["epoch"], "epochs_run": state["epoch"],
            "stopped_early": state["epoch"] < train_cfg["epochs"],
            "note": ("official protocol: best epoch chosen on the TEST split (optimistic; spec O8)"
                     if train_cfg["paper_compat"] else "best epoch chosen on the validation split; test read once"),
        },
        # CPU results are bit-identical at equal thread counts only (the products' summation order follows them)
        "classes": list(data.classes), "seed": seed, "device": str(device), "threads": torch.get_num_threads(),
        "thread_counts": state.get("thread_counts", []),
        "devices": state.get("devices", []),
        # What the run read and ran, for a colleague who has only results/: each feature file's setting hash and
        # content digest, the labels' and the anchors' digests; the code's commit and the libraries.
        "inputs": identity,
        "versions": feature_io.package_versions(["ercpipe", "torch", "numpy"]),
        "valid": results.get("valid"), "test": results.get("test"),
        "feature_coverage": data.coverage(),
        "temperatures": model.temperatures(),
        "class_weights": {"source": weights_source, "values": None if weights is None else [float(w) for w in weights]},
        "anchors": anchor_info,
        "n_parameters": count_parameters(model), "n_trainable_parameters": count_parameters(model, True),
        "skipped_steps": state["skipped_steps"],
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in history])) if history else None,
        "config": cfg,
        # Keys of `config` that had no effect under its other settings (e.g. train.momentum with AdamW).
        "inactive_settings": inactive_keys(cfg),
    }
    save_torch(payload, out_dir / BEST_NAME)
    write_json(out_dir / "metrics.json", metrics)
    outputs_complete()  # before the resume state goes: a stop from here on must not fail the job
    # The run is complete: the resume state is no longer needed (a forced re-run trains from scratch).
    (out_dir / LAST_NAME).unlink(missing_ok=True)
    remove_stale_temporaries(out_dir / LAST_NAME)  # a state a killed run was writing when it stopped
    (out_dir / WORK_BEST_NAME).unlink(missing_ok=True)
    (out_dir / RUNNING_HISTORY_NAME).unlink(missing_ok=True)
    logger.info("selected epoch %d on %s; test weighted F1 %s, accuracy %s", payload["epoch"], selection_split,
                _fmt(results.get("test"), "weighted_f1"), _fmt(results.get("test"), "accuracy"))
    return metrics


def _fmt(metrics: dict | None, key: str) -> str:
    return "n/a" if metrics is None else f"{metrics[key]:.2f}"
