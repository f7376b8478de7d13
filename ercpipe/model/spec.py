"""ModelSpec: what builds an SDT / SDT-VEGA module, its defaults and checks, and how it comes from a resolved
experiment. Light (standard library and ercpipe.checks only): the parse-time experiment checks
(ercpipe.train.presets) read the defaults and checks from here without importing torch.

A field that an experiment sets names its key in its metadata (`_key`): the default written here is the
default of that key (= the `official` preset), its check is the key's check, and `spec_from_experiment`
copies it from the resolved experiment. The other fields come from the data (input_dims, n_classes,
n_speakers), the anchors (clip_dim), or loss.kl_temperature (learnable_temperatures, fixed_temperature).
A checkpoint stores `to_dict()`, keyed by these field names.
"""
from __future__ import annotations

import numbers

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ercpipe.checks import boolean, choice, integer, number

MODALITY_SHORT: dict[str, str] = {"text": "t", "audio": "a", "visual": "v"}
ACTIVATIONS = ("gelu", "elu", "silu", "relu", "tanh")
UNIT = number(0.0, 1.0, hi_open=True)  # a dropout rate


def modalities(v: Any) -> str | None:
    if not isinstance(v, (list, tuple)) or not v or any(m not in MODALITY_SHORT for m in v) or len(set(v)) != len(v):
        return f"must be a non-empty list of distinct modalities from {list(MODALITY_SHORT)}"
    return None


def _key(default: Any, check, key: str | None = None):
    """A field an experiment sets: `key` is its dotted key in the resolved experiment (default model.<field>)."""
    return field(default=default, metadata={"check": check, "key": key})


@dataclass
class ModelSpec:
    """Everything needed to build the module; stored in checkpoints so a model can be rebuilt."""

    input_dims: dict[str, int]  # modality name -> feature width, e.g. {"text": 1024, "audio": 1582, ...}
    n_classes: int
    n_speakers: int
    modalities: tuple[str, ...] = _key(("text", "audio", "visual"), modalities)
    hidden_dim: int = _key(768, integer(2))
    n_heads: int = _key(4, integer(1))
    dropout: float = _key(0.53, UNIT)
    mask_fill: float = _key(-1e4, number(hi=0.0, hi_open=True), "model.attention_mask_fill")
    max_positions: int = _key(512, integer(1))
    positional_embeddings: bool = _key(True, boolean)
    speaker_embeddings: bool = _key(True, boolean)
    intra_encoders: bool = _key(True, boolean)
    inter_encoders: bool = _key(True, boolean)
    gates: str = _key("trainable", choice("trainable", "identity_frozen"))
    head_type: str = _key("mlp", choice("mlp", "sdt"))  # "mlp" (VEGA) | "sdt"
    head_layers: int = _key(3, integer(1))
    head_activation: str = _key("gelu", choice(*ACTIVATIONS))
    head_dropout: float = _key(0.3963, UNIT)
    vega: bool = _key(True, boolean, "loss.clip_loss")  # the VEGA branch (CLIP projections + anchors)
    clip_dim: int = 512  # the anchors' width
    clip_proj_layers: int = _key(2, integer(1))
    clip_proj_activation: str = _key("elu", choice(*ACTIVATIONS))
    clip_proj_dropout: float = _key(0.37442, UNIT)
    single_branch: bool = _key(False, boolean)
    learnable_temperatures: bool = True  # loss.kl_temperature == "learnable"
    temperature_init: float = _key(2.0, number(0.0, lo_open=True), "loss.kl_temperature_init")
    fixed_temperature: float = 1.0  # loss.kl_temperature when it is a number
    p_random_anchor: float = _key(0.4, number(0.0, 1.0))
    anchor_logit_scale: float = _key(100.0, number(0.0, lo_open=True))
    anchor_sampling_at_eval: bool = _key(False, boolean)
    # Speaker slots the training split uses, when fewer than n_speakers (slots only valid or test dialogues use):
    # only their rows are drawn from the seed's stream (ercpipe.model.sdt), so a test dialogue with more speakers
    # changes no initial weight. None: every slot's row drawn there.
    trained_speakers: int | None = None

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        for f in fields(self):
            check = f.metadata.get("check")
            problem = check(getattr(self, f.name)) if check else None
            if problem:
                raise ValueError(f"{f.name} ({CONFIG_KEYS[f.name]}): {problem}, got {getattr(self, f.name)!r}")
        missing = [m for m in self.modalities if m not in self.input_dims]
        if missing:
            raise ValueError(f"no input width for modality {missing}; input_dims has {sorted(self.input_dims)}")
        # What describes the data (not config keys): whole numbers, else nn.Linear fails later with a size error.
        for name, value, least in ([("n_classes", self.n_classes, 1), ("n_speakers", self.n_speakers, 1),
                                    ("clip_dim", self.clip_dim, 1)]
                                   + [(f"input_dims[{m!r}]", self.input_dims[m], 1) for m in self.modalities]):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
        if self.trained_speakers is not None and not (
                isinstance(self.trained_speakers, numbers.Integral) and 1 <= self.trained_speakers <= self.n_speakers):
            raise ValueError(f"trained_speakers must be None or a whole number from 1 to n_speakers "
                             f"({self.n_speakers}), got {self.trained_speakers!r}")
        problem = combination_problem(asdict(self))
        if problem:
            raise ValueError(f"{problem[0]}: {problem[1]}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["modalities"] = list(self.modalities)
        if out["trained_speakers"] is None:  # as before the field existed: an older ercpipe can load the checkpoint
            del out["trained_speakers"]
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


# ModelSpec field -> its dotted key in the resolved experiment (declared once, by the fields' metadata).
CONFIG_KEYS: dict[str, str] = {f.name: f.metadata["key"] or f"model.{f.name}"
                               for f in fields(ModelSpec) if "check" in f.metadata}


def experiment_keys(section: str) -> dict[str, tuple[Any, Any]]:
    """The experiment keys of `section` (model, loss) that ModelSpec holds: key -> (default, check)."""
    out = {}
    for f in fields(ModelSpec):
        if f.name in CONFIG_KEYS and CONFIG_KEYS[f.name].startswith(f"{section}."):
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            out[CONFIG_KEYS[f.name].split(".", 1)[1]] = (default, f.metadata["check"])
    return out


def combination_problem(values: dict) -> tuple[str, str] | None:
    """(dotted experiment key, message) of the first inconsistent combination of ModelSpec values, or None."""
    if values["hidden_dim"] % values["n_heads"]:
        return "model.n_heads", f"{values['n_heads']} heads do not divide model.hidden_dim {values['hidden_dim']}"
    if not (values["intra_encoders"] or values["inter_encoders"]):
        return "model.inter_encoders", "intra_encoders and inter_encoders cannot both be off"
    if len(values["modalities"]) == 1 and not values["intra_encoders"]:
        return ("model.intra_encoders", "a single-modality model has no inter-modal encoders, so the intra-modal "
                "encoder must stay on")
    if values["single_branch"] and not values["vega"]:
        return ("model.single_branch", "the single-branch head classifies the CLIP projection, which exists only "
                "with loss.clip_loss on")
    return None


def spec_values(experiment: dict) -> dict:
    """The ModelSpec fields a resolved experiment sets, by field name."""
    out = {}
    for name, key in CONFIG_KEYS.items():
        section, sub = key.split(".", 1)
        out[name] = experiment[section][sub]
    return out


def spec_from_experiment(experiment: dict, *, input_dims: dict[str, int], n_classes: int, n_speakers: int,
                         clip_dim: int, trained_speakers: int | None = None) -> ModelSpec:
    """The ModelSpec of a resolved experiment (ercpipe.train.presets.resolve_experiment) on data of these widths,
    classes and speaker slots (of which the training split uses `trained_speakers`), with anchors of width
    clip_dim."""
    temperature = experiment["loss"]["kl_temperature"]
    learnable = temperature == "learnable"
    return ModelSpec(input_dims=dict(input_dims), n_classes=n_classes, n_speakers=n_speakers, clip_dim=clip_dim,
                     trained_speakers=trained_speakers, learnable_temperatures=learnable, fixed_temperature=1.0 if learnable else float(temperature),
                     **spec_values(experiment))
