"""SDT and SDT-VEGA in one module (spec sections 2 and 9).

The same code builds
* SDT-VEGA (official VEGA code): 3-layer GELU heads, learnable KL temperatures, the VEGA branch
  (CLIP projection heads + anchors) when `vega` is on;
* SDT (original repository): `head_type="sdt"`, fixed temperature (no temperature parameters), no VEGA;
* the ablations of paper Table 4: no positional / speaker embeddings, no intra / inter encoders,
  single branch (classification on the CLIP projection), modality subsets down to one modality.

A modality that is not in `modalities` has no input projection, encoders, gates, heads or temperatures.
With one modality there are no inter encoders, no fusion gate (a softmax over one stream is 1, so F = R)
and no unimodal head (it would duplicate the fused head on the same representation).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ercpipe.model.anchors import AnchorBank
from ercpipe.model.layers import (Encoder, Layout, MultimodalGate, PositionalEncoding, UnimodalGate, mlp,
                                  sdt_unimodal_head)
from ercpipe.model.spec import MODALITY_SHORT, ModelSpec

# Official input-projection names (spec 8.1; ercpipe.model.convert maps `inputs.t` to them).
INPUT_NAMES: dict[str, str] = {"t": "textf_input", "a": "acouf_input", "v": "visuf_input"}


class SDTVega(nn.Module):
    """Forward: features {modality: [B, L, D_m]}, speakers [B, L] (slot ids), mask [B, L] (True = utterance).

    Outputs are [B, L, *] with zeros at padded positions; only the valid utterances are computed.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        d, short = spec.hidden_dim, spec.short
        self.classes: list[str] | None = None  # set by the trainer / load_model for readable predictions
        # Training-split feature standardization {modality: {mean, std}} (load_model sets it; predict applies it).
        self.feature_stats: dict | None = None
        # modality -> {extractor, model, settings, encoder_dir} of the training features (for ercpipe.infer).
        self.feature_sources: dict[str, dict] = {}
        # Module names follow the roles; ercpipe.model.convert maps them to the official names (`t_t`,
        # `t_t_gate`, `features_reduce_t`, `textf_input`, `t_output_layer`, `t_cls_temp`, ...). Built in the
        # official order, so a seed gives the same initial weights.
        if spec.speaker_embeddings:
            # Row S is the padding slot: zero and never updated (padding_idx), for any number of speakers (O4).
            # Drawn first, so its size shifts every later layer's initial weights: only the training split's slots
            # are drawn here (untrained_slots adds the others).
            drawn = spec.trained_speakers or spec.n_speakers
            self.speaker_embeddings = untrained_slots(nn.Embedding(drawn + 1, d, padding_idx=drawn), spec.n_speakers)
        # Kernel-size-1, bias-free "temporal convolution" = per-utterance linear map (spec 2.2, O3).
        self.inputs = nn.ModuleDict({MODALITY_SHORT[m]: nn.Linear(spec.input_dims[m], d, bias=False)
                                     for m in spec.modalities})
        self.pos_emb = PositionalEncoding(d, spec.max_positions)
        # "source_target": the encoder whose queries come from target and keys/values from source.
        self.encoders = nn.ModuleDict({name: Encoder(d, spec.n_heads, spec.dropout, spec.mask_fill,
                                                     intra=name.split("_")[0] == name.split("_")[1])
                                       for name in spec.encoder_names()})
        self.gates = nn.ModuleDict({name: UnimodalGate(d, frozen_identity=spec.gates == "identity_frozen")
                                    for name in spec.encoder_names()})
        self.reduce = nn.ModuleDict({m: nn.Linear(len(spec.encoders_of(m)) * d, d) for m in short})
        if spec.multimodal:
            self.last_gate = MultimodalGate(d)
        # Heads: unimodal ones only when there is something to fuse.
        head_in = spec.clip_dim if spec.single_branch else d
        unimodal = short if spec.multimodal else []
        self.heads = nn.ModuleDict()
        for m in unimodal + ["all"]:
            if spec.head_type == "mlp":
                self.heads[m] = mlp(head_in, d, spec.n_classes, spec.head_layers, spec.head_activation,
                                    spec.head_dropout)
            elif m == "all":
                self.heads[m] = nn.Linear(head_in, spec.n_classes)
            else:
                self.heads[m] = sdt_unimodal_head(head_in, spec.n_classes, spec.dropout)
        if spec.learnable_temperatures:  # theta per unimodal stream, T = exp(theta)
            self.cls_temps = nn.ParameterDict({m: _log_temperature(spec) for m in unimodal})
        if spec.vega:
            self.clip_projs = nn.ModuleDict({m: mlp(d, d, spec.clip_dim, spec.clip_proj_layers,
                                                    spec.clip_proj_activation, spec.clip_proj_dropout)
                                             for m in unimodal + ["all"]})
            if spec.learnable_temperatures:
                self.clip_temps = nn.ParameterDict({m: _log_temperature(spec) for m in unimodal})
            # Dead in the official code (O5): never used, never trained. Kept only so parameter counts
            # equal the official model's (spec 7); nothing reads it.
            self.prob_gate_logit = nn.Parameter(torch.zeros(()))
            self.anchor_bank = AnchorBank(spec.n_classes, spec.clip_dim, spec.p_random_anchor)

    # ------------------------------------------------------------------------------------- helpers

    def set_anchors(self, centers, image_features: Sequence) -> None:
        if not self.spec.vega:
            raise ValueError("this model has no VEGA branch (loss.clip_loss is off); it takes no anchors")
        self.anchor_bank.set_anchors(centers, image_features)

    def temperature(self, branch: str, m: str) -> torch.Tensor | float:
        """T = exp(theta) of the learnable temperature, or the fixed SDT temperature."""
        if not self.spec.learnable_temperatures:
            return self.spec.fixed_temperature
        return (self.cls_temps if branch == "cls" else self.clip_temps)[m].exp()

    def _temperature_value(self, branch: str, m: str) -> float:
        value = self.temperature(branch, m)
        return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)

    def temperatures(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        unimodal = self.spec.short if self.spec.multimodal else []
        for branch in ("cls", "clip") if self.spec.vega else ("cls",):
            out[branch] = {m: self._temperature_value(branch, m) for m in unimodal}
        return out

    def backbone_parameter_names(self) -> list[str]:
        """State-dict keys of the backbone = what the official checkpoint stores (no VEGA branch; official
        names: ercpipe.model.convert.official_key)."""
        return [k for k in self.state_dict() if not is_vega_key(k)]

    # ------------------------------------------------------------------------------------- forward

    def _check_inputs(self, features: dict, speakers: torch.Tensor, mask: torch.Tensor) -> None:
        """A ValueError naming what is wrong with the inputs of a direct call (the library's own batches pass);
        no device synchronisation: the speaker range is checked for CPU tensors only (the trainer checks the
        slots when it loads the data)."""
        spec = self.spec
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            raise ValueError(f"mask must be a [B, L] tensor (True = utterance), got "
                             f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        b, length = mask.shape
        if spec.speaker_embeddings and (not isinstance(speakers, torch.Tensor) or tuple(speakers.shape) != (b, length)):
            got = tuple(speakers.shape) if isinstance(speakers, torch.Tensor) else type(speakers).__name__
            raise ValueError(f"speakers must be a [B, L] = [{b}, {length}] tensor of slot ids like mask, got {got}")
        missing = [m for m in spec.modalities if m not in features]
        if missing:
            raise ValueError(f"features lack {missing}: the model takes {{{', '.join(spec.modalities)}}} "
                             f"(full names), each [B, L, width]; got keys {sorted(features)}")
        weight_dtype = next(iter(self.inputs.values())).weight.dtype
        for m in spec.modalities:
            x = features[m]
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"{m} features must be a torch tensor, got {type(x).__name__} "
                                 "(torch.from_numpy(array).float())")
            if tuple(x.shape) != (b, length, spec.input_dims[m]):
                raise ValueError(f"{m} features have shape {tuple(x.shape)}, expected [B, L, width] = "
                                 f"[{b}, {length}, {spec.input_dims[m]}] (mask's [B, L], the spec's input width)")
            if x.dtype != weight_dtype and not (x.is_floating_point() and torch.is_autocast_enabled(x.device.type)):
                raise ValueError(f"{m} features are {x.dtype}, the model's weights {weight_dtype}: convert them "
                                 f"(x.to({weight_dtype}); NumPy arrays are float64 by default)")
        if mask.device.type == "cpu" and bool((mask[:, 1:].bool() & ~mask[:, :-1].bool()).any()):
            raise ValueError("mask: each row must be its utterances first, then padding (True...True False...False); "
                             "positions count from the row's start, so left or inner padding changes the results")
        if spec.speaker_embeddings and speakers.device.type == "cpu":
            slots = speakers[mask.bool()]
            if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= spec.n_speakers):
                raise ValueError(f"speaker slots must be in 0..{spec.n_speakers - 1} (n_speakers "
                                 f"{spec.n_speakers}) at utterances, got {int(slots.min())}..{int(slots.max())}")

    def forward(self, features: dict[str, torch.Tensor], speakers: torch.Tensor, mask: torch.Tensor,
                with_vega: bool = True) -> dict:
        """Returns logits {t, a, v, all} [B, L, C], anchor_logits (same keys, or None), fused F [B, L, d].

        with_vega=False is the backbone-only forward of inference: no anchor logits are computed (the
        projections still run in single-branch mode, where classification depends on them).
        """
        spec, short = self.spec, self.spec.short
        self._check_inputs(features, speakers, mask)
        layout = Layout(mask)
        b, length = layout.batch, layout.length
        additive = None
        if spec.positional_embeddings:
            positions = self.pos_emb(length).to(dtype=torch.float32).expand(b, length, -1)
            additive = layout.pack(positions)
        if spec.speaker_embeddings:
            # Slots < S are checked when the data are loaded. Padded positions are not computed at all, so
            # the padding row S (zero, never updated) is kept only for the official layout and counts.
            spk = self.speaker_embeddings(layout.pack(speakers.long()))
            additive = spk if additive is None else additive + spk
        projected = {MODALITY_SHORT[m]: self.inputs[MODALITY_SHORT[m]](layout.pack(features[m]))
                     for m in spec.modalities}

        reduced: dict[str, torch.Tensor] = {}
        for target in short:
            gated = []
            for name in spec.encoders_of(target):
                source = name.split("_")[0]
                hidden = self.encoders[name](projected[source], projected[target], additive, layout)
                gated.append(self.gates[name](hidden))
            reduced[target] = self.reduce[target](torch.cat(gated, dim=-1))
        fused = self.last_gate([reduced[m] for m in short]) if spec.multimodal else reduced[short[0]]

        streams = dict(reduced) if spec.multimodal else {}
        streams["all"] = fused
        projections = None
        if spec.vega and (with_vega or spec.single_branch):
            projections = {m: self.clip_projs[m](x) for m, x in streams.items()}
        head_inputs = projections if spec.single_branch else streams
        logits = {m: layout.unpack(self.heads[m](x)) for m, x in head_inputs.items()}

        anchor_logits = None
        if spec.vega and with_vega:
            anchors = self.anchor_bank(sample=self.training or spec.anchor_sampling_at_eval)
            anchor_logits = {
                m: layout.unpack(spec.anchor_logit_scale
                                 * torch.nn.functional.normalize(g, dim=-1, eps=1e-12) @ anchors.to(g.dtype).T)
                for m, g in projections.items()}
        return {"logits": logits, "anchor_logits": anchor_logits, "fused": layout.unpack(fused)}


def untrained_slots(table: nn.Embedding, n_speakers: int) -> nn.Embedding:
    """`table` (its last row the padding slot) grown to n_speakers slots: the new rows, for slots that only valid or
    test dialogues use, come from a generator of their own (seeded from the run's seed), so that how many there
    are changes no other initial weight. `table` itself when it has them all."""
    drawn, width = table.num_embeddings - 1, table.embedding_dim
    if drawn >= n_speakers:
        return table
    weight = table.weight.detach()
    generator = torch.Generator().manual_seed((torch.initial_seed() + 1) % 2**63)
    extra = torch.randn(n_speakers - drawn, width, generator=generator, device="cpu").to(weight.device, weight.dtype)
    padding = torch.zeros(1, width, device=weight.device, dtype=weight.dtype)
    return nn.Embedding(n_speakers + 1, width, padding_idx=n_speakers,
                        _weight=torch.cat([weight[:drawn], extra, padding]))


def _log_temperature(spec: ModelSpec) -> nn.Parameter:
    return nn.Parameter(torch.tensor(math.log(spec.temperature_init)))


def is_vega_key(key: str) -> bool:
    """True for the VEGA-only parameters the official checkpoint does not store (spec 8.1)."""
    return key.split(".")[0] in ("clip_projs", "clip_temps", "prob_gate_logit", "anchor_bank")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_model(spec: ModelSpec, device: str | torch.device | None = None) -> SDTVega:
    """Build on `device` ("meta" to count parameters without allocating memory)."""
    if device is None:
        return SDTVega(spec)
    with torch.device(device):
        return SDTVega(spec)
