"""Building blocks of SDT / SDT-VEGA (spec sections 2.3-2.11).

Module and parameter names follow the official code (spec 8.1) so the released backbone checkpoint maps
onto this implementation key by key (ercpipe.model.convert). Inputs and outputs are batch-first [B, L, d];
inside, utterances are packed [N, d] (see Layout).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Inverted dropout, the same distribution as F.dropout (keep with probability 1 - rate, scale kept
    values by 1 / (1 - rate)), with the mask drawn as uniform >= rate: on the CPU that is about 3x cheaper
    than F.dropout's bernoulli_ draw (the largest cost after the matrix products at the official rates).
    Draws on the global CPU generator, so a seed gives the same masks every run. Other devices: F.dropout."""
    if not training or rate <= 0.0:
        return x
    if x.device.type != "cpu":  # CUDA has a fused dropout kernel
        return F.dropout(x, rate, True)
    if rate >= 1.0:
        return x * 0.0
    keep = torch.rand(x.shape, device=x.device).ge_(rate).mul_(1.0 / (1.0 - rate))  # 0 or 1 / (1 - rate)
    return x * (keep if x.dtype == keep.dtype else keep.to(x.dtype))


class Dropout(nn.Dropout):
    """nn.Dropout (same module tree and repr) computed by `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


# Activations the head builder accepts (spec 2.10/2.11: GELU is the exact erf form there).
ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "elu": lambda: nn.ELU(alpha=1.0),
    "silu": lambda: nn.SiLU(),
    "relu": lambda: nn.ReLU(),
    "tanh": lambda: nn.Tanh(),
}


def sinusoidal_table(length: int, dim: int, device=None) -> torch.Tensor:
    """P[q, 2i] = sin(q w_i), P[q, 2i+1] = cos(q w_i), w_i = 10000^(-2i/d) (spec 2.3), float32 [length, dim]."""
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)[:, : dim // 2]
    return table


class PositionalEncoding(nn.Module):
    """The fixed sinusoidal table, held once for all nine encoders (the official code keeps nine copies).

    The buffer is not persistent: it is a function of (length, d), so checkpoints need not carry it.
    Dialogues longer than the table get a longer table computed on the fly (the official code stops at 512).
    """

    def __init__(self, dim: int, max_positions: int = 512):
        super().__init__()
        self.dim = dim
        self.register_buffer("pe", sinusoidal_table(max_positions, dim), persistent=False)

    def forward(self, length: int) -> torch.Tensor:
        if length <= self.pe.shape[0]:
            return self.pe[:length].unsqueeze(0)
        return sinusoidal_table(length, self.dim, device=self.pe.device).unsqueeze(0)


class Layout:
    """Where the packed utterance rows [N, *] sit in the padded batch [B, L, *].

    Everything in the model except the attention core is per utterance, so it runs on the N valid rows
    only (no work on padding); attention scatters its keys, values and queries into [B, L] and gathers back.
    pack and unpack are each other's backward (a row gather and a row scatter into zeros), written as
    autograd functions so neither backward goes through a generic scatter-add.
    """

    def __init__(self, mask: torch.Tensor):
        self.mask = mask.bool()
        self.batch, self.length = self.mask.shape
        self.index = self.mask.reshape(-1).nonzero().squeeze(1)
        self.dense = self.index.numel() == self.batch * self.length  # no padding: pack/unpack are views

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        flat = padded.reshape(self.batch * self.length, *padded.shape[2:])
        return flat if self.dense else _Pack.apply(flat, self.index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        flat = packed if self.dense else _Unpack.apply(packed, self.index, self.batch * self.length)
        return flat.view(self.batch, self.length, *packed.shape[1:])


def _scatter_rows(rows: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    return rows.new_zeros(n, *rows.shape[1:]).index_copy_(0, index, rows)


class _Pack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, index):
        ctx.save_for_backward(index)
        ctx.rows = flat.shape[0]
        return flat.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _scatter_rows(grad.contiguous(), index, ctx.rows), None


class _Unpack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, packed, index, rows):
        ctx.save_for_backward(index)
        return _scatter_rows(packed.contiguous(), index, rows)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


class MultiHeadedAttention(nn.Module):
    """Spec 2.5 with fused attention; padded keys get `mask_fill` as an additive bias.

    The official code *replaces* masked scores with -1e4 (VEGA) / -1e10 (SDT); adding the same constant
    gives the same softmax whenever a row has at least one valid key (always true: a dialogue has >= 1
    utterance), because exp(score - 1e4) underflows to 0 exactly as exp(-1e4) does.
    """

    def __init__(self, n_heads: int, dim: int, dropout: float, mask_fill: float):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden width {dim} is not divisible by {n_heads} attention heads")
        self.n_heads, self.head_dim, self.dropout, self.mask_fill = n_heads, dim // n_heads, dropout, mask_fill
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear = nn.Linear(dim, dim)  # output projection (official name)

    def _heads(self, packed: torch.Tensor, layout: Layout) -> torch.Tensor:
        return layout.unpack(packed).view(layout.batch, layout.length, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, layout: Layout) -> torch.Tensor:
        """query, key_value: packed [N, d]; returns packed [N, d]."""
        q = self._heads(self.linear_q(query), layout)
        k = self._heads(self.linear_k(key_value), layout)
        v = self._heads(self.linear_v(key_value), layout)
        # Additive key-padding bias in the compute dtype; -1e10 does not fit fp16, so it is clamped to the
        # most negative finite value there (the softmax result is the same).
        fill = max(self.mask_fill, torch.finfo(q.dtype).min)
        bias = torch.zeros(layout.mask.shape, dtype=q.dtype, device=q.device).masked_fill(~layout.mask, fill)
        bias = bias[:, None, None, :]
        if self.training and self.dropout > 0 and q.device.type == "cpu":
            # What SDPA does on the CPU when it has to drop attention weights (its math path), with the
            # cheaper dropout draw.
            scores = torch.baddbmm(bias.expand(-1, self.n_heads, layout.length, -1).reshape(-1, layout.length,
                                                                                               layout.length),
                                   q.reshape(-1, layout.length, self.head_dim),
                                   k.reshape(-1, layout.length, self.head_dim).transpose(1, 2),
                                   alpha=1.0 / math.sqrt(self.head_dim))
            weights = dropout(torch.softmax(scores, dim=-1), self.dropout, True)
            out = torch.bmm(weights, v.reshape(-1, layout.length, self.head_dim))
            out = out.view(layout.batch, self.n_heads, layout.length, self.head_dim)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                 dropout_p=self.dropout if self.training else 0.0)
        out = layout.pack(out.transpose(1, 2).reshape(layout.batch, layout.length, self.n_heads * self.head_dim))
        return self.linear(out)


class PositionwiseFeedForward(nn.Module):
    """Pre-norm FFN of width d with the tanh GELU: U + Drop(W2 Drop(GELU_tanh(W1 LN(U) + b1)) + b2)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.w_1 = nn.Linear(dim, dim)
        self.w_2 = nn.Linear(dim, dim)
        self.layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.dropout_1 = Dropout(dropout)
        self.dropout_2 = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inter = self.dropout_1(F.gelu(self.w_1(self.layer_norm(x)), approximate="tanh"))
        return self.dropout_2(self.w_2(inter)) + x


class TransformerEncoderLayer(nn.Module):
    """The single encoder layer. `layer_norm` is never applied (it only acts in layers with index > 0,
    and every encoder has one layer); it is kept so the official checkpoint loads with strict keys (O2)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, mask_fill: float):
        super().__init__()
        self.self_attn = MultiHeadedAttention(n_heads, dim, dropout, mask_fill)
        self.feed_forward = PositionwiseFeedForward(dim, dropout)
        self.layer_norm = nn.LayerNorm(dim, eps=1e-6)  # unused, see class docstring
        self.dropout = Dropout(dropout)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, layout: Layout) -> torch.Tensor:
        context = self.self_attn(query, key_value, layout)
        return self.feed_forward(self.dropout(context) + query)


class Encoder(nn.Module):
    """One source->target encoder (spec 2.4). Intra vs inter is fixed at construction (O1), not decided
    by comparing tensor values at run time."""

    def __init__(self, dim: int, n_heads: int, dropout: float, mask_fill: float, intra: bool):
        super().__init__()
        self.intra = intra
        self.dropout = Dropout(dropout)
        self.transformer_inter = nn.ModuleList([TransformerEncoderLayer(dim, n_heads, dropout, mask_fill)])

    def forward(self, source: torch.Tensor, target: torch.Tensor, additive: torch.Tensor | None,
                layout: Layout) -> torch.Tensor:
        """source/target: projected inputs X, packed [N, d]; additive: positions + speaker embedding or None."""
        if additive is not None:
            target = target + additive
        z_q = self.dropout(target)
        if self.intra:
            z_s = z_q
        else:
            z_s = self.dropout(source + additive if additive is not None else source)
        return self.transformer_inter[0](z_q, z_s, layout)


class UnimodalGate(nn.Module):
    """G = sigmoid(H W^T) * H (spec 2.7); frozen identity W makes it SiLU (SDT on MELD, O14)."""

    def __init__(self, dim: int, frozen_identity: bool = False):
        super().__init__()
        self.fc = nn.Linear(dim, dim, bias=False)
        if frozen_identity:
            with torch.no_grad():
                self.fc.weight.copy_(torch.eye(dim))
            self.fc.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x)) * x


class MultimodalGate(nn.Module):
    """Channel-wise softmax over modalities of the shared projection W_f R_m (spec 2.9)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim, bias=False)

    def forward(self, streams: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(streams, dim=0)  # [M, N, d]
        weights = torch.softmax(self.fc(stacked), dim=0)
        return (weights * stacked).sum(dim=0)


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int, activation: str, dropout: float) -> nn.Sequential:
    """The official head builder: n linear layers, hidden widths = d, activation then dropout after every
    layer except the last. Index layout 0, 3, 6, ... of the linear layers matches the official keys."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if layers < 1:
        raise ValueError(f"a head needs at least one layer, got {layers}")
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(width, hidden_dim), ACTIVATIONS[activation](), Dropout(dropout)]
        width = hidden_dim
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


def sdt_unimodal_head(dim: int, n_classes: int, dropout: float) -> nn.Sequential:
    """SDT's unimodal head: ReLU -> Dropout(p) -> Linear(d, C) (spec 9)."""
    return nn.Sequential(nn.ReLU(), Dropout(dropout), nn.Linear(dim, n_classes))
