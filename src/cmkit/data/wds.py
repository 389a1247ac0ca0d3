"""WebDataset tar shards as random-access image records (``wds:PATTERN``), indexed once by a tar header scan.

Layout (WebDataset's convention): a sample is the run of consecutive tar members that share a key, the member
path up to the first dot of its file name (``train/n01440764_10026.jpg`` and ``train/n01440764_10026.cls`` form
sample ``train/n01440764_10026``). Its image is the first of its ``jpg``, ``jpeg``, ``png``, ``webp``, ``ppm``
members; its class id the first that parses of ``cls`` (an integer as text), ``txt`` (the same; a caption is no
label) and ``json`` (an integer under ``"label"`` or ``"cls"``). Other members are ignored.

``PATTERN`` names uncompressed local shards: brace ranges and lists (``shards-{000000..000099}.tar``,
``{train,extra}.tar``), a glob (``shards/*.tar``, sorted), or a ``.txt`` / ``.list`` / ``.lst`` file listing one
shard (or pattern) per line, relative to the file. Samples are numbered in that shard order and, inside a shard,
in tar order.

Why an index, not a stream: the shards are scanned once (``tarfile`` reads each member's 512-byte header and
seeks past its data; only the tiny label members are read), giving every sample's image offset and size and its
label. The shards then *are* random-access records, read by ``IndexedImageSource`` exactly like every other
source: step ``k``'s global batch depends on ``(seed, k)`` alone, whatever the number of processes, DataLoader
workers, or a resume. Each process reads only its slice of each batch and each worker its share of that slice
(a seek and one read per image), so shards are not assigned to ranks or workers at all. The standard library
suffices for this; the ``webdataset`` package streams shards, which would make batches depend on the process and
worker counts. The cost: the scan parses one header per member in Python (about 0.1-0.2 ms per two-member
sample when the files are in the page cache: a few minutes, once, for ImageNet's 1.28 M images; more when every
header is a disk seek) and training reads single images at random offsets, which suits local disks and SSDs, not
object stores. The index of each shard is cached (keyed by its
path, size and modification time) so later runs and the other ranks skip the scan; shards must not change
during a run. Compressed shards (``.tar.gz``) cannot be read at an offset and are refused.

Bad data never stops a run: samples with no image member, or with no label when labels are used, are left out and
counted in one warning, as is the unreadable tail of a truncated shard; an image that cannot be decoded makes
``read`` raise ``ValueError`` for the caller to skip and count.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from .._validate import require_int

#: image member extensions, in order of preference when a sample has several.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm")
#: label member extensions, tried in this order.
LABEL_EXTENSIONS = ("cls", "txt", "json")
#: label members larger than this are not class ids and are not read.
MAX_LABEL_BYTES = 1 << 16
#: a pattern naming a file with one of these suffixes is a list of shards, one per line.
LIST_SUFFIXES = (".txt", ".list", ".lst")
#: bump when the cached index format or the scan rules change.
INDEX_VERSION = 1
MAX_CLASSES = 1_000_000

_KEY_EXT = re.compile(r"^((?:.*/)?[^./][^.]*)\.([^/]+)$")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
#: the end of a tar archive: two zero blocks.
_END_OF_ARCHIVE = bytes(1024)


def expand_braces(pattern: str) -> list[str]:
    """``pattern`` with each ``{a..b}`` (an inclusive integer range, zero-padded like ``a``) or ``{x,y}`` expanded.

    Groups expand left to right into their product: ``s{00..01}.{a,b}`` -> ``s00.a, s00.b, s01.a, s01.b``. A brace
    holding neither a range nor a comma stays as written.
    """
    parts: list[list[str]] = []
    position = 0
    for match in _BRACE.finditer(pattern):
        parts.append([pattern[position : match.start()]])
        body = match.group(1)
        numeric = _RANGE.match(body)
        if numeric:
            first, last = int(numeric.group(1)), int(numeric.group(2))
            width = len(numeric.group(1)) if numeric.group(1).lstrip("-").startswith("0") else 0
            step = 1 if last >= first else -1
            parts.append([str(n).zfill(width) for n in range(first, last + step, step)])
        elif "," in body:
            parts.append(body.split(","))
        else:
            parts.append([match.group(0)])
        position = match.end()
    parts.append([pattern[position:]])
    return ["".join(choice) for choice in product(*parts)]


def _expand(pattern: str, base: Path, allow_list: bool) -> list[Path]:
    found: list[Path] = []
    missing: list[str] = []
    for piece in expand_braces(pattern):
        path = Path(os.path.expanduser(piece))
        path = path if path.is_absolute() else base / path
        if _GLOB_CHARS.search(piece) and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if os.path.isfile(p))
            if not matches:
                missing.append(piece)
            found.extend(matches)
        elif path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; name its shards, e.g. wds:{path}/*.tar")
        elif not path.exists():
            missing.append(piece)
        elif allow_list and path.suffix in LIST_SUFFIXES:
            found.extend(_listed_shards(path))
        else:
            found.append(path)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} shard(s) of wds:{pattern} do not exist (first: {missing[0]}); check the pattern, e.g. "
            "wds:/data/shards-{000000..000099}.tar, /data/shards/*.tar, or a text file listing the shards"
        )
    return found


def _listed_shards(list_file: Path) -> list[Path]:
    lines = [line.strip() for line in list_file.read_text().splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise ValueError(f"the shard list {list_file} names no shards; list one .tar path per line")
    return [path for entry in entries for path in _expand(entry, list_file.parent, allow_list=False)]


def shard_paths(pattern: str) -> list[Path]:
    """The local shard files ``wds:PATTERN`` names, in sample order (a brace range, a sorted glob, or a list file)."""
    pattern = pattern.strip()
    if not pattern:
        raise ValueError("wds data needs a shard pattern, e.g. wds:/data/shards-{000000..000099}.tar")
    if "://" in pattern or pattern.startswith("pipe:"):
        raise ValueError(f"wds:{pattern} is not a local file; wds: reads local shards only, copy them here first")
    shards = _expand(pattern, Path.cwd(), allow_list=True)
    seen: set[Path] = set()
    for shard in shards:
        resolved = shard.resolve()
        if resolved in seen:
            raise ValueError(f"wds:{pattern} names {shard} twice; its samples would be read twice, list it once")
        seen.add(resolved)
    return shards


@dataclass(frozen=True)
class ShardIndex:
    """One shard's samples (image byte offset, byte size, class id or -1) and what its scan left out."""

    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    no_image: int = 0
    damage: str = ""  # why the end of the shard could not be read ("" when it is whole)


def _label(ext: str, data: bytes) -> Optional[int]:
    try:
        value = json.loads(data) if ext == "json" else int(data.decode("utf-8").strip())
    except (ValueError, UnicodeDecodeError):
        return None
    if ext == "json":
        value = next((value[k] for k in ("label", "cls") if isinstance(value, dict) and k in value), None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _check_uncompressed(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(6)
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise ValueError(
                f"{path} is {kind}-compressed; a compressed tar cannot be read at an offset, so decompress the shards "
                "(e.g. gunzip) and pass the .tar files"
            )


def scan_shard(path: str | os.PathLike) -> ShardIndex:
    """Index one uncompressed tar shard: one header read per member, plus the label members' few bytes."""
    path = Path(path)
    _check_uncompressed(path)
    file_size = path.stat().st_size
    offsets: list[int] = []
    sizes: list[int] = []
    labels: list[int] = []
    no_image = 0
    damage = ""
    key: Optional[str] = None
    image: Optional[tuple[int, int, int]] = None  # (preference rank, offset, size)
    found_labels: dict[str, int] = {}

    def finish_sample() -> None:
        nonlocal no_image
        if key is None:
            return
        if image is None:
            no_image += 1
            return
        offsets.append(image[1])
        sizes.append(image[2])
        labels.append(next((found_labels[e] for e in LABEL_EXTENSIONS if e in found_labels), -1))

    try:
        tar = tarfile.open(path, mode="r:")
    except tarfile.TarError as err:
        raise ValueError(f"{path} is not a tar file ({err}); wds: reads uncompressed .tar shards") from err
    data_end = 0  # where the last member's data (padded to 512-byte blocks) ends
    with tar:
        try:
            for member in tar:
                end = member.offset_data + member.size
                if end > file_size:
                    damage = f"member {member.name} ends at byte {end:,} but the file has {file_size:,}"
                    break
                data_end = -(-end // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                match = _KEY_EXT.match(member.name)
                if not member.isreg() or match is None:
                    continue
                member_key, ext = match.group(1), match.group(2).lower()
                if member_key != key:
                    finish_sample()
                    key, image, found_labels = member_key, None, {}
                if ext in IMAGE_EXTENSIONS:
                    rank = IMAGE_EXTENSIONS.index(ext)
                    if image is None or rank < image[0]:
                        image = (rank, member.offset_data, member.size)
                elif ext in LABEL_EXTENSIONS and member.size <= MAX_LABEL_BYTES and ext not in found_labels:
                    label = _label(ext, tar.extractfile(member).read())
                    if label is not None:
                        found_labels[ext] = label
        except tarfile.TarError as err:
            damage = f"{type(err).__name__}: {err} after byte {data_end:,}"
    if not damage:
        with open(path, "rb") as fh:
            fh.seek(data_end)
            if fh.read(len(_END_OF_ARCHIVE)) != _END_OF_ARCHIVE:
                damage = f"no end-of-archive marker after byte {data_end:,} (the file is cut short or corrupt)"
    finish_sample()
    arrays = (np.array(values, np.int64) for values in (offsets, sizes, labels))
    return ShardIndex(*arrays, no_image=no_image, damage=damage)


def default_index_cache() -> Path:
    """Where shard indexes are cached: ``$XDG_CACHE_HOME/cmkit/wds-index`` (``~/.cache/cmkit/wds-index``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cmkit" / "wds-index"


def _cache_file(cache_dir: Path, shard: Path) -> Path:
    stat = shard.stat()
    key = f"{INDEX_VERSION}\0{shard.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npz"


def _load_cached(file: Path, shard: Path) -> Optional[ShardIndex]:
    """The cached index in ``file`` when it is well formed and fits ``shard``; else None (it is rebuilt)."""
    try:
        with np.load(file, allow_pickle=False) as saved:
            arrays = [saved[name] for name in ("offsets", "sizes", "labels")]
            index = ShardIndex(*arrays, no_image=int(saved["no_image"]), damage=str(saved["damage"]))
    except Exception:  # noqa: BLE001 - a damaged cache file is never trusted, only rebuilt
        return None
    n = len(arrays[0]) if arrays[0].ndim == 1 else -1
    if n < 0 or any(a.dtype != np.int64 or a.shape != (n,) for a in arrays):
        return None
    return index if n == 0 or int((index.offsets + index.sizes).max()) <= shard.stat().st_size else None


def _save_cached(file: Path, index: ShardIndex) -> None:
    from ..io.atomic import atomic_path

    with atomic_path(file) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, offsets=index.offsets, sizes=index.sizes, labels=index.labels, no_image=index.no_image,
                 damage=np.str_(index.damage))


def index_shards(shards: list[Path], cache_dir: Optional[Path]) -> list[ShardIndex]:
    """The index of each shard: from ``cache_dir`` when it holds one for the shard's size and modification time,
    else scanned (several shards at once) and cached."""
    indexes: dict[Path, ShardIndex] = {}
    if cache_dir is not None:
        for shard in shards:
            file = _cache_file(cache_dir, shard)
            cached = _load_cached(file, shard) if file.exists() else None
            if cached is not None:
                indexes[shard] = cached
    todo = [shard for shard in shards if shard not in indexes]
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            indexes.update(zip(todo, pool.map(scan_shard, todo)))
    failures = []
    for shard in todo if cache_dir is not None else []:
        try:
            _save_cached(_cache_file(cache_dir, shard), indexes[shard])
        except OSError as err:
            failures.append(f"{shard}: {err}")
    if failures:
        warnings.warn(
            f"could not cache the index of {len(failures)} shard(s) in {cache_dir} (first: {failures[0]}); they "
            "will be scanned again next run; pass a writable index cache folder",
            stacklevel=3,
        )
    return [indexes[shard] for shard in shards]


class WdsImageRecords:
    """The samples of WebDataset tar shards as random-access records (``ImageRecords``: exact like every source).

    ``class_labels`` is ``None`` (labels when any sample has one), ``False`` (ignore them) or ``True`` (require
    them). ``index_cache`` is ``True`` (the default folder, :func:`default_index_cache`), ``False`` (scan every
    time) or a folder.
    """

    def __init__(
        self,
        pattern: str,
        *,
        class_labels: Optional[bool] = None,
        index_cache: Union[bool, str, os.PathLike] = True,
    ) -> None:
        self.pattern = pattern
        shards = shard_paths(pattern)
        cache_dir = default_index_cache() if index_cache is True else (Path(index_cache) if index_cache else None)
        indexes = index_shards(shards, cache_dir)
        self.shards = [str(shard) for shard in shards]
        labels = np.concatenate([ix.labels for ix in indexes])
        shard_ids = np.concatenate([np.full(len(ix.offsets), i, np.int32) for i, ix in enumerate(indexes)])
        offsets = np.concatenate([ix.offsets for ix in indexes])
        sizes = np.concatenate([ix.sizes for ix in indexes])
        labelled = labels >= 0
        use_labels = bool(labelled.any()) if class_labels is None else bool(class_labels)
        if use_labels and not labelled.any():
            raise ValueError(
                f"class labels were requested but no sample of wds:{pattern} has a cls, txt or json label holding a "
                "class id; add them, or train unconditionally"
            )
        #: samples left out, by reason.
        self.skipped = {"no image": sum(ix.no_image for ix in indexes), "no label": 0}
        if use_labels:
            self.skipped["no label"] = int((~labelled).sum())
            shard_ids, offsets, sizes, labels = (a[labelled] for a in (shard_ids, offsets, sizes, labels))
        if len(offsets) == 0:
            raise ValueError(
                f"wds:{pattern} holds no sample with an image ({', '.join(IMAGE_EXTENSIONS)} member) in its "
                f"{len(shards)} shard(s); check the shards' member names (key.jpg, key.cls, ...)"
            )
        largest = int(labels.max()) if use_labels else -1
        if largest >= MAX_CLASSES:
            raise ValueError(f"wds:{pattern} has labels up to {largest:,}, not class ids 0..K-1; map them to 0..K-1")
        self.class_names = [str(c) for c in range(largest + 1)]
        self._shard_ids, self._offsets, self._sizes = shard_ids, offsets, sizes
        self._labels = labels.astype(np.int32) if use_labels else None
        self._warn_skipped(indexes)

    def _warn_skipped(self, indexes: list[ShardIndex]) -> None:
        damaged = [(shard, ix.damage) for shard, ix in zip(self.shards, indexes) if ix.damage]
        counts = [f"{n} sample(s) with {reason}" for reason, n in self.skipped.items() if n]
        if counts:
            warnings.warn(f"wds:{self.pattern}: left out {' and '.join(counts)}; kept {len(self)}", stacklevel=3)
        if damaged:
            warnings.warn(
                f"wds:{self.pattern}: {len(damaged)} shard(s) are damaged and were read up to the damage "
                f"(first: {damaged[0][0]}: {damaged[0][1]}); rewrite them to use all their samples",
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self._offsets)

    def read(self, index: int) -> tuple[Image.Image, Optional[int]]:
        """Sample ``index``: its decoded image and class id (``None`` if unlabelled); a bad image raises ValueError."""
        index = require_int("index", index, 0, allow_float=False)
        if index >= len(self):
            raise IndexError(f"sample {index} is out of range: wds:{self.pattern} holds {len(self)}")
        shard, offset, size = self.shards[self._shard_ids[index]], int(self._offsets[index]), int(self._sizes[index])
        where = f"sample {index} (the image at byte {offset:,} of {shard})"
        with open(shard, "rb") as fh:  # no file stays open: the records pickle as plain arrays into each worker
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise ValueError(f"{where} is cut short: {shard} changed after it was indexed")
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as err:  # noqa: BLE001 - any decoding failure is a bad sample, for the caller to count
            raise ValueError(f"{where} cannot be decoded ({type(err).__name__}: {err})") from err
        return image, None if self._labels is None else int(self._labels[index])


def build_wds_records(
    pattern: str, *, class_labels: Optional[bool] = None, index_cache: Union[bool, str, os.PathLike] = True
) -> WdsImageRecords:
    """The records of ``wds:PATTERN`` (what ``build_dataset`` wraps in an ``IndexedImageSource``)."""
    return WdsImageRecords(pattern, class_labels=class_labels, index_cache=index_cache)
