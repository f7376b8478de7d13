"""DenseFace: the DenseNet-BC (depth 100, growth rate 12) face-expression network behind the 342-d
visual features used by MMGCN-era ERC work (IEMOCAP / MELD "denseface" features).

Architecture (Huang et al., DenseNet-BC, CIFAR layout) on 64x64 grayscale face crops:

    conv 3x3, 2k = 24 channels (stride 1, 64x64)
    dense block 1: n = (100 - 4) / 6 = 16 bottleneck layers (BN-ReLU-conv1x1 4k, BN-ReLU-conv3x3 k)
                   24 + 16 * 12 = 216 channels
    transition 1:  BN-ReLU-conv1x1 with compression 0.5 -> 108 channels, avg-pool 2 -> 32x32
    dense block 2: 108 + 192 = 300 channels; transition 2 -> 150 channels, 16x16
    dense block 3: 150 + 192 = 342 channels
    BN-ReLU, global average pool -> the 342-d feature vector

An optional linear classifier (e.g. 8 FER+ classes) follows; it is not used for features but is
kept so a trained checkpoint loads with strict key checking. No trained weights ship with this
package: pass a checkpoint you trained or converted (state dict saved with torch.save).
Input normalization follows the FER+ model: gray levels 0-255, (x - 131.0754) / 47.858177.
"""
from __future__ import annotations

import logging
import pickle
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

INPUT_SIZE = 64
GRAY_MEAN = 131.0754  # FER+ training-set statistics on the 0-255 gray scale
GRAY_STD = 47.858177
FEATURE_DIM = 342


class BottleneckLayer(nn.Module):
    """BN-ReLU-conv1x1 (4k) then BN-ReLU-conv3x3 (k); output concatenated to the input."""

    def __init__(self, in_channels: int, growth_rate: int):
        super().__init__()
        inner = 4 * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.norm1(x)))
        out = self.conv2(torch.relu(self.norm2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (compressing channels) then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(torch.relu(self.norm(x))))


class DenseFace(nn.Module):
    """DenseNet-BC for 64x64 grayscale faces; `forward` returns [B, 342] pooled features."""

    def __init__(self, depth: int = 100, growth_rate: int = 12, compression: float = 0.5, num_blocks: int = 3,
                 num_classes: int = 0):
        super().__init__()
        if (depth - 4) % (2 * num_blocks):
            raise ValueError(f"DenseNet-BC depth {depth} must be {2 * num_blocks}n + 4")
        layers_per_block = (depth - 4) // (2 * num_blocks)  # two convs per bottleneck layer
        channels = 2 * growth_rate
        self.conv0 = nn.Conv2d(1, channels, kernel_size=3, padding=1, bias=False)
        blocks: list[tuple[str, nn.Module]] = []
        for b in range(num_blocks):
            layers = []
            for _ in range(layers_per_block):
                layers.append(BottleneckLayer(channels, growth_rate))
                channels += growth_rate
            blocks.append((f"block{b + 1}", nn.Sequential(*layers)))
            if b < num_blocks - 1:
                reduced = int(channels * compression)
                blocks.append((f"transition{b + 1}", Transition(channels, reduced)))
                channels = reduced
        self.blocks = nn.Sequential(OrderedDict(blocks))
        self.norm_final = nn.BatchNorm2d(channels)
        self.feature_dim = channels
        self.classifier = nn.Linear(channels, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm_final(self.blocks(self.conv0(x))))
        return out.mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise RuntimeError("this DenseFace has no classifier (num_classes=0)")
        return self.classifier(self.forward(x))


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # Accept a bare state dict or the usual training-checkpoint wrappers, and DataParallel prefixes.
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a DenseFace state dict (tensor values keyed by parameter "
                         "name); save one with torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_denseface(path: str | Path, map_location: str | torch.device = "cpu") -> DenseFace:
    """Build DenseFace and load a checkpoint with strict key and shape checks.

    The file is read with torch.load(weights_only=True), so it cannot run code. A classifier in the
    checkpoint is kept (its size is read from the weights).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DenseFace checkpoint {path} does not exist; set visual weights to a trained "
                                "DenseFace state dict, or to 'random' for an untrained network")
    try:
        state = _unwrap_state_dict(torch.load(path, map_location=map_location, weights_only=True), path)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path} cannot be read as a torch checkpoint ({err})") from err
    num_classes = int(state["classifier.weight"].shape[0]) if "classifier.weight" in state else 0
    model = DenseFace(num_classes=num_classes)
    expected = model.state_dict()
    # BatchNorm step counters may be absent (e.g. converted checkpoints); load_state_dict fills them.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{path} does not match DenseFace (DenseNet-BC depth 100, growth 12, 342-d): "
            f"{len(missing)} missing key(s) {missing[:4]}, {len(unexpected)} unexpected key(s) {unexpected[:4]}, "
            f"{len(wrong_shape)} shape mismatch(es) {wrong_shape[:3]}. Convert the checkpoint to this "
            "module's parameter names (ercpipe.features.denseface.DenseFace().state_dict().keys()).")
    model.load_state_dict(state, strict=True)
    logger.info("loaded DenseFace weights from %s (%d classifier classes)", path, num_classes)
    return model
