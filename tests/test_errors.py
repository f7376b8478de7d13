"""One error base class for the library (ercpipe.errors.ErcpipeError) and its one-line form."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import ercpipe
from ercpipe.errors import ErcpipeError, one_line

# Every error class of the library, with the built-in class it has always been: callers that catch
# that one keep working.
KNOWN = [
    ("ercpipe.config", "ConfigError", ValueError),
    ("ercpipe.io.manifest", "ManifestError", ValueError),
    ("ercpipe.io.features", "FeatureFileError", ValueError),
    ("ercpipe.io.media", "MediaError", RuntimeError),
    ("ercpipe.features.pickles", "PickleNotAllowedError", PermissionError),
    ("ercpipe.features.pickles", "PickleFormatError", ValueError),
    ("ercpipe.anchors.store", "AnchorFileError", ValueError),
    ("ercpipe.anchors.images", "AnchorImageError", ValueError),
    ("ercpipe.anchors.mining", "AnchorMiningError", ValueError),
    ("ercpipe.model.convert", "OfficialCheckpointError", ValueError),
    ("ercpipe.train.selection", "SelectionError", ValueError),
    ("ercpipe.train.data", "DataError", ValueError),
    ("ercpipe.train.trainer", "TrainingError", ValueError),
    ("ercpipe.model.checkpoint", "CheckpointError", ValueError),
    ("ercpipe.train.aggregation", "AggregateError", ValueError),
    ("ercpipe.infer", "InferenceError", ValueError),
    ("ercpipe.io.atomic", "WriteFailedError", OSError),
]


@pytest.mark.parametrize("module, name, builtin", KNOWN, ids=[name for _, name, _ in KNOWN])
def test_library_errors_derive_from_the_base_class(module, name, builtin):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, ErcpipeError) and issubclass(cls, builtin)


def test_no_library_error_class_is_left_out():
    """Every exception class defined anywhere in ercpipe derives from ErcpipeError."""
    found = []
    for info in pkgutil.walk_packages(ercpipe.__path__, "ercpipe."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    outside = sorted(f"{c.__module__}.{c.__name__}" for c in found if not issubclass(c, ErcpipeError))
    assert outside == []
    assert {f"{m}.{n}" for m, n, _ in KNOWN} <= {f"{c.__module__}.{c.__name__}" for c in found}


def test_one_line():
    assert one_line(ErcpipeError("a: b")) == "a: b"
    assert one_line(ErcpipeError("config does not match x:\n  a.b: bad\n  c: worse")) == \
        "config does not match x: a.b: bad; c: worse"
    assert one_line(ErcpipeError("first problem\nsecond problem\n")) == "first problem; second problem"
    missing = FileNotFoundError(2, "No such file or directory", "data/x.csv")
    assert one_line(missing) == "data/x.csv: No such file or directory"
    assert one_line(FileNotFoundError("feature pickle x.pkl does not exist")) == "feature pickle x.pkl does not exist"
    assert one_line(KeyError("no such key")) == "no such key"
    assert one_line(ValueError()) == "ValueError"
