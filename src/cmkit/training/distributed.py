"""Data parallelism on ``torch.distributed``: process group set-up from torchrun's environment, gradient averaging.

Launch with ``torchrun --nproc_per_node P -m cmkit train ...`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; on several machines ``RANK`` is the global
rank, which decides who writes files, and ``LOCAL_RANK`` picks the GPU). Backend: NCCL on CUDA, gloo on CPU.

Gradients are averaged by :class:`GradientSync`: the trained network runs inside
``DistributedDataParallel``, whose bucketed all-reduces overlap the backward pass. Objectives call the network
several times per step (online, target, teacher passes); only the pass with gradients goes through the wrapper
(``objective.online``), the passes without gradients call the inner module and never touch DDP's reducer. An
objective whose gradient pass bypasses the wrapper still trains correctly: the gradients are then averaged
with one ``all_reduce`` over a flat buffer after ``backward`` (:meth:`DistContext.average_gradients`).

Every collective waits at most ``timeout_s`` seconds (``--dist-timeout``) for the other processes: a process
that died or froze then ends the job with a :class:`CollectiveError` naming the operation, instead of leaving
the others waiting. With gloo the error is raised in the waiting process; with NCCL, PyTorch's watchdog
reports the timed-out collective and ends the process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

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
    def _collective(self, what: str, only: Optional[Callable[[RuntimeError], bool]] = None) -> Iterator[None]:
        """Turn the failure of a collective into a :class:`CollectiveError` that says what to do.

        ``only`` restricts that to the errors it accepts, for blocks that also compute (a backward pass): there
        other errors (out of memory, a bug) pass unchanged.
        """
        try:
            yield
        except RuntimeError as err:  # torch.distributed's errors (DistBackendError, ...) are RuntimeErrors
            if only is not None and not only(err):
                raise
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


def _is_backend_error(err: RuntimeError) -> bool:
    """Whether ``err`` came from the communication backend: NCCL raises ``DistError`` subclasses, gloo plain
    ``RuntimeError``s that name it (``.../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting ...``)."""
    return isinstance(err, dist.DistError) or "gloo" in str(err)


_ONE_ONLINE_PASS = (
    "call `objective.online` exactly once per micro-batch, for the pass with gradients, and `objective.model` for "
    "the passes without (or never call `online`: then gradients are averaged after backward)"
)


class GradientSync:
    """Makes each trainable gradient of an optimizer step its mean over the processes.

    Per step: run each micro-batch's forward and backward inside :meth:`micro_batch` (``last=True`` for the
    step's last one), then call :meth:`finish` before the optimizer step. On one process both do nothing.

    The trained network is wrapped in ``DistributedDataParallel`` and handed to the objective
    (``objective.set_online``, :class:`~cmkit.training.objectives.base.BaseObjective`), which calls the wrapper
    for its one pass with gradients; DDP then all-reduces the gradients bucket by bucket while backward still
    runs. Micro-batches before the last run under ``no_sync`` and only accumulate locally. The passes without
    gradients call the inner module. Where a micro-batch's gradient pass did not go through the wrapper (an
    objective without ``set_online``, or a forward-mode ``torch.func.jvp`` on the inner module, which DDP's
    hooks do not see), the gradients are averaged after backward by one flat ``all_reduce``
    (:meth:`DistContext.average_gradients`), so the result is the same, only not overlapped.

    The first step of a session always uses that flat ``all_reduce``; it shows whether every trainable parameter
    gets a gradient. The wrapper is built before the next step, with ``find_unused_parameters`` only if some
    parameter got none on some process: that option walks the autograd graph after every forward, wasted when
    all parameters are used (every cmkit network and objective), and without it a parameter that gets no
    gradient leaves its bucket unreduced and DDP fails at the next step. ``static_graph=True``, which would
    find unused parameters once, fails with ``no_sync`` (an internal assert of the reducer, torch 2.13).

    DDP's constructor broadcasts rank 0's weights and buffers once more; :func:`~cmkit.training.loop.train` has
    broadcast them already, before the objective copied its target network. Buffers keep DDP's default, a
    broadcast from rank 0 before each forward with gradients: cmkit's networks have none, and constant ones
    (resampling filters) cost one small broadcast.
    """

    def __init__(self, ctx: DistContext, model: nn.Module, params: list[nn.Parameter], objective: Any) -> None:
        self.ctx, self.model, self.params = ctx, model, params
        #: the objective's hook that routes its gradient pass through a wrapper; None: no wrapper is built
        self._route: Optional[Callable[[Optional[nn.Module]], None]] = (
            getattr(objective, "set_online", None) if ctx.distributed else None
        )
        self.ddp: Optional[nn.Module] = None
        self._find_unused: Optional[bool] = None  # decided by the first step
        self._calls = [0]  # forwards with gradients through the wrapper in the current micro-batch
        self._routed: list[int] = []
        #: how the last step averaged: "DistributedDataParallel", "all_reduce", or None (one process)
        self.last_mode: Optional[str] = None

    @contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        """Run one micro-batch's forward and backward; gradients are synchronised after the ``last`` one."""
        if self._route is not None and self.ddp is None and self._find_unused is not None:
            self._wrap()
        self._calls[0] = 0
        if self.ddp is None:
            yield
        else:
            local_only = self.ddp.no_sync() if not last else nullcontext()
            what = "averaging gradients during the backward pass (DistributedDataParallel's all_reduce)"
            with local_only, self.ctx._collective(what, only=_is_backend_error):
                yield
        self._routed.append(self._calls[0])

    def finish(self) -> None:
        """After the step's last backward: average what DDP did not (see the class docstring)."""
        routed, self._routed = self._routed, []
        if not self.ctx.distributed:
            return
        if self.ddp is not None and routed and all(n == 1 for n in routed):
            self.last_mode = "DistributedDataParallel"
            return
        if self.ddp is not None and any(routed):
            raise RuntimeError(
                "the objective called its DistributedDataParallel network with gradients in some micro-batches of "
                f"the step but not in others (calls per micro-batch: {routed}); {_ONE_ONLINE_PASS}"
            )
        if self._route is not None and self._find_unused is None:
            missing = any(p.grad is None for p in self.params)
            self._find_unused = bool(self.ctx.max_int(int(missing)))
        self.ctx.average_gradients(self.params)
        self.last_mode = "all_reduce"

    def _wrap(self) -> None:
        """Wrap the model in DDP (it broadcasts rank 0's weights and checks the shapes) and route the objective."""
        from torch.nn.parallel import DistributedDataParallel

        assert self._route is not None
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        with self.ctx._collective("wrapping the network in DistributedDataParallel (broadcast)"):
            self.ddp = DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=bool(self._find_unused)
            )
        calls = self._calls  # the hook holds the counter, not self: no reference cycle keeps DDP alive

        def count_call(module: nn.Module, args: Any) -> None:
            if torch.is_grad_enabled():
                if calls[0]:  # before DDP prepares a second backward, which would leave its reducer half-done
                    raise RuntimeError(f"a second pass with gradients through the DistributedDataParallel network "
                                       f"in one micro-batch; {_ONE_ONLINE_PASS}")
                calls[0] += 1

        self.ddp.register_forward_pre_hook(count_call)
        self._route(self.ddp)

    def close(self) -> None:
        """Drop the DDP wrapper and the objective's route to it; call before the process group is destroyed, so that
        DDP's reducer, which holds the group, goes first."""
        if self.ddp is not None and self._route is not None:
            self._route(None)
        self.ddp = None


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
