"""An anchor mining setting {per_class, min_per_class}: defaults and validation.

Light (ercpipe.checks only), as ercpipe.clip_setting: the config check validates it when the Snakefile is parsed,
and the jobs that import ercpipe.config run in environments without torch; the miner itself is
ercpipe.anchors.mining.
"""
from __future__ import annotations

from ercpipe.checks import with_defaults

DEFAULT_MINING: dict = {
    "per_class": 35,  # images per class (the paper's hand-picked sets have 35)
    "min_per_class": 5,  # fewer present training utterances (or usable faces) than this is an error
}


def mining_settings(settings: dict | None) -> dict:
    """Validated settings with defaults; min_per_class not given is at most per_class (per_class: 3 alone failed
    in the job with "min_per_class (5) exceeds per_class (3)", a default the user never wrote)."""
    out = with_defaults(settings, DEFAULT_MINING, "anchor mining")
    for key in ("per_class", "min_per_class"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise ValueError(f"anchor mining setting {key} must be a positive integer, got {out[key]!r}")
    if "min_per_class" not in (settings or {}):
        out["min_per_class"] = min(out["min_per_class"], out["per_class"])
    if out["min_per_class"] > out["per_class"]:
        raise ValueError(f"anchor mining setting min_per_class ({out['min_per_class']}) exceeds per_class "
                         f"({out['per_class']}); lower min_per_class or raise per_class")
    return out


def mining_params(entry: dict) -> dict:
    """A `mine:` entry less the settings written at their default value: the mining job's params, so that writing
    a default out re-mines nothing (and re-trains nothing), as leaving it out does. The miner fills them in again."""
    resolved = mining_settings({key: entry[key] for key in DEFAULT_MINING if key in entry})
    defaults = {"per_class": DEFAULT_MINING["per_class"],
                "min_per_class": min(DEFAULT_MINING["min_per_class"], resolved["per_class"])}
    return {key: value for key, value in entry.items() if not (key in defaults and resolved[key] == defaults[key])}
