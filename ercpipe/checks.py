"""Value checks shared by every settings block (extractors, anchors, mining): defaults with unknown keys
refused, integer ranges. Imports nothing, so the lowest modules (ercpipe.features.settings, which
ercpipe.io.features reads) and the parse-time config checks can all use it."""
from __future__ import annotations


def with_defaults(settings: dict | None, defaults: dict, what: str) -> dict:
    """`settings` with `defaults` filled in; a key not in `defaults` is a ValueError naming it and `what`."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **settings}


def require_int(value, minimum: int, what: str) -> int:
    """`value` if it is an integer >= minimum (not a bool), else a ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value
