"""Data parallelism on ``torch.distributed``: process group set-up from torchrun's environment, gradient averaging.

Launch with ``torchrun --nproc_per_node P -m cmkit train ...`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``). Backend: NCCL on CUDA, gloo on CPU.

Gradients are averaged with one ``all_reduce`` over a flat buffer after ``backward`` rather than through
``DistributedDataParallel``: objectives call the trained network several times per step (online and
target passes, sometimes under ``no_grad``), which DDP's one-forward-one-backward hooks do not fit, and an
explicit average keeps the loop independent of how an objective uses its model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass
class DistContext:
    """This process's place in the run: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every process (no-op on one process)."""
        if self.distributed:
            dist.barrier()

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over processes, as a float64 CPU tensor (NCCL reduces it on the GPU)."""
        if not self.distributed:  # no float64 on the device: MPS has none
            return value.detach().cpu().to(torch.float64)
        value = value.detach().to(device=self.device, dtype=torch.float64).clone()
        dist.all_reduce(value)
        value /= self.world_size
        return value.cpu()

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over processes (missing gradients count as zero)."""
        if not self.distributed:
            return
        params = [p for p in params if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).clone()
            offset += n

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every process's ``module``."""
        if not self.distributed:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(device: Literal["auto", "cpu", "cuda"], local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is available, else the CPU."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but CUDA is not available; use device 'cpu' or 'auto'")
        return torch.device("cuda", local_rank)
    if device not in ("auto", "cpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device("cpu")


def setup_distributed(device: Literal["auto", "cpu", "cuda"] = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (one process when ``WORLD_SIZE`` is unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)
