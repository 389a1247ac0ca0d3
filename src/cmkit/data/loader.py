"""Image sources read step by step, and their prefetching loader (``torch.utils.data.DataLoader`` workers).

:class:`StepImageSource` is the base of the sources whose samples are uint8 images read in the epochs of
:class:`~cmkit.data.source.EpochOrder` (``folder:``, ``zip:``, ``prepared:``): a subclass reads the pixels of
one slice (:meth:`StepImageSource.read_slice`); the base adds the flips, the map to [-1, 1], the count of
unreadable records and two ways to get batches, both giving the same tensors:

* :meth:`~StepImageSource.batch` computes one slice in the calling process (the reference);
* :meth:`~StepImageSource.loader` returns :class:`StepBatches`, an iterator over the slices of steps
  ``start..stop-1`` that ``workers`` background processes compute ahead of time. Its batch sampler yields one key
  ``(step, global_batch, offset, local_batch)`` per step, so each step's slice is made whole by one worker and the
  batches arrive in step order whatever the number of workers.

A batch depends on ``(seed, step)`` and the slice only: never on the number of workers or processes, or on where
a run was resumed.
"""

from __future__ import annotations

import signal
import warnings
from abc import ABC, abstractmethod
from typing import Iterator, NamedTuple, Optional

import torch
from torch import Tensor

from .source import SampleKind, apply_flips, check_slice, flip_mask, uint8_to_unit


class RawBatch(NamedTuple):
    """One slice as read: uint8 pixels ``[b, C, H, W]`` (flips applied), int64 labels or None, the records that
    failed while reading it as ``(index, reason)``, and the decoder notes met as ``(note, count)``."""

    x: Tensor
    labels: Optional[Tensor]
    unreadable: tuple[tuple[int, str], ...] = ()
    notes: tuple[tuple[str, int], ...] = ()


class StepImageSource(ABC):
    """A finite set of uint8 images, read in epochs; subclasses implement :meth:`read_slice` (see the module)."""

    kind: SampleKind = "images"

    def __init__(self, sample_shape: tuple[int, ...], class_names: list[str], flip: bool, name: str) -> None:
        self.sample_shape = tuple(sample_shape)
        self.class_names = list(class_names)
        self.flip = bool(flip)
        self.name = name
        #: records found unreadable in this process so far: index -> reason (their number is :attr:`num_unreadable`)
        self.unreadable: dict[int, str] = {}
        self._warned: set[str] = set()

    @property
    def num_classes(self) -> int:
        """Number of classes (0: unlabelled)."""
        return len(self.class_names)

    @property
    def num_unreadable(self) -> int:
        """How many records were found unreadable so far (each replaced by a readable one)."""
        return len(self.unreadable)

    @abstractmethod
    def __len__(self) -> int:
        """Number of records (unreadable ones included until they are met)."""

    @abstractmethod
    def read_slice(self, seed: int, step: int, global_batch: int, offset: int, local_batch: int) -> RawBatch:
        """The uint8 pixels and labels of this slice of step ``step``'s global batch, before flips."""

    def raw_batch(
        self, seed: int, step: int, global_batch: int, offset: int = 0, local_batch: Optional[int] = None
    ) -> RawBatch:
        """This slice of step ``step``'s global batch as uint8 pixels, flipped as drawn from ``(seed, step)``."""
        local = check_slice(global_batch, offset, local_batch)
        raw = self.read_slice(seed, step, global_batch, offset, local)
        if self.flip:
            raw = raw._replace(x=apply_flips(raw.x, flip_mask(seed, step, global_batch, offset, local)))
        return raw

    def batch(
        self, seed: int, step: int, global_batch: int, offset: int = 0, local_batch: Optional[int] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """This process's slice of step ``step``'s global batch: float32 pixels in [-1, 1] and labels (or None)."""
        raw = self.raw_batch(seed, step, global_batch, offset, local_batch)
        self.note_problems(raw)
        return uint8_to_unit(raw.x).contiguous(), raw.labels

    def loader(
        self, seed: int, start_step: int, stop_step: int, global_batch: int, offset: int = 0,
        local_batch: Optional[int] = None, *, workers: int = 2, pin_memory: Optional[bool] = None,
        device: Optional[torch.device | str] = None,
    ) -> "StepBatches":
        """The slices of steps ``start_step .. stop_step - 1``, prefetched by ``workers`` processes (0: in this one).

        Yields ``(x, labels)`` as :meth:`batch` gives them, on ``device`` (default CPU); ``pin_memory`` (default:
        when ``device`` is CUDA) stages them in page-locked memory for asynchronous copies.
        """
        return StepBatches(self, seed, start_step, stop_step, global_batch, offset, local_batch, workers, pin_memory, device)

    def note_problems(self, raw: RawBatch) -> None:
        """Count the batch's unreadable records and warn once about them, and once per kind of decoder note."""
        for index, reason in raw.unreadable:
            self.unreadable.setdefault(int(index), reason)
        if self.unreadable and "unreadable" not in self._warned:
            self._warned.add("unreadable")
            first = next(iter(self.unreadable.values()))
            warnings.warn(
                f"skipped {len(self.unreadable)} unreadable image(s) of {len(self)} in {self.name} so far (first: "
                f"{first}); each is replaced by the next readable image of its epoch (the same in every run and on "
                "every process), and the count is logged as unreadable_images in metrics.jsonl",
                stacklevel=3,
            )
        for note, count in raw.notes:
            if note not in self._warned:
                self._warned.add(note)
                warnings.warn(f"{count} image(s) of a batch of {self.name}: each {note} (said once)", stacklevel=3)


class _StepKeys:
    """The DataLoader's batch sampler: one key ``(step, global_batch, offset, local_batch)`` per step."""

    def __init__(self, start: int, stop: int, global_batch: int, offset: int, local_batch: int) -> None:
        self.start, self.stop, self.slice = start, stop, (global_batch, offset, local_batch)

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        return ((step, *self.slice) for step in range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class _SliceReader:
    """The DataLoader's dataset: a key of :class:`_StepKeys` -> that slice as a :class:`RawBatch`."""

    def __init__(self, source: StepImageSource, seed: int) -> None:
        self.source, self.seed = source, seed

    def __getitems__(self, key: tuple[int, int, int, int]) -> RawBatch:
        step, global_batch, offset, local_batch = key
        return self.source.raw_batch(self.seed, step, global_batch, offset, local_batch)

    __getitem__ = __getitems__

    def __len__(self) -> int:
        return len(self.source)


def _leave_stop_signals_to_the_parent(worker_id: int) -> None:
    """A worker ignores SIGINT and SIGTERM: Ctrl-C (sent to the whole process group) or a cluster's SIGTERM must
    not end it while the training process finishes its step and checkpoints (see :mod:`cmkit.training.preemption`).
    The workers end when the loader is closed, or by themselves when their parent dies."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _whole(batch: RawBatch) -> RawBatch:
    """The DataLoader's collate function: a slice is made whole by the dataset already."""
    return batch


class StepBatches:
    """Iterator over this process's ``(x, labels)`` for consecutive steps (made by :meth:`StepImageSource.loader`).

    :attr:`next_step` is the step whose batch comes next. :meth:`close` (or the end of a ``with`` block) stops
    the worker processes.
    """

    def __init__(
        self, source: StepImageSource, seed: int, start: int, stop: int, global_batch: int, offset: int,
        local_batch: Optional[int], workers: int, pin_memory: Optional[bool], device: Optional[torch.device | str],
    ) -> None:
        from torch.utils.data import DataLoader

        from .._validate import require_int

        workers = require_int("workers", workers, 0, " (background data processes; 0 reads in this process)", 256)
        local = check_slice(global_batch, offset, local_batch)
        if not 0 <= start <= stop:
            raise ValueError(f"the steps must run from start_step to stop_step >= start_step >= 0, got {start}..{stop}")
        self.source = source
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.next_step, self.stop_step = start, stop
        pin = self.device.type == "cuda" if pin_memory is None else bool(pin_memory)
        self._loader: Optional[DataLoader] = DataLoader(
            _SliceReader(source, seed),  # type: ignore[arg-type]
            batch_sampler=_StepKeys(start, stop, global_batch, offset, local),  # type: ignore[arg-type]
            num_workers=workers, collate_fn=_whole, pin_memory=pin and torch.cuda.is_available(),
            worker_init_fn=_leave_stop_signals_to_the_parent,
            persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
        )
        self._it: Optional[Iterator[RawBatch]] = iter(self._loader)

    def __iter__(self) -> "StepBatches":
        return self

    def __next__(self) -> tuple[Tensor, Optional[Tensor]]:
        if self._it is None or self.next_step >= self.stop_step:
            raise StopIteration
        raw = next(self._it)
        self.source.note_problems(raw)  # pinning may have turned its tuples into lists: both iterate alike
        self.next_step += 1
        x = uint8_to_unit(raw.x.to(self.device, non_blocking=True))
        labels = raw.labels.to(self.device, non_blocking=True) if raw.labels is not None else None
        return x.contiguous(), labels

    def close(self) -> None:
        """Stop the worker processes (also when the steps were not all taken)."""
        self._it = None  # the DataLoader's iterator shuts its workers down when it is released
        self._loader = None

    def __enter__(self) -> "StepBatches":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

