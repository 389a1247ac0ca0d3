"""Per-step randomness that does not depend on how the global batch is split over processes.

Every process builds a generator from ``(seed, step)`` alone, draws for the whole global batch and keeps its
own slice. So a run on 2 processes sees exactly the noise of a 1-process run with the same global batch,
and resuming at step k needs no saved RNG state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

_MIX = 0x9E3779B97F4A7C15


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed derived from (seed, step, stream) by an integer hash (splitmix64)."""
    z = (seed * 1_000_003 + step * 7_919 + stream * 104_729 + _MIX) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


@dataclass
class StepRandom:
    """Random draws for one training step; ``offset:offset+local_batch`` is this process's slice."""

    seed: int
    step: int
    global_batch: int
    offset: int = 0
    local_batch: Optional[int] = None
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        if self.local_batch is None:
            self.local_batch = self.global_batch - self.offset
        if self.offset < 0 or self.local_batch < 1 or self.offset + self.local_batch > self.global_batch:
            raise ValueError(
                f"slice [{self.offset}, {self.offset + self.local_batch}) does not fit a global batch of {self.global_batch}"
            )
        self._generator = torch.Generator().manual_seed(step_seed(self.seed, self.step))

    def _slice(self, t: Tensor, device: torch.device | str | None = None) -> Tensor:
        return t[self.offset : self.offset + self.local_batch].to(self.device if device is None else device)

    def randn(self, *shape: int) -> Tensor:
        """Standard normal of shape ``[local_batch, *shape]``."""
        return self._slice(torch.randn((self.global_batch, *shape), generator=self._generator))

    def rand(self, *shape: int, device: torch.device | str | None = None) -> Tensor:
        """Uniform [0, 1) of shape ``[local_batch, *shape]``, on ``device`` (default: :attr:`device`)."""
        return self._slice(torch.rand((self.global_batch, *shape), generator=self._generator), device)

    def randint(self, high: int, *shape: int, device: torch.device | str | None = None) -> Tensor:
        """Integers in ``[0, high)`` of shape ``[local_batch, *shape]``, on ``device`` (default: :attr:`device`).

        Indices into a table kept on the CPU (a float64 sigma grid) should stay there: ``device=table.device``.
        """
        draw = torch.randint(0, high, (self.global_batch, *shape), generator=self._generator)
        return self._slice(draw, device)

    def choice(self, probs: Tensor, *shape: int, device: torch.device | str | None = None) -> Tensor:
        """Indices drawn from the categorical ``probs``, shape ``[local_batch, *shape]``, on ``device`` (as randint)."""
        weights = probs.detach().cpu().double()  # moved before the cast: MPS has no float64
        count = self.global_batch * math.prod(shape)
        idx = torch.multinomial(weights, count, replacement=True, generator=self._generator)
        return self._slice(idx.reshape(self.global_batch, *shape) if shape else idx, device)

    def dropout_seed(self, stream: int = 1) -> int:
        """A seed for dropout masks that must repeat across two passes of one step (iCT / ECT).

        ``step_seed(seed, step, stream) + offset``: the same for every call in this step on this process, and
        different on each process (``offset`` is its first sample in the global batch), so the processes draw
        different masks for their slices. Unlike the other draws, the masks therefore depend on how the global
        batch is split: with dropout, P processes do not reproduce a 1-process run.
        """
        return step_seed(self.seed, self.step, stream) + self.offset
