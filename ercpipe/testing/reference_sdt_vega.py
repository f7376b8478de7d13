"""The official formulation of the SDT / SDT-VEGA forward pass (spec section 2), for checking and timing.

Test and benchmark support, not pipeline code: no rule, script or library module imports it. It reads the
parameters of an `ercpipe.model.SDTVega` (by their official names) and computes the outputs the way the
official code does: on the padded batch [B, L, *] everywhere (input projections, embeddings, the nine
encoders, gates, reductions, fusion and heads all run on the B*L positions, padding included), standard
attention with explicit softmax (scores of padded keys *replaced* by `mask_fill`, spec 2.5), and the
padding speaker slot S for padded positions (spec 2.1). It is vectorized over the batch (no Python loop
over dialogues) and uses the same kernels the official modules call (F.linear = nn.Linear, F.layer_norm,
F.gelu, torch.softmax), so it is as fast as the official code's own formulation; the one liberty is the
input projection as F.linear on the batch-first features instead of the official channel-first
Conv1d(k=1) behind two permutes (the same product, without the copies).

The library (ercpipe.model.sdt: packed utterances, fused attention) must give the same numbers at valid
positions (tests/test_model.py, bench/bench_train.py); outputs at padded positions are what the official
code computes there and are ignored by the losses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ercpipe.model.convert import official_key
from ercpipe.model.layers import sinusoidal_table

SHORT = {"text": "t", "audio": "a", "visual": "v"}
INPUT = {"t": "textf_input", "a": "acouf_input", "v": "visuf_input"}
ACT = {"gelu": F.gelu, "elu": F.elu, "silu": F.silu, "relu": F.relu, "tanh": torch.tanh}


def _linear(p: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))


def _drop(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    return F.dropout(x, rate, training) if training and rate > 0 else x


def _attention(p: dict, name: str, zq: torch.Tensor, zs: torch.Tensor, key_padding: torch.Tensor, heads: int,
               fill: float, rate: float, training: bool) -> torch.Tensor:
    """Official multi-head attention: zq, zs [B, L, d]; key_padding [B, 1, 1, L] (True = padded key)."""
    b, length, d = zq.shape
    dh = d // heads

    def split(x):
        return x.view(b, length, heads, dh).transpose(1, 2)  # [B, h, L, dh]

    q = split(_linear(p, f"{name}.linear_q", zq)) / math.sqrt(dh)
    k = split(_linear(p, f"{name}.linear_k", zs))
    v = split(_linear(p, f"{name}.linear_v", zs))
    scores = (q @ k.transpose(2, 3)).masked_fill(key_padding, fill)  # [B, h, L, L]
    weights = _drop(torch.softmax(scores, dim=-1), rate, training)
    context = (weights @ v).transpose(1, 2).reshape(b, length, d)
    return _linear(p, f"{name}.linear", context)


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


def reference_forward(model, features: dict[str, torch.Tensor], speakers: torch.Tensor, mask: torch.Tensor,
                      anchors: torch.Tensor | None, training: bool = False) -> dict:
    """Outputs of the padded batch: features {modality: [B, L, D_m]}, speakers [B, L] (slot ids), mask [B, L]
    (True = utterance); anchors: L2-normalized [C, k] or None. Returns logits / anchor_logits {head: [B, L, C]}
    and fused [B, L, d], computed at every position (the losses read the valid ones through the mask)."""
    spec = model.spec
    p = {official_key(name): value for name, value in model.named_parameters()}  # by the official names
    d, rate = spec.hidden_dim, spec.dropout
    mask = mask.bool()
    b, length = mask.shape
    additive = None
    if spec.positional_embeddings:
        additive = sinusoidal_table(length, d, device=mask.device).unsqueeze(0)  # [1, L, d]
    if spec.speaker_embeddings:
        slots = speakers.long().masked_fill(~mask, spec.n_speakers)  # padding slot S (zero row)
        spk = F.embedding(slots, p["speaker_embeddings.weight"])
        additive = spk if additive is None else additive + spk
    key_padding = ~mask[:, None, None, :]
    short = [SHORT[m] for m in SHORT if m in spec.modalities]
    x = {SHORT[m]: F.linear(features[m], p[f"{INPUT[SHORT[m]]}.weight"]) for m in spec.modalities}
    reduced = {}
    for target in short:
        gated = []
        for name in spec.encoders_of(target):
            source = name.split("_")[0]
            embed_q = x[target] if additive is None else x[target] + additive
            zq = _drop(embed_q, rate, training)
            if source == target:
                zs = zq
            else:
                zs = _drop(x[source] if additive is None else x[source] + additive, rate, training)
            layer = f"{name}.transformer_inter.0"
            context = _attention(p, f"{layer}.self_attn", zq, zs, key_padding, spec.n_heads, spec.mask_fill, rate,
                                 training)
            u = _drop(context, rate, training) + zq
            ff = f"{layer}.feed_forward"
            normed = F.layer_norm(u, (d,), p[f"{ff}.layer_norm.weight"], p[f"{ff}.layer_norm.bias"], eps=1e-6)
            hidden = _drop(F.gelu(_linear(p, f"{ff}.w_1", normed), approximate="tanh"), rate, training)
            y = _drop(_linear(p, f"{ff}.w_2", hidden), rate, training) + u
            gated.append(torch.sigmoid(F.linear(y, p[f"{name}_gate.fc.weight"])) * y)
        reduced[target] = _linear(p, f"features_reduce_{target}", torch.cat(gated, dim=-1))
    if len(short) > 1:
        stacked = torch.stack([reduced[m] for m in short], dim=-2)  # [B, L, M, d]
        alpha = torch.softmax(F.linear(stacked, p["last_gate.fc.weight"]), dim=-2)
        fused = (alpha * stacked).sum(dim=-2)
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
        anchor_logits = {m: spec.anchor_logit_scale * F.normalize(g, dim=-1, eps=1e-12) @ anchors.T
                         for m, g in projections.items()}
    return {"logits": logits, "anchor_logits": anchor_logits, "fused": fused}
