"""Checkpoints of SDT / SDT-VEGA (model.pt): the format, writing, loading, and what a loaded model expects
of the feature files given to it. Training writes them (ercpipe.train.trainer), inference loads them
(ercpipe.infer, ercpipe.model.inference); neither imports the other.

A checkpoint holds the state dict, the model spec, the resolved experiment, the classes, the training
split's feature standardization and, per modality, how its features were made (extractor settings,
fine-tuned encoder): enough to run the model on a new conversation. Loading is weights_only, keys strict.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ercpipe.device import resolve_device
from ercpipe.errors import ErcpipeError
from ercpipe.io import features as feature_io
from ercpipe.io.atomic import atomic_path, write_failed
from ercpipe.model.batch import Dialogue
from ercpipe.model.convert import our_key
from ercpipe.model.sdt import ModelSpec, SDTVega, build_model

CHECKPOINT_FORMAT = "ercpipe-sdt-vega"
CHECKPOINT_VERSION = 1  # the payload layout; a file of another version is refused naming it


class CheckpointError(ErcpipeError, ValueError):
    """A checkpoint file is missing or does not fit; the message names the file and what to do."""


def checkpoint_payload(model: SDTVega, *, spec: ModelSpec, config: dict, classes: Sequence[str], epoch: int,
                       seed: int, selection_split: str, feature_stats: dict | None, features: dict,
                       speaker_slots: dict[str, int] | None = None, into: dict | None = None) -> dict:
    """What model.pt holds (weights on the CPU, copied: the payload keeps this epoch's weights while the model
    trains on, which is how the trainer holds the selected epoch in memory until it writes it).

    `into`: an earlier payload's state_dict that nothing else holds (the trainer's previous selection); when
    its keys, shapes and dtypes match, the weights are copied into it in place, so they are never held twice
    while the copy is made (one model's size less peak memory)."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "state_dict": _copied_weights(model, into),
            "config": config, "spec": spec.to_dict(), "classes": list(classes), "epoch": epoch, "seed": seed,
            "selection_split": selection_split, "feature_stats": feature_stats, "features": features,
            "speaker_slots": speaker_slots}


def _copied_weights(model: SDTVega, into: dict | None) -> dict:
    current = model.state_dict()
    if into is None or into.keys() != current.keys() or any(
            into[k].shape != v.shape or into[k].dtype != v.dtype for k, v in current.items()):
        return {k: v.detach().to("cpu", copy=True) for k, v in current.items()}
    with torch.no_grad():
        for k, v in current.items():
            into[k].copy_(v.detach())
    return into


def save_torch(obj, path: str | Path) -> None:
    """torch.save, atomically (a killed job leaves the previous file or none, never half a file), the same bytes for
    the same tensors. A write that fails (a full disk, a file size limit) names the file and the free space;
    torch's own message is about its zip writer's position ("unexpected pos ...")."""
    with atomic_path(path) as tmp:
        try:
            # Into an open file: given a path, torch names the archive's root folder after it (the temporary
            # name, different every time), so equal tensors made different bytes.
            with open(tmp, "wb") as handle:
                torch.save(obj, handle)
        except (RuntimeError, OSError) as err:
            raise write_failed(Path(path), tmp, err) from err


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
    missing = [k for k in ("spec", "state_dict", "classes", "config") if k not in payload]
    version = payload.get("version", CHECKPOINT_VERSION)
    if missing or version != CHECKPOINT_VERSION:
        lacks = f"; it lacks {', '.join(missing)}" if missing else ""
        raise CheckpointError(f"{path} was written by another version of ercpipe (checkpoint version {version!r}, "
                              f"this one reads {CHECKPOINT_VERSION}{lacks}); use the ercpipe version that trained "
                              "it, or train again")
    try:
        ModelSpec.from_dict(payload["spec"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its model spec does not fit this version of ercpipe ({err}); use the "
                              "ercpipe version that trained it, or train again") from None
    return payload


def model_from_payload(payload: dict, path: str | Path) -> SDTVega:
    """The model of a loaded checkpoint payload (on the CPU, in train mode), its weights loaded strictly."""
    model = build_model(ModelSpec.from_dict(payload["spec"]))
    # Checkpoints written before the modules were grouped by role hold the official flat names.
    state = {our_key(key): value for key, value in payload["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the stored weights do not fit the stored model spec: {err}") from err
    return model


def load_model(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> tuple[SDTVega, dict, list[str]]:
    """(model in eval mode on `device`, resolved experiment config, classes) from a model.pt written by
    run_training. weights_only loading, strict keys."""
    payload = load_checkpoint_file(checkpoint_path)
    model = model_from_payload(payload, checkpoint_path)
    model.classes = list(payload["classes"])
    model.feature_stats = payload.get("feature_stats")
    model.feature_sources = payload.get("features") or {}
    model.speaker_slots = payload.get("speaker_slots")  # training's fixed speaker -> slot table (None: none)
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
        identity = feature_io.feature_identity(source)  # the model files' digests the training features recorded
        if feature_io.is_imported_setting(settings):
            # Imported from a pickle: no extractor of ours made them, so there is nothing to run again.
            fix = f"give the {m} file imported from the same pickle (ercpipe import-pickle) the model was trained on"
        else:
            made = "that setting and model" if identity else "that setting"
            fix = (f"give the {m} file made with {made}, or extract it again with {made} "
                   "(ercpipe predict --conversation runs the checkpoint's extractors on raw media)")
        expected[m] = feature_io.Expectation(
            modality=m, settings=settings, setting_hash=source.get("setting_hash") or None,
            dim=model.spec.input_dims.get(m), made_with=identity or None,
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
