"""``.npz`` archives read without loading them: the arrays' shapes and dtypes from their headers, and the rows of
one array streamed a few at a time, so a 15 GB image archive never has to fit in memory.

Only plain (non-object) C-ordered arrays are streamed; nothing is unpickled.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Union

import numpy as np

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class NpyHeader:
    """What an array's ``.npy`` header says: its shape, dtype and memory order."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        """Bytes the whole array takes once loaded."""
        return math.prod(self.shape) * self.dtype.itemsize


def _read_header(fh: IO[bytes], where: str) -> NpyHeader:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version in ((2, 0), (3, 0)):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"{where}: unsupported .npy format version {version}; re-save it with numpy.savez")
    return NpyHeader(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran_order))


def _zip(path: PathLike) -> zipfile.ZipFile:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f".npz file not found: {p}")
    try:
        return zipfile.ZipFile(p)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{p} is not an .npz archive ({err}); write it with numpy.savez") from err


def npz_headers(path: PathLike) -> dict[str, NpyHeader]:
    """The header of every array in the ``.npz`` at ``path``, by key, without reading any data."""
    with _zip(path) as archive:
        headers = {}
        for name in archive.namelist():
            if name.endswith(".npy"):
                with archive.open(name) as fh:
                    headers[name[: -len(".npy")]] = _read_header(fh, f"{path}[{name}]")
        return headers


def iter_npz_rows(path: PathLike, key: str, rows: int) -> Iterator[np.ndarray]:
    """The array ``key`` of the ``.npz`` at ``path``, ``rows`` entries of its first axis at a time (the last chunk
    may be shorter); only one chunk is ever in memory."""
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    with _zip(path) as archive:
        with archive.open(f"{key}.npy") as fh:
            header = _read_header(fh, f"{path}[{key}]")
            if header.dtype.hasobject or header.fortran_order or not header.shape:
                raise ValueError(
                    f"{path}[{key}] must be a plain C-ordered array with a first axis to stream (got dtype "
                    f"{header.dtype}, shape {header.shape}, fortran_order={header.fortran_order}); re-save it with "
                    "numpy.savez(path, key=np.ascontiguousarray(array))"
                )
            row_bytes = math.prod(header.shape[1:]) * header.dtype.itemsize
            for start in range(0, header.shape[0], rows):
                n = min(rows, header.shape[0] - start)
                data = fh.read(n * row_bytes)
                if len(data) != n * row_bytes:
                    raise ValueError(f"{path}[{key}] ends early: its header promises {header.shape[0]} rows")
                yield np.frombuffer(data, dtype=header.dtype).reshape(n, *header.shape[1:])
