"""The one device resolver: "auto", "cpu", "cuda", "cuda:N" -> torch.device, resolved where the job runs.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
"""
from __future__ import annotations

import os

import torch

DEVICE_NAMES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """A device that does not exist here; the message says what to use instead."""


def check_device_name(name: str) -> str:
    """Validate the spelling before any work (no GPU needed to check it)."""
    name = str(name)
    if name in DEVICE_NAMES or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise DeviceError(f"device {name!r}: give auto, cpu, cuda or cuda:N")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None) is the first GPU this process may use (an engine sets CUDA_VISIBLE_DEVICES to
    the GPUs it granted), else the CPU; "cuda" where there is none is an error naming the way out."""
    if isinstance(name, torch.device):
        return name
    name = check_device_name("auto" if name is None else name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device={name!r} but this process has no usable GPU "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                          "use device=auto or cpu, or ask the executor for GPUs")
    return torch.device(name)
