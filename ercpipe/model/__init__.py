"""SDT / SDT-VEGA modules, losses and the official-checkpoint converter (docs/model.md).

Names load on first use, so `ercpipe.model.spec` (ModelSpec, its defaults and checks; no torch) can be read
by the parse-time experiment checks (ercpipe.train.presets) without importing torch.
Submodules imported on their own: `batch` (Dialogue, Batch, padding), `checkpoint` (model.pt: format, save,
`load_model`, `CheckpointError`; needs h5py through ercpipe.io.features), `inference` (evaluation passes, `predict`).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "AnchorBank": "ercpipe.model.anchors",
    "subsample_anchor_images": "ercpipe.model.anchors",
    "OfficialCheckpointError": "ercpipe.model.convert",
    "convert_official_state_dict": "ercpipe.model.convert",
    "load_official_backbone": "ercpipe.model.convert",
    "to_official_state_dict": "ercpipe.model.convert",
    "LOSS_WEIGHT_KEYS": "ercpipe.model.losses",
    "PAPER_CLASS_WEIGHTS": "ercpipe.model.losses",
    "SWITCH_KEYS": "ercpipe.model.losses",
    "SDTVegaLoss": "ercpipe.model.losses",
    "distillation_kl": "ercpipe.model.losses",
    "inverse_frequency_weights": "ercpipe.model.losses",
    "masked_ce": "ercpipe.model.losses",
    "paper_class_weights": "ercpipe.model.losses",
    "MODALITY_SHORT": "ercpipe.model.spec",
    "ModelSpec": "ercpipe.model.spec",
    "spec_from_experiment": "ercpipe.model.spec",
    "SDTVega": "ercpipe.model.sdt",
    "build_model": "ercpipe.model.sdt",
    "count_parameters": "ercpipe.model.sdt",
    "is_vega_key": "ercpipe.model.sdt",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ercpipe.model' has no attribute {name!r}")
