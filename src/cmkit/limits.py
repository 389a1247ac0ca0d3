"""Bounds on sizes read from model folders and the command line, checked before anything is allocated.

A ``config.json`` or a flag can ask for any size: an MLP 300,000 wide, ten million residual blocks, a Karras
grid of 10^10 points, a batch of 10^9 samples. cmkit estimates what such a request costs first and refuses
what cannot fit, naming the field, the estimate and the memory there is:

* :func:`~cmkit._validate.require_int` (re-exported here) bounds integer fields; counts that build Python
  objects one by one (blocks, layers) are capped at :data:`MAX_REPEATS` and grid sizes at
  :data:`MAX_GRID_POINTS`, far above any published model;
* :func:`require_memory` compares an estimate in bytes with the memory of the device it will live on
  (:func:`available_memory`): on CPU (and MPS, which shares it) ``MemAvailable`` from ``/proc/meminfo``,
  lowered to a cgroup memory limit when one is set, else ``os.sysconf``; on CUDA the free device memory plus
  what PyTorch's caching allocator holds unused.

Estimates are the bytes the request needs at least (weights, samples), so a refusal is always warranted;
passing the check does not promise that everything after it fits.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ._validate import require_int as require_int  # re-exported: the size checks use it with these bounds

#: most residual blocks one network config may ask for (each is built as Python objects, one by one); the
#: published consistency-model UNets have at most 42 (lsun256, resamplers included).
MAX_REPEATS = 1_000
#: most points of a scheduler's training grid (``num_train_timesteps``); published grids have at most 1,281.
MAX_GRID_POINTS = 1_000_000

DeviceLike = Union[torch.device, str, None]


def _read_int(path: str) -> Optional[int]:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> Optional[int]:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _cgroup_available() -> Optional[int]:
    """Bytes left under a cgroup (v2, then v1) memory limit, or None when there is none."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit = _read_int(limit_file)
        if limit is not None and limit < 1 << 60:  # "max" or a huge number mean no limit
            return max(0, limit - (_read_int(usage_file) or 0))
    return None


def _host_available() -> Optional[int]:
    available = _meminfo_available()
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = None
    cgroup = _cgroup_available()
    if cgroup is not None:
        available = cgroup if available is None else min(available, cgroup)
    return available


def available_memory(device: DeviceLike = None) -> Optional[int]:
    """Bytes that a new allocation on ``device`` (default the CPU) can use now, or None when unknown."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    if dev.type in ("cpu", "mps"):
        return _host_available()
    return None


def format_bytes(nbytes: float) -> str:
    """``nbytes`` in the largest binary unit that keeps it >= 1, e.g. ``"335.3 GiB"``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024


def require_memory(nbytes: float, what: str, fix: str, device: DeviceLike = None) -> None:
    """Raise a ValueError when ``nbytes`` (an estimate for ``what``) exceed the memory available on ``device``.

    ``what`` names the request and the fields it comes from (e.g. "an MLPNet with width=300000"); ``fix`` says
    what to change. Nothing is checked when the available memory cannot be read.
    """
    available = available_memory(device)
    if available is None or nbytes <= available:
        return
    where = "this machine" if device is None or torch.device(device).type in ("cpu", "mps") else str(device)
    raise ValueError(
        f"{what} would take at least {format_bytes(nbytes)} of memory, but only {format_bytes(available)} is "
        f"available on {where}; {fix}"
    )


def require_parameters_fit(num_parameters: int, what: str, fix: str) -> None:
    """Refuse to build a network of ``num_parameters`` (in the default float dtype) that the CPU memory cannot hold."""
    require_memory(num_parameters * torch.get_default_dtype().itemsize, f"{what} ({num_parameters:,} parameters)", fix)


def require_weights_fit(module: Any, dtype: torch.dtype, device: DeviceLike) -> None:
    """Refuse to move ``module`` to ``device`` in ``dtype`` when its weights alone exceed the memory there."""
    params = module.parameters() if isinstance(module, torch.nn.Module) else ()
    nbytes = sum(p.numel() * (dtype.itemsize if p.is_floating_point() else p.element_size()) for p in params)
    require_memory(nbytes, f"the network's weights ({format_bytes(nbytes)} in {dtype})",
                   "use a smaller dtype (e.g. bfloat16), a device with more memory, or the CPU", device)


def require_sampling_batch_fits(
    model: Any, batch_size: int, sample_shape: Sequence[int], dtype: torch.dtype, device: DeviceLike
) -> None:
    """Refuse a sampling batch whose sampler state and network activations cannot fit ``device``'s memory.

    The estimate is a lower bound: four float32 copies of the batch (sample, network input and output, noise)
    plus the activations ``model`` (in ``dtype``) reports through ``activation_floats(sample_shape)`` if it can.
    """
    per_sample = 4 * 4 * math.prod(int(s) for s in sample_shape)
    activation_floats = getattr(model, "activation_floats", None)
    if callable(activation_floats):
        per_sample += int(activation_floats(tuple(sample_shape))) * dtype.itemsize
    require_memory(
        batch_size * per_sample,
        f"a batch of {batch_size:,} samples of shape {tuple(sample_shape)}",
        "lower the batch size, or draw the samples in several smaller batches",
        device,
    )
