"""Tensors and numpy arrays inside a plain ``pickle.dump``, rebuilt from their bytes without running code from the file.

``pickle.dump`` of a tensor (not ``torch.save``) calls ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, backward_hooks[, metadata])`` on load (``_rebuild_parameter(tensor, requires_grad,
backward_hooks)`` around it for a parameter), and the storage is ``torch.storage._load_from_bytes(blob)``, where
``blob`` is ``torch.save(storage, _use_new_zipfile_serialization=False)``: five pickles (the magic number, the
protocol version 1001, the system info, the storage as the persistent id ``("storage", torch.<Type>Storage, key,
location, numel, view)``, the list of keys) followed, for each key, by an int64 element count and the raw
little-endian elements. A numpy array is ``numpy._core.multiarray._reconstruct(ndarray, (0,), b"b")`` given the
state ``(version, shape, dtype, is_fortran, raw_bytes)``, a numpy scalar ``scalar(dtype, raw_bytes)``.

The functions here stand in for those globals: :func:`storage_from_legacy_bytes` reads the storage layout itself
(the storage type maps to a dtype through a fixed table; every count is checked against the bytes present before
anything is allocated), :func:`rebuild_tensor` checks the view against its storage, and the numpy stand-ins accept
plain numeric dtypes only (an object array would hold pickled objects). None of them is ``torch.load``: the bytes
never reach an unpickler that could call anything but :data:`STORAGE_TYPES`.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
import warnings
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

#: ``torch.save``'s legacy format: the first two pickles of every blob.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

#: torch's storage classes, as pickled by name, and the dtype of their elements.
STORAGE_TYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}  # fmt: skip

#: numpy dtype codes an array or scalar may have: booleans, integers, floats and complex numbers.
_NUMPY_TYPESTR = re.compile(r"^(b1|\?|[iu][1248]|f[248]|c(8|16))$")


class PickledDataError(ValueError):
    """An array or tensor record in a pickle that is malformed, or that asks for more than its bytes hold."""


class _Refuses:
    """Base of the stand-in objects: a pickle cannot give them state (``BUILD``) unless a subclass accepts it."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise PickledDataError(f"{type(self).__name__} takes no state, but the pickle gives it one")


class StorageType(_Refuses):
    """A ``torch.<Type>Storage`` name inside a storage blob: only its dtype is used."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype


class LoadedStorage:
    """A storage rebuilt from its bytes: a flat tensor of its dtype."""

    __slots__ = ("flat",)

    def __init__(self, flat: Tensor) -> None:
        self.flat = flat

    def __setstate__(self, state: Any) -> None:
        raise PickledDataError("a storage takes no state, but the pickle gives it one")


class _BlobUnpickler(pickle._Unpickler):  # noqa: SLF001 - a dict memo, see cmkit.io.snapshot_pickle
    """The small pickles of a storage blob: ``torch.<Type>Storage`` names and one persistent id, nothing else."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.saved_ids: list[tuple] = []

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_TYPES:
            return StorageType(name, STORAGE_TYPES[name])
        raise PickledDataError(f"a tensor storage names the global {module}.{name}, which is not a storage type")

    def persistent_load(self, pid: Any) -> Any:
        self.saved_ids.append(pid)
        return None


def _small_pickle(f: io.BytesIO) -> tuple[Any, list[tuple]]:
    unpickler = _BlobUnpickler(f)
    return unpickler.load(), unpickler.saved_ids


def _require_index(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PickledDataError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def storage_from_legacy_bytes(blob: Any) -> LoadedStorage:
    """The storage that ``torch.save(storage, _use_new_zipfile_serialization=False)`` wrote into ``blob``.

    Stands in for ``torch.storage._load_from_bytes``; refuses anything but one little-endian storage whose
    recorded size matches the bytes that follow it.
    """
    if not isinstance(blob, (bytes, bytearray)):
        raise PickledDataError(f"a tensor storage must be given as bytes, got {type(blob).__name__}")
    f = io.BytesIO(blob)
    try:
        magic, _ = _small_pickle(f)
        version, _ = _small_pickle(f)
        sys_info, _ = _small_pickle(f)
        if magic != LEGACY_MAGIC_NUMBER or version != LEGACY_PROTOCOL_VERSION:
            raise PickledDataError("a tensor storage does not start with torch.save's legacy header")
        if not isinstance(sys_info, Mapping) or sys_info.get("little_endian") is not True:
            raise PickledDataError("a tensor storage was written on a big-endian machine, which cmkit does not read")
        _, saved_ids = _small_pickle(f)
        keys, _ = _small_pickle(f)
    except (pickle.UnpicklingError, EOFError, IndexError, TypeError, AttributeError, struct.error) as err:
        raise PickledDataError(f"a tensor storage is truncated or corrupt ({err})") from err
    if len(saved_ids) != 1 or not isinstance(saved_ids[0], tuple) or len(saved_ids[0]) != 6:
        raise PickledDataError(f"a tensor storage must describe exactly one storage, got {saved_ids!r:.200}")
    kind, storage_type, key, _location, numel, view = saved_ids[0]
    if kind != "storage" or not isinstance(storage_type, StorageType) or view is not None:
        raise PickledDataError(f"unsupported tensor storage record {saved_ids[0]!r:.200} (storage views are not read)")
    if keys != [key]:
        raise PickledDataError(f"a tensor storage lists the keys {keys!r:.200}, expected [{key!r}]")
    numel = _require_index("a storage's element count", numel)
    header = f.read(8)
    if len(header) != 8 or struct.unpack("<q", header)[0] != numel:
        raise PickledDataError(f"a tensor storage's data does not start with its element count {numel}")
    start = f.tell()
    nbytes = numel * storage_type.dtype.itemsize
    if len(blob) - start != nbytes:
        raise PickledDataError(
            f"a tensor storage of {numel} {storage_type.dtype} elements needs {nbytes} bytes, but "
            f"{len(blob) - start} follow its header (truncated or corrupt)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable buffer": the bytes are copied at once
        raw = torch.frombuffer(blob, dtype=torch.uint8, count=nbytes, offset=start) if nbytes else None
    flat = raw.clone() if raw is not None else torch.empty(0, dtype=torch.uint8)
    return LoadedStorage(flat.view(storage_type.dtype))


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not isinstance(value, (tuple, list)):
        raise PickledDataError(f"a tensor's {name} must be a tuple of integers, got {value!r:.100}")
    return tuple(_require_index(f"a tensor's {name} entry", v) for v in value)


def rebuild_tensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Tensor:
    """A tensor viewing ``storage`` (stands in for ``torch._utils._rebuild_tensor_v2`` and ``_rebuild_tensor``).

    The view must lie inside the storage. A view of the whole storage shares it; any other view is copied, so
    no two returned tensors share memory unless the pickle itself shares one tensor.
    """
    if not isinstance(storage, LoadedStorage):
        raise PickledDataError(f"a tensor must be built on a storage, got {type(storage).__name__}")
    if backward_hooks:
        raise PickledDataError("a tensor in a network snapshot cannot carry backward hooks")
    offset = _require_index("a tensor's storage offset", storage_offset)
    shape, strides = _shape("size", size), _shape("stride", stride)
    if len(shape) != len(strides):
        raise PickledDataError(f"a tensor's size {shape} and stride {strides} differ in length")
    flat = storage.flat
    if math.prod(shape) == 0:
        return flat.new_empty(shape)
    extent = offset + sum((n - 1) * s for n, s in zip(shape, strides)) + 1
    if extent > flat.numel():
        raise PickledDataError(
            f"a tensor of size {shape}, stride {strides}, offset {offset} reaches element {extent - 1}, but its "
            f"storage has {flat.numel()} (truncated or corrupt)"
        )
    view = torch.as_strided(flat, shape, strides, offset)
    whole = offset == 0 and view.numel() == flat.numel() and view.is_contiguous()
    return view if whole else view.clone()


def rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None) -> Tensor:
    """A parameter's data as a plain tensor (stands in for ``torch._utils._rebuild_parameter[_with_state]``)."""
    if not isinstance(data, Tensor):
        raise PickledDataError(f"a parameter must wrap a tensor, got {type(data).__name__}")
    if backward_hooks:
        raise PickledDataError("a parameter in a network snapshot cannot carry backward hooks")
    return data


class NumpyArrayType(_Refuses):
    """``numpy.ndarray`` named in a pickle: only accepted as the first argument of :func:`numpy_reconstruct`."""

    __slots__ = ()


class NumpyDtype:
    """``numpy.dtype(code, align, copy)`` plus its pickled state, resolved to a plain numeric ``np.dtype``."""

    __slots__ = ("code", "byteorder")

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(code, str) or not _NUMPY_TYPESTR.match(code):
            raise PickledDataError(f"numpy dtype {code!r:.50} is not a plain numeric type (bool, int, float, complex)")
        self.code = code
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise PickledDataError(f"unsupported numpy dtype state {state!r:.100}")
        if any(part is not None for part in state[2:5]):
            raise PickledDataError("structured numpy dtypes (with fields or sub-arrays) are not read")
        self.byteorder = state[1]

    def resolve(self) -> np.dtype:
        return np.dtype(("" if self.byteorder in "|=" else self.byteorder) + self.code)


def _array_from_bytes(raw: Any, dtype: Any, shape: Sequence[int], fortran: bool = False) -> np.ndarray:
    if not isinstance(dtype, NumpyDtype):
        raise PickledDataError(f"a numpy array needs a numpy dtype, got {type(dtype).__name__}")
    if not isinstance(raw, (bytes, bytearray)):
        raise PickledDataError(f"a numpy array's data must be bytes, got {type(raw).__name__}")
    resolved = dtype.resolve()
    count = math.prod(shape)
    if len(raw) != count * resolved.itemsize:
        raise PickledDataError(f"a numpy array of shape {tuple(shape)} and dtype {resolved} has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=resolved, count=count).reshape(shape, order="F" if fortran else "C").copy()


class NumpyArray:
    """An array being unpickled: ``numpy_reconstruct`` makes it, ``BUILD`` gives its state, :meth:`value` reads it."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: Optional[np.ndarray] = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None or not isinstance(state, tuple) or len(state) != 5:
            raise PickledDataError(f"unsupported numpy array state {state!r:.100}")
        _version, shape, dtype, fortran, raw = state
        self.array = _array_from_bytes(raw, dtype, _shape("shape", shape), bool(fortran))

    def value(self) -> np.ndarray:
        if self.array is None:
            raise PickledDataError("a numpy array in the pickle was never given its data")
        return self.array


def numpy_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> NumpyArray:
    """Stands in for ``numpy._core.multiarray._reconstruct`` (also ``numpy.core``): an empty array to be filled."""
    if not isinstance(subtype, NumpyArrayType):
        raise PickledDataError(f"numpy's _reconstruct may only make an ndarray, got {type(subtype).__name__}")
    return NumpyArray()


def numpy_scalar(dtype: Any, raw: Any = None) -> np.generic:
    """Stands in for ``numpy._core.multiarray.scalar``: a numeric numpy scalar from its bytes."""
    return _array_from_bytes(raw, dtype, ())[()]
