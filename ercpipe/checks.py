"""Value checks shared by every settings block (extractors, anchors, mining, model and training keys):
defaults with unknown keys refused, integer and number ranges, choices. Imports nothing, so the lowest
modules (ercpipe.features.settings, which ercpipe.io.features reads; ercpipe.model.spec) and the
parse-time config checks can all use it."""
from __future__ import annotations

import math


def with_defaults(settings: dict | None, defaults: dict, what: str) -> dict:
    """`settings` with `defaults` filled in; a key not in `defaults` is a ValueError naming it and `what`."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **settings}


def yaml_number(value):
    """`value`, or the number a string spells: a YAML 1.1 loader (PyYAML, Snakemake's) reads 1e-4 (no dot) as the
    string "1e-4", which a user means as a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def require_int(value, minimum: int, what: str) -> int:
    """`value` if it is an integer >= minimum (not a bool), else a ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


# Value checks of the model and training keys (ercpipe.model.spec, ercpipe.train.presets): each returns an error
# text or None.
def is_number(v) -> bool:
    """An int or a finite float (not a bool): an infinite learning rate or margin trains NaNs."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float (400 digits)
        return False


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def integer(lo: int | None = None, allow_none: bool = False):
    def check(v) -> str | None:
        if v is None and allow_none:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or (lo is not None and v < lo):
            return f"must be an integer >= {lo}" + (" or null" if allow_none else "")
        return None
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
           allow_none: bool = False):
    def check(v) -> str | None:
        if v is None and allow_none:
            return None
        ok = is_number(v) and (lo is None or (v > lo if lo_open else v >= lo)) and \
            (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            return f"must be a number {' and '.join(s for s in (lo_s, hi_s) if s)}".rstrip() + \
                (" or null" if allow_none else "")
        return None
    return check


def choice(*options: str):
    def check(v) -> str | None:
        return None if v in options else f"must be one of {list(options)}"
    return check
