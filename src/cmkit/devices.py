"""Parse and check a device name once, so every command and ``pipe.to(...)`` rejects a bad one the same way.

cmkit runs on ``cpu``, ``cuda`` (``cuda:N`` for GPU N) and ``mps``; ``auto`` picks the first CUDA GPU when one
is visible and the CPU otherwise. A device that does not exist on this machine (``cuda`` without a GPU or
without a CUDA build of PyTorch, ``cuda:3`` on a two-GPU machine) or a name that is no device at all is a
ValueError that names the devices there are.
"""

from __future__ import annotations

from typing import Union

import torch

#: the device kinds cmkit runs on.
DEVICE_TYPES = ("cpu", "cuda", "mps")
DEVICE_HELP = "cpu, cuda, cuda:N (GPU number N), mps or auto"


def _cuda_problem(index: int | None) -> str | None:
    if not torch.backends.cuda.is_built():
        return "this PyTorch build has no CUDA support; use cpu, or install a CUDA build of PyTorch"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible on this machine (check the driver and CUDA_VISIBLE_DEVICES); use cpu"
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        return f"this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; pick one of them"
    return None


def parse_device(spec: Union[str, torch.device], flag: str = "device") -> torch.device:
    """``spec`` (a name such as ``"cuda:1"`` or a ``torch.device``) as a device that exists here, else a ValueError.

    ``flag`` is how the caller names the setting in messages (e.g. ``"--device"``).
    """
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = spec if isinstance(spec, torch.device) else torch.device(str(spec).strip().lower())
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{flag} {spec!r} is not a device; use {DEVICE_HELP}") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"{flag} {spec!r}: cmkit does not run on {device.type} devices; use {DEVICE_HELP}")
    problem = None
    if device.type == "cuda":
        problem = _cuda_problem(device.index)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        problem = "MPS (Apple GPU) is not available on this machine; use cpu"
    if problem:
        raise ValueError(f"{flag} {spec!r} is not available: {problem}")
    return device
