"""Data parallelism on ``torch.distributed``: process group set-up from torchrun's environment, gradient averaging.

Launch with ``torchrun --nproc_per_node P -m cmkit train ...`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``). Backend: NCCL on CUDA, gloo on CPU.

Gradients are averaged with one ``all_reduce`` over a flat buffer after ``backward`` rather than through
``DistributedDataParallel``: objectives call the trained network several times per step (online and
target passes, sometimes under ``no_grad``), which DDP's one-forward-one-backward hooks do not fit, and an
explicit average keeps the loop independent of how an objective uses its model.

Every collective waits at most ``timeout_s`` seconds (``--dist-timeout``) for the other processes: a process
that died or froze then ends the job with a :class:`CollectiveError` naming the operation, instead of leaving
the others waiting. With gloo the error is raised in the waiting process; with NCCL, PyTorch's watchdog
reports the timed-out collective and ends the process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator, Literal, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..devices import parse_device


class CollectiveError(RuntimeError):
    """A collective failed or timed out: another process died, froze or fell too far behind."""


@dataclass
class DistContext:
    """This process's place in the run: rank, world size, device and the collectives' timeout."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False
    #: seconds a collective waits for the other processes (None: PyTorch's default).
    timeout_s: Optional[float] = None

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Turn the failure of a collective into a :class:`CollectiveError` that says what to do."""
        try:
            yield
        except RuntimeError as err:  # torch.distributed's errors (DistBackendError, ...) are RuntimeErrors
            limit = f"{self.timeout_s:g} s" if self.timeout_s is not None else "PyTorch's default timeout"
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CollectiveError(
                f"process {self.rank} of {self.world_size}: {what} failed ({first_line}). Another process died, froze "
                f"or did not reach it within {limit} (--dist-timeout); stopping this job. Continue from the last "
                "checkpoint with --resume once every process is healthy, and raise --dist-timeout if a process "
                "legitimately pauses longer (e.g. while rank 0 writes checkpoints to slow storage)"
            ) from err

    def barrier(self) -> None:
        """Wait for every process (no-op on one process)."""
        if self.distributed:
            with self._collective("waiting for every process (barrier)"):
                dist.barrier()

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over processes, as a float64 CPU tensor (NCCL reduces it on the GPU)."""
        if not self.distributed:  # no float64 on the device: MPS has none
            return value.detach().cpu().to(torch.float64)
        value = value.detach().to(device=self.device, dtype=torch.float64).clone()
        with self._collective("averaging the loss (all_reduce)"):
            dist.all_reduce(value)
        value /= self.world_size
        return value.cpu()

    def max_int(self, value: int) -> int:
        """The largest ``value`` over processes (``value`` itself on one process): how all processes agree on a flag."""
        if not self.distributed:
            return value
        flag = torch.tensor([value], dtype=torch.int64, device=self.device)
        with self._collective("agreeing whether to stop (all_reduce)"):
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over processes (missing gradients count as zero)."""
        if not self.distributed:
            return
        params = [p for p in params if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        with self._collective("averaging gradients (all_reduce)"):
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
        with torch.no_grad(), self._collective("copying rank 0's initial weights (broadcast)"):
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(device: Literal["auto", "cpu", "cuda"], local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is available, else the CPU; ``cuda`` must exist (see cmkit.devices)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return parse_device(f"cuda:{local_rank}", "device")
    return torch.device("cpu")


def setup_distributed(device: Literal["auto", "cpu", "cuda"] = "auto", timeout_s: Optional[float] = None) -> DistContext:
    """Join the process group torchrun describes in the environment (one process when ``WORLD_SIZE`` is unset).

    ``timeout_s`` bounds every collective's wait for the other processes (None: PyTorch's default, 30 minutes
    for gloo); it applies when this call creates the group.
    """
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"the process group timeout must be a positive number of seconds, got {timeout_s!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns, timeout_s if owns else None)
