"""Pre-resized image data: ``cmkit data prepare`` writes it once, ``prepared:PATH`` reads it memory-mapped.

A prepared directory holds

* ``images.u8``: the pixels, uint8, C-ordered ``[N, C, R, R]`` with no header (``np.memmap(path, np.uint8,
  mode="r", shape=shape)`` reads it);
* ``labels.npy``: int64 class ids ``[N]`` (only when the source has classes);
* ``manifest.json``: the format name and version, ``shape``, ``class_names``, how it was made (source, resize,
  channels) and the records skipped as unreadable, each with its reason.

Image ``k`` is the ``k``-th readable record of the source, decoded by :func:`cmkit.data.pixels.image_pixels`,
so ``prepared:`` gives the batches of the source itself at the same resolution when no record was skipped.
The directory is written under a temporary name and renamed when complete: a crash leaves no directory that
looks prepared. Reading checks every size against the manifest before mapping anything.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from .indexed import ImageRecords
from .loader import RawBatch, StepImageSource
from .pixels import Channels, ResizeMode, check_options, image_pixels
from .source import EpochOrder

FORMAT = "cmkit-prepared-images"
VERSION = 1
MANIFEST_FILE = "manifest.json"
IMAGES_FILE = "images.u8"
LABELS_FILE = "labels.npy"
#: records decoded per task of the process pool.
CHUNK = 256


@dataclass
class _Chunk:
    pixels: np.ndarray  # uint8 [k, C, R, R] of the readable records, in order
    labels: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)


class _ChunkDecoder:
    """Decodes a range of records to pixels (called in the pool's worker processes, or in this one)."""

    def __init__(self, records: ImageRecords, channels: Channels, resolution: int, resize: ResizeMode) -> None:
        self.records, self.channels, self.resolution, self.resize = records, channels, resolution, resize

    def __call__(self, indices: range) -> _Chunk:
        chunk = _Chunk(np.empty((len(indices), self.channels, self.resolution, self.resolution), dtype=np.uint8))
        kept = 0
        for index in indices:
            try:
                image, label = self.records.read(index)
                chunk.pixels[kept], notes = image_pixels(image, self.channels, self.resolution, self.resize)
            except Exception as err:  # noqa: BLE001 - an unreadable record is listed, never fatal
                chunk.skipped.append((index, str(err) or type(err).__name__))
                continue
            kept += 1
            chunk.labels.append(-1 if label is None else int(label))
            chunk.notes.update(notes)
        chunk.pixels = chunk.pixels[:kept]
        return chunk


_POOL_DECODER: Optional[_ChunkDecoder] = None


def _init_pool_worker(decoder: _ChunkDecoder) -> None:
    global _POOL_DECODER
    _POOL_DECODER = decoder


def _decode_in_pool_worker(indices: range) -> _Chunk:
    assert _POOL_DECODER is not None
    return _POOL_DECODER(indices)


def _decoded_chunks(decoder: _ChunkDecoder, n: int, workers: int) -> Iterator[_Chunk]:
    """The chunks of records ``0..n-1`` in order, decoded by ``workers`` processes (0 or 1: this one)."""
    chunks = (range(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK))
    if workers <= 1:
        yield from map(decoder, chunks)
        return
    import multiprocessing

    with multiprocessing.get_context().Pool(workers, initializer=_init_pool_worker, initargs=(decoder,)) as pool:
        yield from pool.imap(_decode_in_pool_worker, chunks)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prepare_images(
    records: ImageRecords, out: str | os.PathLike, *, resolution: int, resize: ResizeMode = "crop",
    channels: Channels = 3, workers: int = 0, source: str = "", progress: bool = False,
) -> dict[str, Any]:
    """Decode every record to ``channels x resolution x resolution`` uint8 pixels and write a prepared directory.

    Unreadable records are skipped and listed in the manifest (returned). ``workers`` processes decode in
    parallel. ``out`` must not exist; it appears only once complete.
    """
    from .._validate import require_int

    check_options(resolution, resize, channels)
    if resize == "none":
        raise ValueError("prepared data have one size: pass resize 'crop' or 'stretch' with a resolution")
    require_int("resolution", resolution, 1, " pixels")
    workers = require_int("workers", workers, 0, " (decoding processes)", 1024)
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another output directory")
    n, row = len(records), channels * resolution * resolution
    parent = next(p for p in (out.parent, *out.parent.parents) if p.exists())
    if n * row > shutil.disk_usage(parent).free:
        raise ValueError(
            f"{n:,} images of {channels}x{resolution}x{resolution} need {n * row / 2**30:.2f} GiB, more than the "
            f"free space of {parent}; choose another output directory or a smaller resolution"
        )
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    bar = None
    try:
        tmp.mkdir(parents=True)
        labels = np.empty(n, dtype=np.int64)
        kept, skipped, notes = 0, [], Counter()
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="cmkit data prepare", unit="image", dynamic_ncols=True)
        with open(tmp / IMAGES_FILE, "wb") as fh:
            for chunk in _decoded_chunks(_ChunkDecoder(records, channels, resolution, resize), n, workers):
                fh.write(chunk.pixels.tobytes())
                labels[kept : kept + len(chunk.labels)] = chunk.labels
                kept += len(chunk.labels)
                skipped.extend(chunk.skipped)
                notes.update(chunk.notes)
                if bar is not None:
                    bar.update(len(chunk.labels) + len(chunk.skipped))
            fh.flush()
            os.fsync(fh.fileno())
        if kept == 0:
            raise ValueError(f"none of the {n} images of {source or records!r} could be read ({skipped[0][1]})")
        labelled = bool(records.class_names)
        if labelled:
            np.save(tmp / LABELS_FILE, labels[:kept])
        manifest = {
            "format": FORMAT, "version": VERSION, "shape": [kept, channels, resolution, resolution], "dtype": "uint8",
            "images": IMAGES_FILE, "labels": LABELS_FILE if labelled else None,
            "class_names": list(records.class_names) if labelled else [],
            "source": source, "source_records": n, "resize": resize, "channels": channels,
            "skipped": [{"record": int(i), "reason": reason} for i, reason in skipped],
            "decoder_notes": dict(notes),
        }
        with open(tmp / MANIFEST_FILE, "w") as fh:
            fh.write(json.dumps(manifest, indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        os.rename(tmp, out)
        _fsync_dir(out.parent)
        return manifest
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The checked manifest of the prepared directory ``path`` (every file size matches it)."""
    root = Path(path).expanduser()
    fix = f"make it with `cmkit data prepare SRC {root} --resolution R`"
    if not root.is_dir():
        raise FileNotFoundError(f"prepared data {root} does not exist (or is not a directory); {fix}")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ValueError(f"{root} is not a prepared data directory (no {MANIFEST_FILE}); {fix}")
    if manifest_path.stat().st_size > 1 << 30:
        raise ValueError(f"{manifest_path} is over 1 GiB: not a cmkit manifest")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{manifest_path} is not valid JSON ({err}); prepare the data again") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} is not a cmkit prepared-data manifest; {fix}")
    if manifest.get("version") != VERSION:
        raise ValueError(
            f"{root} is prepared data version {manifest.get('version')!r}; this cmkit reads version {VERSION}: prepare it again"
        )
    shape = manifest.get("shape")
    names = manifest.get("class_names")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(v, int) and v >= 1 for v in shape)
            or shape[1] not in (1, 3) or shape[2] != shape[3] or not isinstance(names, list)):
        raise ValueError(f"{manifest_path} is damaged (shape {shape!r}); prepare the data again")
    images = root / IMAGES_FILE
    expected = int(np.prod(shape, dtype=object))
    actual = images.stat().st_size if images.is_file() else None
    if actual != expected:
        what = "is missing" if actual is None else f"has {actual:,} bytes"
        raise ValueError(
            f"{images} {what}, but the manifest says {' x '.join(map(str, shape))} = {expected:,}: the prepared data "
            "are truncated or damaged; prepare them again"
        )
    return manifest


def _read_labels(root: Path, n: int, num_classes: int) -> np.ndarray:
    path = root / LABELS_FILE
    try:
        labels = np.load(path, mmap_mode="r", allow_pickle=False)  # maps the header's shape: nothing allocated yet
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is missing or damaged ({err}); prepare the data again") from err
    if labels.shape != (n,) or labels.dtype != np.int64:
        raise ValueError(f"{path} holds {labels.dtype} {labels.shape}, not int64 ({n},); prepare the data again")
    labels = np.array(labels)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path} holds class ids outside 0..{num_classes - 1}; prepare the data again")
    return labels


class PreparedSource(StepImageSource):
    """Prepared data (``prepared:PATH``) as a :class:`~cmkit.data.source.DataSource`, memory-mapped per process.

    ``resolution`` and ``channels``, when given, must match the prepared ones. ``class_labels``: None uses the
    prepared labels when there are any, False ignores them, True requires them.
    """

    def __init__(
        self, path: str | os.PathLike, flip: bool = False, class_labels: Optional[bool] = None,
        resolution: Optional[int] = None, channels: Optional[int] = None,
    ) -> None:
        self.root = Path(path).expanduser()
        manifest = read_manifest(self.root)
        self.shape: tuple[int, int, int, int] = tuple(manifest["shape"])  # type: ignore[assignment]
        n, c, r, _ = self.shape
        again = f"; prepare the data again at the size you want (cmkit data prepare SRC OUT --resolution {resolution})"
        if resolution is not None and resolution != r:
            raise ValueError(f"{self.root} is prepared at resolution {r}, not {resolution}; drop --resolution{again}")
        if channels is not None and channels != c:
            raise ValueError(f"{self.root} is prepared with {c} channel(s), not {channels}; drop --channels or prepare again")
        names = [str(v) for v in manifest["class_names"]]
        if class_labels and not manifest.get("labels"):
            raise ValueError(f"class labels were requested but {self.root} was prepared without classes")
        use_labels = bool(manifest.get("labels")) and class_labels is not False
        self.labels = _read_labels(self.root, n, len(names)) if use_labels else None
        self._order = EpochOrder(n)
        self._images: Optional[np.memmap] = None
        self._pid = -1
        super().__init__((c, r, r), names if use_labels else [], flip, f"prepared:{self.root}")

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None, "_pid": -1}  # each process maps the file itself

    def images(self) -> np.memmap:
        """The pixels ``[N, C, R, R]``, memory-mapped read-only (once per process)."""
        if self._images is None or self._pid != os.getpid():
            self._images = np.memmap(self.root / IMAGES_FILE, dtype=np.uint8, mode="r", shape=self.shape)
            self._pid = os.getpid()
        return self._images

    def read_slice(self, seed: int, step: int, global_batch: int, offset: int, local_batch: int) -> RawBatch:
        """The rows of the slice's samples, read from the mapped file."""
        idx = self._order.at(seed, self._order.positions(step, global_batch, offset, local_batch)).numpy()
        x = torch.from_numpy(np.ascontiguousarray(self.images()[idx]))
        return RawBatch(x, torch.from_numpy(self.labels[idx]) if self.labels is not None else None)

