"""A CLIP setting {model, pretrained, quick_gelu}: defaults, validation and its one name.

Light (ercpipe.checks only): the Snakefile names anchor files with `clip_name` at parse time
(ercpipe.config), and ercpipe.anchors records the same name in the files it writes and loads the weights
the setting says (ercpipe.anchors.clip). Keys:
    model       open_clip architecture name: "ViT-B-32" (official config) or "ViT-L-14-336" (paper best) ...
    pretrained  an open_clip tag ("openai", "laion2b_s34b_b79k", ...; downloads, so not offline), a local
                checkpoint file (.pt/.pth/.bin/.safetensors/.npz), or None = random init (tests, offline
                demos); left out = "openai"
    quick_gelu  None = automatic (from the tag; OpenAI weights need QuickGELU), or True/False to force it
"""
from __future__ import annotations

import re
from pathlib import Path

from ercpipe.checks import with_defaults

DEFAULT_CLIP: dict = {"model": "ViT-B-32", "pretrained": "openai", "quick_gelu": None}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
# Keys of a config's clip: block that say how anchors are encoded, not which CLIP: not part of the name.
ENCODING_KEYS = ("batch_size",)


def clip_settings(clip: dict | None) -> dict:
    """Validated CLIP setting with defaults filled in."""
    out = with_defaults(clip, DEFAULT_CLIP, "clip")
    if not isinstance(out["model"], str) or not out["model"].strip():
        raise ValueError(f"clip model must be an open_clip model name such as 'ViT-B-32', got {out['model']!r}")
    out["model"] = out["model"].strip().replace("/", "-")  # "ViT-B/32" (OpenAI spelling) -> "ViT-B-32"
    if out["pretrained"] is not None and (not isinstance(out["pretrained"], str) or not out["pretrained"].strip()):
        raise ValueError("clip pretrained must be an open_clip tag, a checkpoint file path, or null (random "
                         f"init), got {out['pretrained']!r}")
    if isinstance(out["pretrained"], str) and out["pretrained"].strip().lower() in ("null", "none", "~"):
        raise ValueError(f"clip pretrained {out['pretrained']!r} is text, not null: write null without quotes for "
                         "random init (no open_clip tag is called so)")
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
    """Filesystem-safe name of the CLIP a setting loads: the anchor file's name (anchors/{set}/{name}.h5) and
    its `clip_name` attribute.

    "ViT-B-32" (pretrained: null, random init), "ViT-B-32_openai" (tag; also pretrained left out, which
    loads openai), "ViT-L-14-336_<file stem>" (checkpoint file), plus "_quickgelu" / "_gelu" when
    quick_gelu is set explicitly. "_" separates the parts, so inside a part it becomes "-"
    ("laion2b_s34b_b79k" -> "ViT-B-32_laion2b-s34b-b79k").
    """
    settings = clip_settings({k: v for k, v in (clip or {}).items() if k not in ENCODING_KEYS})
    parts = [settings["model"]]
    pretrained = settings["pretrained"]
    if pretrained:
        parts.append(Path(pretrained).stem if is_checkpoint_path(pretrained) else pretrained)
    if settings["quick_gelu"] is not None:
        parts.append("quickgelu" if settings["quick_gelu"] else "gelu")
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", part).strip("-") for part in parts)
