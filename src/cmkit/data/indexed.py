"""Random-access image records decoded on demand: the streaming form of every image data set.

:class:`ImageRecords` is what a format provides (a folder, an EDM zip, a Hugging Face data set): a length, class
names and ``read(index) -> (image, class id)``. :class:`IndexedImageSource` turns any such records into a
training :class:`~cmkit.data.source.DataSource`: it reads the records of each step's slice in the order of
:class:`~cmkit.data.source.EpochOrder`, brings each image to ``channels x resolution x resolution`` uint8 pixels
(:func:`cmkit.data.pixels.image_pixels`), and maps them to [-1, 1] with the flips of
:class:`~cmkit.data.source.TensorSource`; on the same images both give bit-identical batches, and
:meth:`~cmkit.data.loader.StepImageSource.loader` prefetches them in background processes.

Unreadable records. A record whose ``read`` (or decoding) raises is replaced by the next readable record of the
same epoch's permutation: position ``p`` of epoch ``e`` (sample ``perm_e[p]``) becomes ``perm_e[p + 1]``, then
``perm_e[p + 2]``, ... (wrapping around the epoch). Which records fail depends on the files alone, so every
run, process count and worker count makes the same substitutions. They are counted
(:attr:`~cmkit.data.loader.StepImageSource.num_unreadable`, one warning). A slice in which more distinct records
fail than half its size and than :data:`MIN_FAILURES_TO_STOP`, or in which no record of the epoch can be read,
stops the run with an error naming the records: the data are damaged, not a few files.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Optional, Protocol, runtime_checkable

import numpy as np
import torch

from .loader import RawBatch, StepImageSource
from .pixels import Channels, ResizeMode, check_options, image_pixels
from .source import EpochOrder

if TYPE_CHECKING:
    from PIL import Image


@runtime_checkable
class ImageRecords(Protocol):
    """Random-access image records: ``read(index)`` decodes record ``index`` (``0 <= index < len``).

    ``read`` returns the decoded PIL image (any mode and size) and its class id in ``0 .. len(class_names) - 1``,
    or None when the records have no classes (``class_names == []``). It raises on a bad record, with a message
    that names the record (file name, key). Implementations keep their index compact (NumPy arrays, not one
    Python object per record) and open files lazily in each process, since loader workers share or copy them.
    """

    class_names: list[str]

    def __len__(self) -> int: ...

    def read(self, index: int) -> tuple["Image.Image", Optional[int]]: ...


#: a slice stops the run when more distinct records fail than half its size and than this (or all of them do).
MIN_FAILURES_TO_STOP = 8


class ImageSettingError(ValueError):
    """A record that contradicts the data's settings (a size with ``resize='none'``, a class id): not a bad file."""


class IndexedImageSource(StepImageSource):
    """A :class:`~cmkit.data.source.DataSource` over :class:`ImageRecords`, decoded on demand (see the module).

    ``resolution`` may be None only with ``resize='none'``: the first readable image then sets the size.
    ``class_labels``: None uses the records' classes when they have any, False ignores them, True requires them.
    ``name`` (e.g. the data spec) names the data in messages.
    """

    def __init__(
        self, records: ImageRecords, resolution: Optional[int] = None, resize: ResizeMode = "crop",
        channels: Channels = 3, flip: bool = False, class_labels: Optional[bool] = None, name: str = "",
    ) -> None:
        check_options(resolution, resize, channels)
        name = name or repr(records)
        if len(records) == 0:
            raise ValueError(f"the data {name} hold no images")
        if class_labels and not records.class_names:
            raise ValueError(f"class labels were requested but {name} has no classes; train without class labels")
        self.records = records
        self.resize: ResizeMode = resize
        self.channels: Channels = channels
        self.use_labels = bool(records.class_names) and class_labels is not False
        #: the images' height and width
        self.size = (resolution, resolution) if resolution is not None else _first_size(records, channels, name)
        self._order = EpochOrder(len(records))
        super().__init__((channels, *self.size), records.class_names if self.use_labels else [], flip, name)

    def __len__(self) -> int:
        return len(self.records)

    def _pixels(self, index: int) -> tuple[np.ndarray, tuple[str, ...], Optional[int]]:
        """Record ``index`` as ``[C, H, W]`` uint8, its decoder notes and its label (raises when unreadable)."""
        image, label = self.records.read(index)
        arr, notes = image_pixels(image, self.channels, self.size[0] if self.resize != "none" else None, self.resize)
        if self.resize == "none" and arr.shape[1:] != self.size:
            raise ImageSettingError(
                f"image {index} of {self.name} is {arr.shape[1]}x{arr.shape[2]}, not {self.size[0]}x{self.size[1]} "
                "like the first one; pass a resolution with resize='crop' or 'stretch' to resize the images"
            )
        if self.use_labels and not (label is not None and 0 <= label < len(self.class_names)):
            raise ImageSettingError(
                f"image {index} of {self.name} has class id {label!r}, not one of 0..{len(self.class_names) - 1}; "
                "fix the labels, or train unconditionally (class labels off)"
            )
        return arr, notes, label if self.use_labels else None

    def read_slice(self, seed: int, step: int, global_batch: int, offset: int, local_batch: int) -> RawBatch:
        """Decode the slice's records, replacing unreadable ones by the next readable record of their epoch."""
        n = len(self.records)
        positions = self._order.positions(step, global_batch, offset, local_batch)
        indices = self._order.at(seed, positions).tolist()
        x = np.empty((local_batch, *self.sample_shape), dtype=np.uint8)
        labels = np.zeros(local_batch, dtype=np.int64)
        failed: dict[int, str] = {}  # the distinct records of this slice that could not be read
        notes: Counter[str] = Counter()
        for j, (position, index) in enumerate(zip(positions.tolist(), indices)):
            epoch, within = divmod(position, n)
            for shift in range(1, n + 1):
                try:
                    if index in self.unreadable:  # known bad in this process: do not decode it again
                        raise OSError(self.unreadable[index])
                    arr, item_notes, label = self._pixels(index)
                except ImageSettingError:
                    raise
                except Exception as err:  # noqa: BLE001 - an unreadable record is replaced, never fatal
                    failed[index] = self.unreadable.setdefault(index, str(err) or type(err).__name__)
                    if len(failed) > max(local_batch // 2, MIN_FAILURES_TO_STOP) or shift == n:
                        self._too_many_failures(step, failed, local_batch)
                    index = int(self._order.permutation(seed, epoch)[(within + shift) % n])
                    continue
                x[j] = arr
                labels[j] = label or 0
                notes.update(item_notes)
                break
        return RawBatch(
            torch.from_numpy(x), torch.from_numpy(labels) if self.use_labels else None, tuple(failed.items()),
            tuple(notes.items()),
        )

    def _too_many_failures(self, step: int, failed: dict[int, str], local_batch: int) -> None:
        reasons = list(failed.values())
        shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
        raise ValueError(
            f"{len(reasons)} different images met in a slice of {local_batch} at step {step} of {self.name} could not "
            f"be decoded ({shown}); the data are damaged: check or remove those files (`cmkit data prepare` lists "
            "every unreadable one in its manifest)"
        )

def _first_size(records: ImageRecords, channels: Channels, name: str) -> tuple[int, int]:
    """The height and width of the first readable record (``resize='none'`` without a resolution)."""
    reasons = []
    for index in range(min(len(records), 100)):
        try:
            arr, _ = image_pixels(records.read(index)[0], channels, None, "none")
        except Exception as err:  # noqa: BLE001 - an unreadable record: try the next
            reasons.append(str(err))
            continue
        return int(arr.shape[1]), int(arr.shape[2])
    raise ValueError(f"none of the first {len(reasons)} images of {name} could be read ({reasons[0]})")
