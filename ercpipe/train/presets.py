"""Training presets and experiment validation (docs/training.md lists every key).

An experiment is a nested dict {preset: name, model: {...}, loss: {...}, train: {...}} plus any keys the
pipeline itself uses (dataset, features, anchors, seeds, ...), which are passed through untouched.
`resolve_experiment` starts from the named preset, applies the experiment's overrides and checks every
key and value, raising ValueError with the dotted key path. It imports nothing heavy: the Snakefile calls
it when it parses the config.
"""
from __future__ import annotations

import copy
import difflib
from typing import Any

from ercpipe.checks import boolean, choice, integer, is_number, number, yaml_number
from ercpipe.labels import MODALITIES
from ercpipe.model.spec import MODALITY_SHORT, combination_problem, experiment_keys, spec_values

SECTIONS = ("model", "loss", "train")

# ------------------------------------------------------------------------------------------ validators
# Checks return an error text or None (ercpipe.checks); the model keys' defaults and checks are ModelSpec's.


def betas(v: Any) -> str | None:
    if not isinstance(v, list) or len(v) != 2 or not all(is_number(b) and 0 <= b < 1 for b in v):
        return "must be a list of two numbers in [0, 1)"
    return None


def class_weights(v: Any) -> str | None:
    if v in ("auto", "train", "paper", "none"):
        return None
    if isinstance(v, list) and v and all(is_number(w) and w >= 0 for w in v):
        return None
    return "must be 'auto', 'train', 'paper', 'none' or a list of non-negative numbers (one per class)"


def temperature(v: Any) -> str | None:
    if v == "learnable" or (is_number(v) and v > 0):
        return None
    return "must be 'learnable' or a positive number (a fixed temperature)"


LAMBDA = number(lo=0.0)

# key -> (default = value of the `official` preset, check). The model keys that build the module (and
# loss.clip_loss, loss.kl_temperature_init) are ModelSpec's fields: their defaults and checks are written there
# (ercpipe.model.spec), the keys below only here.
SCHEMA: dict[str, dict[str, tuple[Any, Any]]] = {
    "model": {
        **experiment_keys("model"),
        "n_speakers": (None, integer(1, allow_none=True)),
        "anchors_per_class": (None, integer(1, allow_none=True)),
        "anchor_subsample_seed": (0, integer(0)),
        "clip_model": (None, lambda v: None if v is None or isinstance(v, str) else "must be a string or null"),
    },
    "loss": {
        "cls_loss": (True, boolean),
        "cls_all_cls_kl_loss": (True, boolean),
        **experiment_keys("loss"),  # clip_loss, kl_temperature_init
        "clip_all_clip_kl_loss": (True, boolean),
        "cls_lambda": (0.952145912451511, LAMBDA),
        "cls_all_lambda": (0.7666280675458248, LAMBDA),
        "cls_t_lambda": (0.51322460223468647, LAMBDA),
        "cls_a_lambda": (0.353586961732085, LAMBDA),
        "cls_v_lambda": (0.7752948515843562, LAMBDA),
        "cls_all_cls_kl_lambda": (0.34682017654570013, LAMBDA),
        "t_cls_all_cls_kl_lambda": (0.3890408530969896, LAMBDA),
        "a_cls_all_cls_kl_lambda": (0.6867174752097939, LAMBDA),
        "v_cls_all_cls_kl_lambda": (0.7814637321138567, LAMBDA),
        "clip_lambda": (0.46216, LAMBDA),
        "all_clip_lambda": (0.5279318174861871, LAMBDA),
        "t_clip_lambda": (0.16915412370438695, LAMBDA),
        "a_clip_lambda": (0.30204579599936027, LAMBDA),
        "v_clip_lambda": (0.22488632753078353, LAMBDA),
        "clip_all_clip_kl_lambda": (0.4868, LAMBDA),
        "t_clip_all_clip_kl_lambda": (0.9357852654818557, LAMBDA),
        "a_clip_all_clip_kl_lambda": (0.27293, LAMBDA),
        "v_clip_all_clip_kl_lambda": (0.71586, LAMBDA),
        "class_weights": ("auto", class_weights),
        "kl_temperature": ("learnable", temperature),
        "kl_t2": (True, boolean),
        "kl_class_mean": (True, boolean),
        "detach_teacher": (False, boolean),
        "cls_kl_teacher": ("classification", choice("classification", "anchor")),
        "anchor_kl_teacher": ("anchor", choice("anchor", "classification")),
    },
    "train": {
        "optimizer": ("adamw", choice("adamw", "adam", "sgd")),
        "lr": (9.839349318565084e-05, number(0.0, lo_open=True)),
        "weight_decay": (0.009970935438927318, number(0.0)),
        "betas": ([0.9, 0.999], betas),
        "eps": (1e-8, number(0.0, lo_open=True)),
        "momentum": (0.0, number(0.0, 1.0, hi_open=True)),
        "batch_size": (9, integer(1)),
        "eval_batch_size": (32, integer(1)),
        "epochs": (400, integer(1)),
        "patience": (31, integer(1, allow_none=True)),
        "scheduler": ("none", choice("none", "cosine")),
        "warmup_fraction": (0.01, number(0.0, 1.0)),
        "amp": ("fp16", choice("fp16", "bf16", "off")),
        "grad_clip": (None, number(0.0, lo_open=True, allow_none=True)),
        "feature_mask_ratio": (0.1, number(0.0, 1.0, hi_open=True)),
        "feature_norm": ("standardize", choice("standardize", "none")),
        "selection_metric": ("weighted_f1", choice("weighted_f1", "accuracy", "macro_f1", "weighted_precision")),
        "paper_compat": (False, boolean),
        "checkpoint_every": (5, integer(1)),
    },
}

DEFAULTS: dict[str, dict[str, Any]] = {s: {k: v[0] for k, v in keys.items()} for s, keys in SCHEMA.items()}

_ALL_ONE = {k: 1.0 for k in SCHEMA["loss"] if k.endswith("_lambda")}

# Overrides on top of DEFAULTS (= the official VEGA code's IEMOCAP configuration).
PRESET_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "official": {},
    "sdt-vega": {},  # alias: the faithful SDT-VEGA configuration
    "sdt-vega-backbone": {  # the VEGA code with the VEGA branch off (paper: "classification + self-distillation")
        "loss": {"clip_loss": False, "clip_all_clip_kl_loss": False},
    },
    "paper": {  # values the paper states where they differ from the released code (spec 6, O22)
        "model": {"hidden_dim": 1280, "n_heads": 8, "dropout": 0.5, "head_dropout": 0.5,
                  "clip_proj_activation": "silu", "clip_proj_dropout": 0.4},
        "train": {"batch_size": 15},
    },
    "sdt": {  # the original SDT repository, IEMOCAP launcher (spec 9)
        "model": {"hidden_dim": 1024, "n_heads": 8, "dropout": 0.5, "attention_mask_fill": -1e10, "head_type": "sdt"},
        "loss": {"clip_loss": False, "clip_all_clip_kl_loss": False, **_ALL_ONE, "kl_temperature": 1.0,
                 "kl_t2": False, "kl_class_mean": False},
        "train": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "batch_size": 16, "epochs": 150,
                  "patience": None, "amp": "off", "feature_mask_ratio": 0.0},
    },
    "sdt-meld": {  # the original SDT repository, MELD launcher: frozen identity gates, no class weights, T = 8
        "model": {"hidden_dim": 1024, "n_heads": 8, "dropout": 0.5, "attention_mask_fill": -1e10, "head_type": "sdt",
                  "gates": "identity_frozen"},
        "loss": {"clip_loss": False, "clip_all_clip_kl_loss": False, **_ALL_ONE, "kl_temperature": 8.0,
                 "kl_t2": False, "kl_class_mean": False, "class_weights": "none"},
        "train": {"optimizer": "adam", "lr": 5e-6, "weight_decay": 1e-5, "batch_size": 8, "epochs": 50,
                  "patience": None, "amp": "off", "feature_mask_ratio": 0.0},
    },
    "demo": {  # small and fast: the 2-core demo on the synthetic corpus
        "model": {"hidden_dim": 128, "n_heads": 2, "dropout": 0.2, "head_dropout": 0.2, "clip_proj_dropout": 0.2},
        "train": {"lr": 1e-3, "batch_size": 2, "epochs": 20, "patience": 8, "amp": "off"},
    },
}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {}


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for section, values in overrides.items():
        out[section].update(copy.deepcopy(values))
    return out


for _name, _over in PRESET_OVERRIDES.items():
    PRESETS[_name] = _merge(DEFAULTS, _over)


def preset(name: str) -> dict[str, dict[str, Any]]:
    """A deep copy of a preset's full configuration."""
    if name not in PRESETS:
        raise ValueError(f"experiment key preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def _unknown(path: str, key: str, known) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"experiment key {path}: unknown key{hint}; known keys: {sorted(known)}")


def resolve_experiment(experiment_cfg: dict) -> dict:
    """Preset + overrides, validated. Returns {preset, model, loss, train, <pass-through keys>}.

    Raises ValueError naming the dotted key path of the first problem (unknown key, wrong type or value,
    or an inconsistent combination). Idempotent: resolving a resolved experiment returns it unchanged.
    """
    if not isinstance(experiment_cfg, dict):
        raise ValueError(f"an experiment must be a mapping, got {type(experiment_cfg).__name__}")
    name = experiment_cfg.get("preset", "official")
    if not isinstance(name, str):
        raise ValueError("experiment key preset: must be a preset name string")
    resolved = preset(name)
    for section in SECTIONS:
        overrides = experiment_cfg.get(section)
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, dict):
            raise ValueError(f"experiment key {section}: must be a mapping of keys to values")
        for key, value in overrides.items():
            if key not in SCHEMA[section]:
                raise _unknown(f"{section}.{key}", key, SCHEMA[section])
            check = SCHEMA[section][key][1]
            problem = check(value)
            if problem and isinstance(yaml_number(value), float) and not check(yaml_number(value)):
                # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it spells.
                value, problem = yaml_number(value), None
            if problem:
                raise ValueError(f"experiment key {section}.{key}: {problem} (got {value!r})")
            if isinstance(resolved[section][key], float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # kl_temperature: 1 is the preset's 1.0 (the params compare reprs)
            resolved[section][key] = copy.deepcopy(value)
    features = experiment_cfg.get("features")
    if isinstance(features, dict) and features:
        # The pipeline's `features:` names the modalities; model.modalities may narrow them, not widen.
        chosen = (experiment_cfg.get("model") or {}).get("modalities")
        if chosen is None:
            resolved["model"]["modalities"] = [m for m in MODALITIES if m in features]
        elif not set(chosen) <= set(features):
            raise ValueError(f"experiment key model.modalities: {sorted(set(chosen) - set(features))} have no "
                             f"feature setting under features: (it has {sorted(features)})")
    chosen = resolved["model"].get("modalities")
    if isinstance(chosen, list) and set(chosen) <= set(MODALITIES):
        # One order, MODALITIES': the model builds its layers in this order, so [visual, text] written for
        # [text, visual] drew other initial weights and re-trained (dataset modalities are ordered the same way).
        resolved["model"]["modalities"] = [m for m in MODALITIES if m in chosen]
    if (resolved["loss"]["class_weights"] == "auto" and resolved["train"]["paper_compat"]
            and resolved["model"]["head_type"] == "sdt"):
        # The hard-coded vectors are the VEGA code's; the SDT code weighs by its own training split (spec 4.2),
        # which is train+valid under paper_compat.
        resolved["loss"]["class_weights"] = "train"
    _check_combinations(resolved)
    out = {k: copy.deepcopy(v) for k, v in experiment_cfg.items() if k not in SECTIONS}
    out["preset"] = name
    out.update(resolved)
    return out


def _check_combinations(cfg: dict) -> None:
    loss = cfg["loss"]
    problem = combination_problem(spec_values(cfg))  # the module's own (ModelSpec checks the same)
    if problem:
        raise ValueError(f"experiment key {problem[0]}: {problem[1]}")
    if loss["cls_kl_teacher"] == "anchor" and not loss["clip_loss"]:
        raise ValueError("experiment key loss.cls_kl_teacher: the anchor teacher needs loss.clip_loss on")
    if not loss["cls_loss"] and not loss["clip_loss"]:
        raise ValueError("experiment key loss.cls_loss: with cls_loss and clip_loss off no loss term supervises "
                         "the labels")


# Keys that only matter under some settings (the condition says when they do not): such a key is still
# validated, but it is left out of the experiment's Snakemake params and of the settings a resume state and
# the seed aggregation compare, so changing it re-trains nothing. Each rule follows the code that reads the
# key: ercpipe.train.trainer (optimizer, scheduler, anchors), ercpipe.model.losses (loss terms) and
# ercpipe.model.sdt (modules built); tests/test_train.py checks that such a change leaves the weights equal.
_OPTIMIZER_ONLY = {"train.momentum": ("sgd",), "train.betas": ("adam", "adamw"), "train.eps": ("adam", "adamw")}
_VEGA_ONLY = ("model.clip_proj_layers", "model.clip_proj_activation", "model.clip_proj_dropout",
              "model.p_random_anchor", "model.anchor_logit_scale", "model.anchor_sampling_at_eval",
              "model.anchors_per_class", "model.anchor_subsample_seed", "model.clip_model",
              "loss.clip_all_clip_kl_loss")  # (the VEGA loss terms' keys: _TERM_KEYS)
_TERM_KEYS = {  # a loss term's switch -> the keys only that term reads (per-modality keys: {m} = t, a, v)
    "cls_loss": ("cls_lambda", "cls_all_lambda", "cls_{m}_lambda"),
    "cls_all_cls_kl_loss": ("cls_all_cls_kl_lambda", "{m}_cls_all_cls_kl_lambda", "cls_kl_teacher"),
    "clip_loss": ("clip_lambda", "all_clip_lambda", "{m}_clip_lambda"),
    "clip_all_clip_kl_loss": ("clip_all_clip_kl_lambda", "{m}_clip_all_clip_kl_lambda", "anchor_kl_teacher"),
}
# Keys that never shape a training: train.checkpoint_every says when the resume state is written, model.clip_model
# which CLIP the anchor file must come from (a check). They are left out of the job's Snakemake params (writing
# one out, or changing it, re-trains nothing); the job reads them from the config (scripts/train_model.py).
NON_TRAINING_KEYS = ("train.checkpoint_every", "model.clip_model")


def with_non_training_keys(experiment: dict, configured: dict) -> dict:
    """`experiment` (a job's params) with the NON_TRAINING_KEYS the `configured` experiment (its config entry)
    sets."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in experiment.items()}
    for key in NON_TRAINING_KEYS:
        section, name = key.split(".", 1)
        value = (configured.get(section) or {}).get(name)
        if value is not None:
            out[section] = {**(out.get(section) or {}), name: value}
    return out


def inactive_keys(cfg: dict) -> list[str]:
    """Dotted keys of a resolved experiment whose value cannot change its training under its other settings
    (e.g. train.momentum with AdamW, the VEGA keys with loss.clip_loss off). Works on a config that already
    lacks them (the switches it reads are never inactive themselves, except where their own switch is off)."""
    model, loss, train = (cfg.get(s) or {} for s in SECTIONS)
    out: set[str] = set()
    for key, optimizers in _OPTIMIZER_ONLY.items():
        if train.get("optimizer", "adamw") not in optimizers:
            out.add(key)
    if train.get("scheduler", "none") == "none":
        out.add("train.warmup_fraction")
    vega = loss.get("clip_loss", True)
    if not vega:
        out.update(_VEGA_ONLY)
    elif model.get("anchors_per_class") is None:
        out.add("model.anchor_subsample_seed")
    if model.get("head_type", "mlp") != "mlp":
        out.update({"model.head_layers", "model.head_activation", "model.head_dropout"})
    modalities = model.get("modalities") or list(MODALITY_SHORT)
    # Unimodal heads (and so their loss terms, KL distillation and temperatures) exist only when there is
    # something to fuse (ercpipe.model.sdt).
    unimodal = [MODALITY_SHORT[m] for m in modalities if m in MODALITY_SHORT] if len(modalities) > 1 else []
    terms_on = {"cls_loss": loss.get("cls_loss", True),
                "cls_all_cls_kl_loss": loss.get("cls_all_cls_kl_loss", True) and bool(unimodal),
                "clip_loss": vega,
                "clip_all_clip_kl_loss": vega and loss.get("clip_all_clip_kl_loss", True) and bool(unimodal)}
    for switch, keys in _TERM_KEYS.items():
        for key in keys:
            if "{m}" not in key:
                if not terms_on[switch]:
                    out.add(f"loss.{key}")
                continue
            for m in "tav":
                if not terms_on[switch] or m not in unimodal:
                    out.add(f"loss.{key.format(m=m)}")
    if not (terms_on["cls_all_cls_kl_loss"] or terms_on["clip_all_clip_kl_loss"]):
        out.update({"loss.kl_t2", "loss.kl_class_mean", "loss.detach_teacher"})
    if not unimodal:  # no temperature exists
        out.update({"loss.kl_temperature", "loss.kl_temperature_init"})
    elif loss.get("kl_temperature", "learnable") != "learnable":  # a fixed temperature has no initial value
        out.add("loss.kl_temperature_init")
    return sorted(out)


def _without(cfg: dict, keys) -> dict:
    """A copy of the experiment without the dotted `keys` (section.name)."""
    out = copy.deepcopy(cfg)
    for key in keys:
        section, name = key.split(".", 1)
        if isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out


def active_settings(cfg: dict) -> dict:
    """The experiment without its inactive keys (inactive_keys); other keys untouched. Idempotent."""
    return _without(cfg, inactive_keys(cfg))


def without_non_training_keys(cfg: dict) -> dict:
    """The experiment without NON_TRAINING_KEYS (what its Snakemake params leave out)."""
    return _without(cfg, NON_TRAINING_KEYS)


def known_keys() -> dict[str, list[str]]:
    """Section -> key names (for the pipeline's JSON schema)."""
    return {s: list(keys) for s, keys in SCHEMA.items()}
