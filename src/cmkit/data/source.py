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


def check_slice(global_batch: int, offset: int, local_batch: Optional[int]) -> int:
    """The local batch size of the slice ``[offset, offset + local_batch)`` (None: to the end), checked."""
    local = global_batch - offset if local_batch is None else local_batch
    if global_batch < 1 or offset < 0 or local < 1 or offset + local > global_batch:
        raise ValueError(f"slice [{offset}, {offset + local}) does not fit a global batch of {global_batch}")
    return local


def uint8_to_unit(x: Tensor) -> Tensor:
    """8-bit pixels ``0..255`` as float32 in ``[-1, 1]`` (``x / 127.5 - 1``)."""
    return x.float().div(127.5).sub(1.0)


def flip_mask(seed: int, step: int, global_batch: int, offset: int, local_batch: int) -> Tensor:
    """Which samples of this slice of step ``step`` are mirrored: each with probability 1/2, drawn from ``(seed, step)``."""
    g = torch.Generator().manual_seed(step_seed(seed, step, FLIP_STREAM))
    return _slice(torch.rand(global_batch, generator=g) < 0.5, offset, local_batch)


def apply_flips(x: Tensor, flips: Tensor) -> Tensor:
    """``x`` ``[B, C, H, W]`` with the samples where ``flips`` is True mirrored left-right."""
    return torch.where(flips[:, None, None, None], x.flip(-1), x)


class EpochOrder:
    """The order in which a finite data set of ``n`` samples is read: an endless stream of epochs.

    Position ``p`` of the stream is sample ``perm_e[p mod n]`` of epoch ``e = p div n``, where ``perm_e`` is a
    permutation of ``0..n-1`` drawn from ``(seed, e)``; step ``k`` of global batch ``B`` reads positions
    ``k B ... (k + 1) B - 1``. Every process and every resumed run therefore reads the same samples at a step.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("the data set is empty")
        self.n = int(n)
        self._cache: dict[tuple[int, int], Tensor] = {}

    def __getstate__(self) -> dict:
        return {"n": self.n, "_cache": {}}  # permutations are recomputed where needed (e.g. in a loader worker)

    def permutation(self, seed: int, epoch: int) -> Tensor:
        """The permutation ``perm_e`` of epoch ``epoch`` (the two latest are cached: a step spans at most two epochs
        when the batch is smaller than the data, and a permutation of ImageNet's 1.28M images is 10 MB)."""
        key = (seed, epoch)
        if key not in self._cache:
            if len(self._cache) >= 2:
                del self._cache[next(iter(self._cache))]
            g = torch.Generator().manual_seed(step_seed(seed, epoch, DATA_STREAM))
            self._cache[key] = torch.randperm(self.n, generator=g)
        return self._cache[key]

    def at(self, seed: int, positions: Tensor) -> Tensor:
        """The sample indices at stream ``positions`` (int64)."""
        epochs, within = positions // self.n, positions % self.n
        out = torch.empty(len(positions), dtype=torch.long)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self.permutation(seed, int(epoch))[within[mask]]
        return out

    def positions(self, step: int, global_batch: int, offset: int = 0, local_batch: Optional[int] = None) -> Tensor:
        """The stream positions of the slice ``[offset, offset + local_batch)`` of step ``step``'s global batch."""
        local = check_slice(global_batch, offset, local_batch)
        start = step * global_batch + offset
        return torch.arange(start, start + local)

    def indices(self, seed: int, step: int, global_batch: int) -> Tensor:
        """Sample indices of step ``step``'s global batch (positions ``step * B ...`` of the stream)."""
        return self.at(seed, self.positions(step, global_batch))


@dataclass
class TensorSource:
    """A finite data set in memory, read in the epochs of :class:`EpochOrder`.

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
        self._order = EpochOrder(len(self.data))

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

    def indices(self, seed: int, step: int, global_batch: int) -> Tensor:
        """Data indices of step ``step``'s global batch (:meth:`EpochOrder.indices`)."""
        return self._order.indices(seed, step, global_batch)

    def batch(
        self, seed: int, step: int, global_batch: int, offset: int = 0, local_batch: Optional[int] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """This process's slice of step ``step``'s global batch."""
        local = check_slice(global_batch, offset, local_batch)
        idx = self._order.at(seed, self._order.positions(step, global_batch, offset, local))
        x = self.data[idx]
        x = uint8_to_unit(x) if x.dtype == torch.uint8 else x.float()
        if self.flip:
            x = apply_flips(x, flip_mask(seed, step, global_batch, offset, local))
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
        local = check_slice(global_batch, offset, local_batch)
        g = torch.Generator().manual_seed(step_seed(seed, step, DATA_STREAM))
        x = self.sampler(global_batch, g)
        return _slice(x, offset, local).float().contiguous(), None
