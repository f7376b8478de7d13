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


def rng_state(device: torch.device) -> dict:
    """The random generators' states a resumed run restores (dropout draws): the CPU's, and the GPUs' on CUDA."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
