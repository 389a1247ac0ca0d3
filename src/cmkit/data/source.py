"""Deterministic training batches: step ``k``'s global batch is a function of ``(seed, k)`` alone.

Every process computes the same global batch and keeps its slice ``[offset, offset + local_batch)``, so a run
on several processes sees exactly the data of a one-process run with the same global batch, and a resumed
run needs no saved data-loader state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..streams import step_seed

#: independent random streams of :func:`cmkit.streams.step_seed` used for data (objectives use stream 0).
DATA_STREAM = 11
FLIP_STREAM = 12

SampleKind = Literal["images", "points"]


@runtime_checkable
class DataSource(Protocol):
    """What the training loop draws batches from."""

    sample_shape: tuple[int, ...]
    num_classes: int
    kind: SampleKind

    def batch(
        self, seed: int, step: int, global_batch: int, offset: int = 0, local_batch: Optional[int] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """This process's slice of step ``step``'s global batch: float32 data and int64 labels (or None)."""
        ...


def _slice(t: Tensor, offset: int, local_batch: int) -> Tensor:
    return t[offset : offset + local_batch]


def _check_slice(global_batch: int, offset: int, local_batch: Optional[int]) -> int:
    local = global_batch - offset if local_batch is None else local_batch
    if global_batch < 1 or offset < 0 or local < 1 or offset + local > global_batch:
        raise ValueError(f"slice [{offset}, {offset + local}) does not fit a global batch of {global_batch}")
    return local


@dataclass
class TensorSource:
    """A finite data set read in epochs: each epoch is a permutation drawn from ``(seed, epoch)``.

    ``data`` is float (used as is) or uint8 pixels (mapped to [-1, 1]). With ``flip``, each image is mirrored
    left-right with probability 1/2, drawn from ``(seed, step)``.
    """

    data: Tensor
    labels: Optional[Tensor] = None
    flip: bool = False
    class_names: list[str] = field(default_factory=list)
    kind: SampleKind = "images"

    def __post_init__(self) -> None:
        if len(self.data) == 0:
            raise ValueError("the data set is empty")
        if self.labels is not None and len(self.labels) != len(self.data):
            raise ValueError(f"{len(self.labels)} labels for {len(self.data)} samples")
        if self.flip and self.data.ndim != 4:
            raise ValueError("horizontal flip needs image data of shape [N, C, H, W]")
        self._perm_cache: dict[tuple[int, int], Tensor] = {}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def num_classes(self) -> int:
        if self.labels is None:
            return 0
        return max(len(self.class_names), int(self.labels.max()) + 1)

    def __len__(self) -> int:
        return len(self.data)

    def _permutation(self, seed: int, epoch: int) -> Tensor:
        key = (seed, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            g = torch.Generator().manual_seed(step_seed(seed, epoch, DATA_STREAM))
            self._perm_cache[key] = torch.randperm(len(self.data), generator=g)
        return self._perm_cache[key]

    def indices(self, seed: int, step: int, global_batch: int) -> Tensor:
        """Data indices of step ``step``'s global batch (positions ``step * B ...`` of the epoch stream)."""
        n = len(self.data)
        positions = torch.arange(step * global_batch, (step + 1) * global_batch)
        epochs, within = positions // n, positions % n
        out = torch.empty(global_batch, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._permutation(seed, int(epoch))[within[mask]]
        return out

    def batch(
        self, seed: int, step: int, global_batch: int, offset: int = 0, local_batch: Optional[int] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """This process's slice of step ``step``'s global batch."""
        local = _check_slice(global_batch, offset, local_batch)
        idx = _slice(self.indices(seed, step, global_batch), offset, local)
        x = self.data[idx]
        x = x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()
        if self.flip:
            g = torch.Generator().manual_seed(step_seed(seed, step, FLIP_STREAM))
            flips = _slice(torch.rand(global_batch, generator=g) < 0.5, offset, local)
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        y = self.labels[idx] if self.labels is not None else None
        return x.contiguous(), y


@dataclass
class SamplerSource:
    """An infinite distribution: step ``k``'s global batch is ``sampler(global_batch, generator(seed, k))``."""

    sampler: Callable[[int, torch.Generator], Tensor]
    sample_shape: tuple[int, ...]
    num_classes: int = 0
    kind: SampleKind = "points"
    class_names: list[str] = field(default_factory=list)

    def batch(
        self, seed: int, step: int, global_batch: int, offset: int = 0, local_batch: Optional[int] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """This process's slice of step ``step``'s global batch (no labels)."""
        local = _check_slice(global_batch, offset, local_batch)
        g = torch.Generator().manual_seed(step_seed(seed, step, DATA_STREAM))
        x = self.sampler(global_batch, g)
        return _slice(x, offset, local).float().contiguous(), None
