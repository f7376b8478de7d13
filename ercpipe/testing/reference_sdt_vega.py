"""A straightforward eager reference of the SDT / SDT-VEGA forward pass (spec section 2), for checking and timing.

Test and benchmark support, not pipeline code: no rule, script or library module imports it. It reads the
parameters of an `ercpipe.model.SDTVega` and recomputes the outputs the plain way: one dialogue at a time
in a Python loop (so no padding and no mask), explicit per-head softmax attention, explicit formulas for
the feed-forward block, gates, reductions, fusion and heads. The library version must give the same
numbers (bench/bench_train.py and tests/test_model.py check it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ercpipe.model.convert import official_key

SHORT = {"text": "t", "audio": "a", "visual": "v"}
INPUT = {"t": "textf_input", "a": "acouf_input", "v": "visuf_input"}
ACT = {"gelu": F.gelu, "elu": F.elu, "silu": F.silu, "relu": F.relu, "tanh": torch.tanh}


def sinusoid(n: int, d: int, device=None) -> torch.Tensor:
    """P[q, 2i] = sin(q w_i), P[q, 2i+1] = cos(q w_i), w_i = 10000^(-2i/d)."""
    q = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    omega = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)
    table = torch.zeros(n, d, device=device)
    table[:, 0::2] = torch.sin(q * omega)
    table[:, 1::2] = torch.cos(q * omega)[:, : d // 2]
    return table


def _linear(p: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    y = x @ p[f"{name}.weight"].T
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


def _drop(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    return F.dropout(x, rate, training) if training and rate > 0 else x


def _attention(p: dict, name: str, zq: torch.Tensor, zs: torch.Tensor, heads: int, rate: float, training: bool):
    n, d = zq.shape
    dh = d // heads
    q = _linear(p, f"{name}.linear_q", zq).view(n, heads, dh).transpose(0, 1)
    k = _linear(p, f"{name}.linear_k", zs).view(n, heads, dh).transpose(0, 1)
    v = _linear(p, f"{name}.linear_v", zs).view(n, heads, dh).transpose(0, 1)
    scores = (q / math.sqrt(dh)) @ k.transpose(1, 2)  # [h, n, n]; one dialogue, so no padded keys
    weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    weights = _drop(weights / weights.sum(dim=-1, keepdim=True), rate, training)
    out = (weights @ v).transpose(0, 1).reshape(n, d)
    return _linear(p, f"{name}.linear", out)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _layer_norm(p: dict, name: str, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]


def _head(p: dict, name: str, x: torch.Tensor, spec, kind: str, training: bool) -> torch.Tensor:
    if kind == "sdt_all":
        return _linear(p, name, x)
    if kind == "sdt":
        return _linear(p, f"{name}.2", _drop(F.relu(x), spec.dropout, training))
    layers, act, rate = (spec.clip_proj_layers, spec.clip_proj_activation, spec.clip_proj_dropout) if kind == "proj" \
        else (spec.head_layers, spec.head_activation, spec.head_dropout)
    for i in range(layers - 1):
        x = _drop(ACT[act](_linear(p, f"{name}.{3 * i}", x)), rate, training)
    return _linear(p, f"{name}.{3 * (layers - 1)}", x)


def reference_dialogue(model, feats: dict[str, torch.Tensor], speakers: torch.Tensor, anchors: torch.Tensor | None,
                       training: bool = False) -> dict:
    """Outputs for one dialogue (features [n, D_m], speakers [n]); anchors: L2-normalized [C, k] or None."""
    spec = model.spec
    p = {official_key(name): value for name, value in model.named_parameters()}  # by the official names
    d, rate = spec.hidden_dim, spec.dropout
    n = speakers.shape[0]
    device = speakers.device
    additive = torch.zeros(n, d, device=device)
    if spec.positional_embeddings:
        additive = additive + sinusoid(n, d, device)
    if spec.speaker_embeddings:
        additive = additive + p["speaker_embeddings.weight"][speakers]
    short = [SHORT[m] for m in SHORT if m in spec.modalities]
    x = {SHORT[m]: feats[m] @ p[f"{INPUT[SHORT[m]]}.weight"].T for m in spec.modalities}
    reduced = {}
    for target in short:
        gated = []
        for name in spec.encoders_of(target):
            source = name.split("_")[0]
            zq = _drop(x[target] + additive, rate, training)
            zs = zq if source == target else _drop(x[source] + additive, rate, training)
            layer = f"{name}.transformer_inter.0"
            u = zq + _drop(_attention(p, f"{layer}.self_attn", zq, zs, spec.n_heads, rate, training), rate, training)
            ff = f"{layer}.feed_forward"
            hidden = _drop(_gelu_tanh(_linear(p, f"{ff}.w_1", _layer_norm(p, f"{ff}.layer_norm", u))), rate, training)
            y = u + _drop(_linear(p, f"{ff}.w_2", hidden), rate, training)
            gated.append(torch.sigmoid(y @ p[f"{name}_gate.fc.weight"].T) * y)
        reduced[target] = _linear(p, f"features_reduce_{target}", torch.cat(gated, dim=-1))
    if len(short) > 1:
        stacked = torch.stack([reduced[m] for m in short])
        scores = stacked @ p["last_gate.fc.weight"].T
        alpha = torch.exp(scores) / torch.exp(scores).sum(dim=0, keepdim=True)
        fused = (alpha * stacked).sum(dim=0)
        streams = dict(reduced)
    else:
        fused, streams = reduced[short[0]], {}
    streams["all"] = fused
    projections = None
    if spec.vega:
        projections = {m: _head(p, f"{m}_clip_proj", s, spec, "proj", training) for m, s in streams.items()}
    inputs = projections if spec.single_branch else streams
    logits = {}
    for m, s in inputs.items():
        kind = "mlp" if spec.head_type == "mlp" else ("sdt_all" if m == "all" else "sdt")
        logits[m] = _head(p, f"{m}_output_layer", s, spec, kind, training)
    anchor_logits = None
    if spec.vega and anchors is not None:
        anchor_logits = {m: spec.anchor_logit_scale * (g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ anchors.T
                         for m, g in projections.items()}
    return {"logits": logits, "anchor_logits": anchor_logits, "fused": fused}


def reference_forward(model, dialogues, anchors: torch.Tensor | None, training: bool = False) -> dict:
    """Loop over dialogues (ercpipe.train.data.Dialogue); outputs concatenated as one [1, N, *] sequence, so
    they plug into SDTVegaLoss with an all-True mask."""
    outs = [reference_dialogue(model, dlg.features, dlg.speakers, anchors, training) for dlg in dialogues]

    def cat(key):
        if outs[0][key] is None:
            return None
        return {m: torch.cat([o[key][m] for o in outs]).unsqueeze(0) for m in outs[0][key]}
    return {"logits": cat("logits"), "anchor_logits": cat("anchor_logits"),
            "fused": torch.cat([o["fused"] for o in outs]).unsqueeze(0)}
