"""SDT / SDT-VEGA modules, losses and the official-checkpoint converter (docs/model.md).

Submodules imported on their own: `batch` (Dialogue, Batch, padding), `checkpoint` (model.pt: format, save,
`load_model`, `CheckpointError`; needs h5py through ercpipe.io.features), `inference` (evaluation passes, `predict`).
"""
from ercpipe.model.anchors import AnchorBank, subsample_anchor_images
from ercpipe.model.convert import (OfficialCheckpointError, convert_official_state_dict, load_official_backbone,
                                   to_official_state_dict)
from ercpipe.model.losses import (LOSS_WEIGHT_KEYS, PAPER_CLASS_WEIGHTS, SWITCH_KEYS, SDTVegaLoss, distillation_kl,
                                  inverse_frequency_weights, masked_ce, paper_class_weights)
from ercpipe.model.sdt import MODALITY_SHORT, ModelSpec, SDTVega, build_model, count_parameters, is_vega_key

__all__ = [
    "AnchorBank", "LOSS_WEIGHT_KEYS", "MODALITY_SHORT", "ModelSpec", "OfficialCheckpointError", "PAPER_CLASS_WEIGHTS",
    "SDTVega", "SDTVegaLoss", "SWITCH_KEYS", "build_model", "convert_official_state_dict", "count_parameters",
    "distillation_kl", "inverse_frequency_weights", "is_vega_key", "load_official_backbone", "masked_ce",
    "paper_class_weights", "subsample_anchor_images", "to_official_state_dict",
]
