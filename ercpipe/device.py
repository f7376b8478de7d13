"""The torch device a step runs on, from a setting: "auto" (CUDA when there is one), "cpu", "cuda", "cuda:1"."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was requested but CUDA is not available; use device='cpu' or 'auto'")
    return device
