"""The torch device a step runs on, from a setting: "auto" (CUDA when there is one), "cpu", "cuda", "cuda:1"."""
from __future__ import annotations

import torch

from ercpipe.errors import ErcpipeError


class DeviceError(ErcpipeError, RuntimeError):
    """The requested device does not exist here; the message says which to use."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device} was requested but CUDA is not available; use device='cpu' or 'auto'")
    return device
