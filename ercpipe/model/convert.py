"""Load the official SDT-VEGA backbone checkpoint (spec 8.1, e.g. the released IEMOCAP.pth) with strict keys.

The official file is a plain dict parameter name -> tensor holding only the backbone (no CLIP projections,
anchor temperatures or gamma), 200 entries at the IEMOCAP configuration. Our modules are grouped by role
(`encoders.t_t`, `gates.t_t`, `reduce.t`, `inputs.t`, `heads.t`, `cls_temps.t`, `clip_projs.t`, `clip_temps.t`);
`official_key` / `our_key` map them to and from the official flat names (`t_t`, `t_t_gate`,
`features_reduce_t`, `textf_input`, `t_output_layer`, `t_cls_temp`, `t_clip_proj`, `t_clip_temp`), which
checkpoints written before the grouping also use (ercpipe.model.checkpoint reads them through `our_key`).
Two more differences are handled here:
* input projections are Conv1d(k=1) kernels [d, D, 1] there and Linear weights [d, D] here;
* every encoder stores its own copy of the positional table (`E.pos_emb.pe`, [1, 512, d]) there; here the
  table is one non-persistent buffer, so the official copies are checked against it and dropped.
Unlike the official inference script (O18), a missing, unexpected or mis-shaped key is an error.
"""
from __future__ import annotations

from pathlib import Path

import re

import torch

from ercpipe.errors import ErcpipeError
from ercpipe.model.layers import sinusoidal_table
from ercpipe.model.sdt import INPUT_NAMES, SDTVega, is_vega_key

CONV_KEYS = tuple(f"{name}.weight" for name in INPUT_NAMES.values())
OFFICIAL_MAX_POSITIONS = 512

# (our group, official name of an entry) for every grouped module; the other names are the same in both.
_GROUPS = {"encoders": "{}", "gates": "{}_gate", "reduce": "features_reduce_{}", "heads": "{}_output_layer",
           "cls_temps": "{}_cls_temp", "clip_projs": "{}_clip_proj", "clip_temps": "{}_clip_temp"}
_OFFICIAL = [(re.compile("^" + pattern.replace("{}", "([tav]_[tav])" if group in ("encoders", "gates")
                                                else "([tav]|all)") + "$"), group)
             for group, pattern in _GROUPS.items()]
_OFFICIAL_INPUTS = {official: short for short, official in INPUT_NAMES.items()}


def official_key(key: str) -> str:
    """Our state-dict key -> the official one ("encoders.t_t.x" -> "t_t.x", "inputs.t.weight" ->
    "textf_input.weight"); other keys unchanged."""
    group, _, rest = key.partition(".")
    if group == "inputs":
        short, _, tail = rest.partition(".")
        return ".".join(filter(None, (INPUT_NAMES[short], tail)))
    if group in _GROUPS and rest:
        name, _, tail = rest.partition(".")
        return ".".join(filter(None, (_GROUPS[group].format(name), tail)))
    return key


def our_key(key: str) -> str:
    """The official (or pre-grouping checkpoint) key -> ours; inverse of official_key, our keys unchanged."""
    head, _, tail = key.partition(".")
    if head in _OFFICIAL_INPUTS:
        return ".".join(filter(None, ("inputs", _OFFICIAL_INPUTS[head], tail)))
    for pattern, group in _OFFICIAL:
        match = pattern.match(head)
        if match:
            return ".".join(filter(None, (group, match.group(1), tail)))
    return key


class OfficialCheckpointError(ErcpipeError, ValueError):
    """The official state dict does not fit the model; the message lists the keys and what to do."""


def _hint(model: SDTVega) -> str:
    s = model.spec
    return (f"The model was built with d={s.hidden_dim}, {s.n_heads} heads, {s.head_layers}-layer {s.head_type} heads, "
            f"modalities {list(s.modalities)}, input widths {s.input_dims}, {s.n_classes} classes, "
            f"{s.n_speakers} speaker slots. The released IEMOCAP checkpoint needs the 'official' preset on "
            "IEMOCAP-shaped features (1024/1582/342, 6 classes, 2 speaker slots).")


def expected_official_keys(model: SDTVega) -> dict[str, tuple[int, ...]]:
    """Official key -> shape, for the backbone of this model."""
    state = model.state_dict()
    keys: dict[str, tuple[int, ...]] = {}
    for key in model.backbone_parameter_names():
        shape, name = tuple(state[key].shape), official_key(key)
        keys[name] = shape + (1,) if name in CONV_KEYS else shape
    for name in model.spec.encoder_names():
        keys[f"{name}.pos_emb.pe"] = (1, OFFICIAL_MAX_POSITIONS, model.spec.hidden_dim)
    return keys


def convert_official_state_dict(official: dict[str, torch.Tensor], model: SDTVega) -> dict[str, torch.Tensor]:
    """Official backbone state dict -> this model's backbone state dict (strict: raises on any mismatch)."""
    if "state_dict" in official and isinstance(official["state_dict"], dict):
        official = official["state_dict"]
    expected = expected_official_keys(model)
    missing = sorted(set(expected) - set(official))
    unexpected = sorted(set(official) - set(expected))
    wrong_shape = []
    for key in sorted(set(expected) & set(official)):
        got = tuple(official[key].shape)
        # Scalar temperatures may be stored as 0-d or [1] tensors.
        if got != expected[key] and not (official[key].numel() == 1 and expected[key] in ((), (1,))):
            wrong_shape.append(f"{key}: file {got}, model {expected[key]}")
    if missing or unexpected or wrong_shape:
        lines = [f"the official checkpoint does not match the model ({len(official)} keys in the file, "
                 f"{len(expected)} expected)"]
        if missing:
            lines.append(f"  missing from the file ({len(missing)}): {missing[:8]}")
        if unexpected:
            lines.append(f"  not in the model ({len(unexpected)}): {unexpected[:8]}")
        if wrong_shape:
            lines.append(f"  wrong shape ({len(wrong_shape)}): {wrong_shape[:8]}")
        lines.append("  " + _hint(model))
        raise OfficialCheckpointError("\n".join(lines))

    table = sinusoidal_table(OFFICIAL_MAX_POSITIONS, model.spec.hidden_dim)
    converted: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        value = value.detach().to("cpu", torch.float32)
        if key.endswith(".pos_emb.pe"):
            if not torch.allclose(value[0], table, atol=1e-4):
                raise OfficialCheckpointError(
                    f"{key} is not the sinusoidal table this implementation uses (max difference "
                    f"{(value[0] - table).abs().max():.3g}); the checkpoint comes from a different model")
            continue
        if key in CONV_KEYS:
            value = value.squeeze(-1)
        converted[our_key(key)] = value.reshape(expected[key]) if value.numel() == 1 else value
    return converted


def load_official_backbone(model: SDTVega, official: dict[str, torch.Tensor] | str | Path) -> SDTVega:
    """Load an official backbone (dict or path; files are read with weights_only=True) into `model`.

    The VEGA-only parameters of `model` (projections, anchor temperatures) keep their values; every
    backbone key must be present in the file and every file key must be used.
    """
    if isinstance(official, (str, Path)):
        path = Path(official)
        if not path.exists():
            raise OfficialCheckpointError(f"official checkpoint {path} does not exist")
        official = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(official, dict):
            raise OfficialCheckpointError(f"{path} does not hold a state dict (found {type(official).__name__})")
    converted = convert_official_state_dict(official, model)
    result = model.load_state_dict(converted, strict=False)
    leftover = [k for k in result.missing_keys if not is_vega_key(k)]
    if leftover or result.unexpected_keys:
        raise OfficialCheckpointError(f"internal key mismatch after conversion: missing {leftover[:8]}, "
                                      f"unexpected {result.unexpected_keys[:8]}")
    return model


def to_official_state_dict(model: SDTVega) -> dict[str, torch.Tensor]:
    """This model's backbone in the official layout (for export and round-trip checks)."""
    state = model.state_dict()
    table = sinusoidal_table(OFFICIAL_MAX_POSITIONS, model.spec.hidden_dim).unsqueeze(0)
    out: dict[str, torch.Tensor] = {}
    for key in model.backbone_parameter_names():
        value, name = state[key].detach().cpu().clone(), official_key(key)
        out[name] = value.unsqueeze(-1) if name in CONV_KEYS else value
    for name in model.spec.encoder_names():
        out[f"{name}.pos_emb.pe"] = table.clone()
    return out
