"""CLIP settings and model loading (open_clip) for anchor encoding.

A CLIP setting is a dict {model, pretrained, quick_gelu}:
    model       open_clip architecture name: "ViT-B-32" (official config) or "ViT-L-14-336" (paper best) ...
    pretrained  an open_clip tag ("openai", "laion2b_s34b_b79k", ...; downloads, so not offline), a local
                checkpoint file (.pt/.pth/.bin/.safetensors), or None = random init (tests, offline demos)
    quick_gelu  None = automatic (from the tag; OpenAI weights need QuickGELU), or True/False to force it
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from ercpipe.checks import with_defaults
from ercpipe.io.digest import file_digest

logger = logging.getLogger(__name__)

DEFAULT_CLIP: dict = {"model": "ViT-B-32", "pretrained": "openai", "quick_gelu": None}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
RANDOM_SEED = 0  # random-init CLIPs are seeded so every run (and shard) computes the same function


def clip_settings(clip: dict | None) -> dict:
    """Validated CLIP setting with defaults filled in."""
    out = with_defaults(clip, DEFAULT_CLIP, "clip")
    if not isinstance(out["model"], str) or not out["model"].strip():
        raise ValueError(f"clip model must be an open_clip model name such as 'ViT-B-32', got {out['model']!r}")
    out["model"] = out["model"].strip().replace("/", "-")  # "ViT-B/32" (OpenAI spelling) -> "ViT-B-32"
    if out["pretrained"] is not None and (not isinstance(out["pretrained"], str) or not out["pretrained"].strip()):
        raise ValueError("clip pretrained must be an open_clip tag, a checkpoint file path, or null (random "
                         f"init), got {out['pretrained']!r}")
    if out["quick_gelu"] is not None and not isinstance(out["quick_gelu"], bool):
        raise ValueError(f"clip quick_gelu must be true, false or null (automatic), got {out['quick_gelu']!r}")
    return out


def is_checkpoint_path(pretrained: str | None) -> bool:
    """True when `pretrained` names a file rather than an open_clip tag (tags have no '/' or file suffix)."""
    if not pretrained:
        return False
    return ("/" in pretrained or "\\" in pretrained or pretrained.lower().endswith(CHECKPOINT_SUFFIXES)
            or Path(pretrained).is_file())


def clip_name(clip: dict | None) -> str:
    """Filesystem-safe name of a CLIP setting.

    "ViT-B-32" (random init), "ViT-B-32_openai" (tag), "ViT-L-14-336_<file stem>" (checkpoint file),
    plus "_quickgelu" / "_gelu" when quick_gelu is set explicitly.
    """
    settings = clip_settings(clip)
    parts = [settings["model"]]
    pretrained = settings["pretrained"]
    if pretrained:
        parts.append(Path(pretrained).stem if is_checkpoint_path(pretrained) else pretrained)
    if settings["quick_gelu"] is not None:
        parts.append("quickgelu" if settings["quick_gelu"] else "gelu")
    # "_" separates the parts, so it is replaced inside them along with anything a file name should not hold.
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", part).strip("-") for part in parts)


def _model_config(model: str) -> dict:
    import open_clip

    config = open_clip.get_model_config(model)
    if config is None:
        raise ValueError(f"clip model {model!r} is not an open_clip architecture; see open_clip.list_models() "
                         "(e.g. ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336)")
    return config


def resolve_quick_gelu(clip: dict | None) -> bool:
    """Whether the model runs with QuickGELU: explicit setting, else the tag's, else the architecture's.

    open_clip 3.x only warns when a tag trained with QuickGELU (every "openai" tag) is loaded into a
    GELU architecture such as "ViT-B-32"; the embeddings would then be wrong, so the tag decides here.
    """
    import open_clip

    settings = clip_settings(clip)
    model_default = bool(_model_config(settings["model"]).get("quick_gelu", False))
    if settings["quick_gelu"] is not None:
        return settings["quick_gelu"]
    pretrained = settings["pretrained"]
    if pretrained and not is_checkpoint_path(pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(settings["model"], pretrained)
        if tag_cfg:
            return bool(tag_cfg.get("quick_gelu", False))
    return model_default



def load_clip(clip: dict | None, device):
    """(model in eval mode on `device`, its evaluation preprocessing transform, description of the weights)."""
    import open_clip
    import torch

    settings = clip_settings(clip)
    model_name, pretrained = settings["model"], settings["pretrained"]
    config = _model_config(model_name)
    quick_gelu = resolve_quick_gelu(settings)
    kwargs: dict = {}
    if quick_gelu:
        kwargs["force_quick_gelu"] = True
    elif config.get("quick_gelu", False):
        kwargs["quick_gelu"] = False  # open_clip applies extra keyword arguments to the model config last
    if pretrained is None:
        weights = f"random (seed {RANDOM_SEED})"
        logger.warning("CLIP %s has RANDOM (seeded) weights (clip pretrained is null): the anchors carry no "
                       "learned visual meaning. Set pretrained to a tag or a local checkpoint for real experiments.",
                       model_name)
    elif is_checkpoint_path(pretrained):
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP checkpoint {path} does not exist; fix clip pretrained in the config")
        weights = f"{path} (sha256 {file_digest(path)})"
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if settings["quick_gelu"] is None and "openai" in tags and not quick_gelu:
            logger.warning("CLIP %s is loaded from %s with plain GELU; if this file holds OpenAI weights set clip "
                           "quick_gelu: true (or model %s-quickgelu), or the embeddings will be wrong", model_name,
                           path, model_name)
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ValueError(f"clip pretrained {pretrained!r} is neither a file nor an open_clip tag of {model_name} "
                             f"(tags: {tags}); use null for random init")
        weights = f"open_clip tag {pretrained}"
    try:
        # Seeded so a random-init model is the same function in every run; loaded weights replace all of it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                         device=device, **kwargs)
    except RuntimeError as err:
        if pretrained and not is_checkpoint_path(pretrained):
            raise RuntimeError(
                f"could not load CLIP {model_name} weights {pretrained!r} ({err}). Offline, download the weights "
                "on another machine and set clip pretrained to the local file (e.g. open_clip_pytorch_model.bin "
                "of the Hugging Face repo timm/vit_base_patch32_clip_224.openai), with quick_gelu: true for OpenAI "
                "weights") from err
        if pretrained:
            raise RuntimeError(
                f"could not load CLIP checkpoint {pretrained} into {model_name} ({err}). Give an open_clip state "
                "dict of this architecture (open_clip_model.safetensors or open_clip_pytorch_model.bin); "
                "TorchScript archives such as OpenAI's original ViT-B-32.pt are refused because they cannot be "
                "read with weights_only=True") from err
        raise RuntimeError(f"could not build CLIP {model_name}: {err}") from err
    model.eval()
    logger.info("CLIP %s, weights %s, quick_gelu %s, device %s", model_name, weights, quick_gelu, device)
    return model, preprocess, f"{weights}, quick_gelu {quick_gelu}"
