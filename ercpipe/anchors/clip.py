"""CLIP model loading (open_clip) for anchor encoding. The setting itself {model, pretrained, quick_gelu}
(defaults, validation, its name) is ercpipe.clip_setting's, which the parse-time config checks share.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ercpipe.clip_setting import CHECKPOINT_SUFFIXES, DEFAULT_CLIP, clip_name, clip_settings, is_checkpoint_path
from ercpipe.io.digest import file_digest

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_SUFFIXES", "DEFAULT_CLIP", "RANDOM_SEED", "clip_name", "clip_settings", "is_checkpoint_path",
           "load_clip", "resolve_quick_gelu"]

RANDOM_SEED = 0  # random-init CLIPs are seeded so every run (and shard) computes the same function


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
    except Exception as err:  # noqa: BLE001 - open_clip and torch raise AssertionError, KeyError, UnpicklingError ...
        if pretrained and not is_checkpoint_path(pretrained):
            raise RuntimeError(
                f"could not load CLIP {model_name} weights {pretrained!r} ({err}). Offline, download the weights "
                "on another machine and set clip pretrained to the local file (e.g. open_clip_pytorch_model.bin "
                "of the Hugging Face repo timm/vit_base_patch32_clip_224.openai), with quick_gelu: true for OpenAI "
                "weights") from err
        if pretrained:
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]  # torch's message spans lines
            raise RuntimeError(
                f"could not load CLIP checkpoint {pretrained} into {model_name} ({reason}). Give an open_clip state "
                "dict of this architecture (open_clip_model.safetensors or open_clip_pytorch_model.bin); "
                "TorchScript archives such as OpenAI's original ViT-B-32.pt are refused because they cannot be "
                "read with weights_only=True") from err
        raise RuntimeError(f"could not build CLIP {model_name}: {err}") from err
    model.eval()
    logger.info("CLIP %s, weights %s, quick_gelu %s, device %s", model_name, weights, quick_gelu, device)
    return model, preprocess, f"{weights}, quick_gelu {quick_gelu}"
