"""Training of SDT / SDT-VEGA: data, presets, the training loop, aggregation and selection on dev
(docs/training.md).

Only `presets` is imported eagerly (the Snakefile validates experiments at parse time, without torch);
everything else loads on first use.
"""
from __future__ import annotations

import importlib

from ercpipe.train.presets import DEFAULTS, PRESETS, SCHEMA, known_keys, preset, resolve_experiment

_LAZY = {
    "run_training": "ercpipe.train.trainer",
    "TrainingError": "ercpipe.train.trainer",
    "load_dialogues": "ercpipe.train.data",
    "Dialogue": "ercpipe.model.batch",
    "DialogueData": "ercpipe.train.data",
    "DataError": "ercpipe.train.data",
    "collate": "ercpipe.model.batch",
    # checkpoints live in the model package (inference reads them without importing training)
    "load_model": "ercpipe.model.checkpoint",
    "predict": "ercpipe.model.inference",
    "CheckpointError": "ercpipe.model.checkpoint",
    "aggregate": "ercpipe.train.aggregation",
    "AggregateError": "ercpipe.train.aggregation",
    "classification_metrics": "ercpipe.train.metrics",
    "select_experiment": "ercpipe.train.selection",
    "SelectionError": "ercpipe.train.selection",
}

__all__ = ["DEFAULTS", "PRESETS", "SCHEMA", "known_keys", "preset", "resolve_experiment", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ercpipe.train' has no attribute {name!r}")
