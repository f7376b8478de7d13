"""The torch device a step runs on, from a setting: "auto" (CUDA when there is one), "cpu", "cuda", "cuda:1"."""
from __future__ import annotations

import os

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
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta ...: torch accepts the name, the pipeline runs neither
        raise DeviceError(f"device {str(device)!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device} was requested but CUDA is not available here; use cpu or auto "
                          "(--device on the command line, device= in Python)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device} was requested but this process sees {torch.cuda.device_count()} GPU(s) "
                          f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}; CUDA_VISIBLE_DEVICES renumbers them)")
    return device


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether this GPU computes bf16 natively (compute capability 8.0 and later: A100, H100, RTX 30xx ...; ROCm
    builds: yes). Older ones (V100, T4) emulate it, and torch's autocast accepts that without a word, slower than
    fp32; bf16 settings run in fp32 there instead (ercpipe.model.inference.effective_amp, the text `dtype`)."""
    if torch.version.hip:
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] >= 8


def device_description(device: torch.device, precision: str) -> str:
    """Where and in what precision something was computed, as outputs record it: a GPU with its index and name
    (a cluster has several kinds), e.g. 'cuda:0 (NVIDIA H100 80GB HBM3), fp16 autocast' or 'cpu, fp32'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}), {precision}"
    return f"{device}, {precision}"


def job_device(config: dict) -> str:
    """The device of a pipeline job, from the workflow's config: with use_gpu the job asked the scheduler for a GPU,
    so a job that sees none stops (a CUDA build that does not match the driver would otherwise train for days on
    the CPU); without it, a GPU the job finds is used ("auto"). Read from the config, not a rule's params: it
    changes no result, so it re-runs nothing."""
    if not config.get("use_gpu"):
        return "auto"
    if not torch.cuda.is_available():
        raise DeviceError(f"use_gpu is true but this job sees no usable GPU (torch {torch.__version__}, built for "
                          f"CUDA {torch.version.cuda or 'none: a CPU-only build'}; CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): check that the job got a GPU (the "
                          "scheduler's gpu resource) and that torch's CUDA build suits the driver (nvidia-smi), or "
                          "set use_gpu: false to run on the CPU")
    return "cuda"


def rng_state(device: torch.device) -> dict:
    """The random generators' states a resumed run restores (dropout draws): the CPU's, and on CUDA the one of the
    GPU it trains on (not every visible GPU's: a run resumed where fewer are visible could not restore those)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type != "cuda" or "cuda" not in state:
        return
    saved = state["cuda"]
    if isinstance(saved, (list, tuple)):  # written by earlier versions: one state per GPU visible then
        index = device.index if device.index is not None else torch.cuda.current_device()
        saved = saved[index] if index < len(saved) else None
    if saved is not None:
        torch.cuda.set_rng_state(saved, device)
