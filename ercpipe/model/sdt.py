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
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from ercpipe.model.anchors import AnchorBank
from ercpipe.model.layers import (Encoder, Layout, MultimodalGate, PositionalEncoding, UnimodalGate, mlp,
                                  sdt_unimodal_head)

MODALITY_SHORT: dict[str, str] = {"text": "t", "audio": "a", "visual": "v"}
# Official input-projection names (spec 8.1).
INPUT_NAMES: dict[str, str] = {"t": "textf_input", "a": "acouf_input", "v": "visuf_input"}


@dataclass
class ModelSpec:
    """Everything needed to build the module; stored in checkpoints so a model can be rebuilt."""

    input_dims: dict[str, int]  # modality name -> feature width, e.g. {"text": 1024, "audio": 1582, ...}
    n_classes: int
    n_speakers: int
    modalities: tuple[str, ...] = ("text", "audio", "visual")
    hidden_dim: int = 768
    n_heads: int = 4
    dropout: float = 0.53
    mask_fill: float = -1e4
    max_positions: int = 512
    positional_embeddings: bool = True
    speaker_embeddings: bool = True
    intra_encoders: bool = True
    inter_encoders: bool = True
    gates: str = "trainable"  # "trainable" | "identity_frozen"
    head_type: str = "mlp"  # "mlp" (VEGA) | "sdt"
    head_layers: int = 3
    head_activation: str = "gelu"
    head_dropout: float = 0.3963
    vega: bool = True
    clip_dim: int = 512
    clip_proj_layers: int = 2
    clip_proj_activation: str = "elu"
    clip_proj_dropout: float = 0.37442
    single_branch: bool = False
    learnable_temperatures: bool = True
    temperature_init: float = 2.0
    fixed_temperature: float = 1.0
    p_random_anchor: float = 0.4
    anchor_logit_scale: float = 100.0
    anchor_sampling_at_eval: bool = False

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        unknown = [m for m in self.modalities if m not in MODALITY_SHORT]
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct names from {list(MODALITY_SHORT)}, "
                             f"got {list(self.modalities)}")
        missing = [m for m in self.modalities if m not in self.input_dims]
        if missing:
            raise ValueError(f"no input width for modality {missing}; input_dims has {sorted(self.input_dims)}")
        if len(self.modalities) == 1 and not self.intra_encoders:
            raise ValueError("with a single modality there are no inter-modal encoders, so intra_encoders must be on")
        if not (self.intra_encoders or self.inter_encoders):
            raise ValueError("intra_encoders and inter_encoders cannot both be off")
        if self.single_branch and not self.vega:
            raise ValueError("single_branch classifies the CLIP projection, which exists only with the VEGA branch")
        if self.gates not in ("trainable", "identity_frozen"):
            raise ValueError(f"gates must be 'trainable' or 'identity_frozen', got {self.gates!r}")
        if self.head_type not in ("mlp", "sdt"):
            raise ValueError(f"head_type must be 'mlp' or 'sdt', got {self.head_type!r}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["modalities"] = list(self.modalities)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(**data)

    @property
    def short(self) -> list[str]:
        """Short names (t, a, v) of the modalities, in canonical order t, a, v."""
        return [MODALITY_SHORT[m] for m in MODALITY_SHORT if m in self.modalities]

    @property
    def multimodal(self) -> bool:
        return len(self.modalities) > 1

    def encoder_names(self) -> list[str]:
        """"source_target" names in the official execution order tt, at, vt, aa, ta, va, vv, tv, av,
        which is also the concatenation order of the reductions (own modality first)."""
        names = []
        for target in self.short:
            if self.intra_encoders:
                names.append(f"{target}_{target}")
            if self.inter_encoders:
                names += [f"{source}_{target}" for source in self.short if source != target]
        return names

    def encoders_of(self, target: str) -> list[str]:
        return [n for n in self.encoder_names() if n.endswith(f"_{target}")]


class SDTVega(nn.Module):
    """Forward: features {modality: [B, L, D_m]}, speakers [B, L] (slot ids), mask [B, L] (True = utterance).

    Outputs are [B, L, *] with zeros at padded positions; only the valid utterances are computed.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        d, short = spec.hidden_dim, spec.short
        self.classes: list[str] | None = None  # set by the trainer / load_model for readable predictions
        # Training-split feature standardisation {modality: {mean, std}} (load_model sets it; predict applies it).
        self.feature_stats: dict | None = None
        # modality -> {extractor, model, settings, encoder_dir} of the training features (for ercpipe.infer).
        self.feature_sources: dict[str, dict] = {}
        if spec.speaker_embeddings:
            # Row S is the padding slot: zero and never updated (padding_idx), for any number of speakers (O4).
            self.speaker_embeddings = nn.Embedding(spec.n_speakers + 1, d, padding_idx=spec.n_speakers)
        for m in spec.modalities:
            # Kernel-size-1, bias-free "temporal convolution" = per-utterance linear map (spec 2.2, O3).
            self.add_module(INPUT_NAMES[MODALITY_SHORT[m]], nn.Linear(spec.input_dims[m], d, bias=False))
        self.pos_emb = PositionalEncoding(d, spec.max_positions)
        for name in spec.encoder_names():
            source, target = name.split("_")
            self.add_module(name, Encoder(d, spec.n_heads, spec.dropout, spec.mask_fill, intra=source == target))
        for name in spec.encoder_names():
            self.add_module(f"{name}_gate", UnimodalGate(d, frozen_identity=spec.gates == "identity_frozen"))
        for m in short:
            self.add_module(f"features_reduce_{m}", nn.Linear(len(spec.encoders_of(m)) * d, d))
        if spec.multimodal:
            self.last_gate = MultimodalGate(d)
        # Heads: unimodal ones only when there is something to fuse.
        head_in = spec.clip_dim if spec.single_branch else d
        unimodal = short if spec.multimodal else []
        for m in unimodal + ["all"]:
            if spec.head_type == "mlp":
                head = mlp(head_in, d, spec.n_classes, spec.head_layers, spec.head_activation, spec.head_dropout)
            elif m == "all":
                head = nn.Linear(head_in, spec.n_classes)
            else:
                head = sdt_unimodal_head(head_in, spec.n_classes, spec.dropout)
            self.add_module(f"{m}_output_layer", head)
        if spec.learnable_temperatures:
            for m in unimodal:
                self.register_parameter(f"{m}_cls_temp", nn.Parameter(torch.tensor(math.log(spec.temperature_init))))
        if spec.vega:
            for m in unimodal + ["all"]:
                self.add_module(f"{m}_clip_proj", mlp(d, d, spec.clip_dim, spec.clip_proj_layers,
                                                      spec.clip_proj_activation, spec.clip_proj_dropout))
            if spec.learnable_temperatures:
                for m in unimodal:
                    self.register_parameter(f"{m}_clip_temp",
                                            nn.Parameter(torch.tensor(math.log(spec.temperature_init))))
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
        return getattr(self, f"{m}_{branch}_temp").exp()

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
        """State-dict keys of the backbone = what the official checkpoint stores (no VEGA branch)."""
        return [k for k in self.state_dict() if not is_vega_key(k)]

    # ------------------------------------------------------------------------------------- forward

    def forward(self, features: dict[str, torch.Tensor], speakers: torch.Tensor, mask: torch.Tensor,
                with_vega: bool = True) -> dict:
        """Returns logits {t, a, v, all} [B, L, C], anchor_logits (same keys, or None), fused F [B, L, d].

        with_vega=False is the backbone-only forward of inference: no anchor logits are computed (the
        projections still run in single-branch mode, where classification depends on them).
        """
        spec, short = self.spec, self.spec.short
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
        projected = {}
        for m in spec.modalities:
            x = features[m]
            if x.shape[:2] != (b, length):
                raise ValueError(f"{m} features have shape {tuple(x.shape)}, expected ({b}, {length}, D)")
            projected[MODALITY_SHORT[m]] = getattr(self, INPUT_NAMES[MODALITY_SHORT[m]])(layout.pack(x))

        reduced: dict[str, torch.Tensor] = {}
        for target in short:
            gated = []
            for name in spec.encoders_of(target):
                source = name.split("_")[0]
                hidden = getattr(self, name)(projected[source], projected[target], additive, layout)
                gated.append(getattr(self, f"{name}_gate")(hidden))
            reduced[target] = getattr(self, f"features_reduce_{target}")(torch.cat(gated, dim=-1))
        fused = self.last_gate([reduced[m] for m in short]) if spec.multimodal else reduced[short[0]]

        streams = dict(reduced) if spec.multimodal else {}
        streams["all"] = fused
        projections = None
        if spec.vega and (with_vega or spec.single_branch):
            projections = {m: getattr(self, f"{m}_clip_proj")(x) for m, x in streams.items()}
        head_inputs = projections if spec.single_branch else streams
        logits = {m: layout.unpack(getattr(self, f"{m}_output_layer")(x)) for m, x in head_inputs.items()}

        anchor_logits = None
        if spec.vega and with_vega:
            anchors = self.anchor_bank(sample=self.training or spec.anchor_sampling_at_eval)
            anchor_logits = {
                m: layout.unpack(spec.anchor_logit_scale
                                 * torch.nn.functional.normalize(g, dim=-1, eps=1e-12) @ anchors.to(g.dtype).T)
                for m, g in projections.items()}
        return {"logits": logits, "anchor_logits": anchor_logits, "fused": layout.unpack(fused)}


def is_vega_key(key: str) -> bool:
    """True for the VEGA-only parameters the official checkpoint does not store (spec 8.1)."""
    head = key.split(".")[0]
    return head.endswith("_clip_proj") or head.endswith("_clip_temp") or head in ("prob_gate_logit", "anchor_bank")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_model(spec: ModelSpec, device: str | torch.device | None = None) -> SDTVega:
    """Build on `device` ("meta" to count parameters without allocating memory)."""
    if device is None:
        return SDTVega(spec)
    with torch.device(device):
        return SDTVega(spec)
