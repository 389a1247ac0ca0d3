"""Read EDM / EDM2 / ECT network snapshots (``network-snapshot-*.pkl``) without running any code from them.

Those projects save networks with ``pickle.dump`` of a dict (EDM and ECT: ``{"ema", "loss_fn", "augment_pipe",
"dataset_kwargs"}``; EDM2: a ``dnnlib.util.EasyDict`` with ``"ema"`` (float16), ``"encoder"``, ``"loss_fn"``,
``"dataset_kwargs"``). Their classes are decorated by ``torch_utils.persistence``, whose ``__reduce__`` pickles
each object as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {"type": "class",
"version": 6, "module_src": <the source of the class's whole module>, "class_name": ..., "state": <its __dict__>}``;
the constructor arguments sit in the state as ``_init_args`` / ``_init_kwargs``, the tensors in ``_parameters``
/ ``_buffers`` and the submodules in ``_modules``. Loading such a file with ``pickle.load`` ``exec``s
``module_src``: any code at all.

:func:`read_network_pickle` unpickles with :class:`SnapshotUnpickler`, whose ``find_class`` maps an explicit list
of globals (:data:`ALLOWED_GLOBALS`) to cmkit's own inert stand-ins and refuses every other one, naming it. The
persistence hook becomes a record: the source is kept as text (for its hash and diagnostics) and never executed;
the class is known only by its name, since the pickle records no module. Tensor storages are rebuilt from their
bytes by :mod:`cmkit.io.pickled_arrays`. The result is a :class:`NetworkSnapshot`: plain data and
:class:`RecordedObject` trees (class name, recorded constructor arguments, plain attributes, and a flat
``state_dict`` with the dotted names ``nn.Module.state_dict`` would give).
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Optional

import numpy as np
from torch import Tensor

from ..limits import format_bytes, require_memory
from .pickled_arrays import (
    NumpyArray,
    NumpyArrayType,
    NumpyDtype,
    PickledDataError,
    numpy_reconstruct,
    numpy_scalar,
    rebuild_parameter,
    rebuild_tensor,
    storage_from_legacy_bytes,
)

#: the one version of ``torch_utils.persistence`` that EDM, EDM2 and ECT write.
PERSISTENCE_VERSION = 6
#: deepest nesting of submodules and containers read (published networks nest about 5 deep).
MAX_DEPTH = 100
_WHAT = "an EDM / EDM2 / ECT network snapshot"
_FIX = (
    "cmkit reads network snapshots without running code from them; if the file is yours, save the network's "
    "weights with torch.save(net.state_dict(), path) or as .safetensors"
)


class SnapshotError(ValueError):
    """A file that is not a network snapshot cmkit can read safely (the message names the reason and the file)."""


class RefusedGlobal(SnapshotError):
    """The pickle names a global outside :data:`ALLOWED_GLOBALS`."""

    def __init__(self, module: str, name: str) -> None:
        self.global_name = f"{module}.{name}"
        super().__init__(
            f"the pickle needs the global {self.global_name}, which is not part of {_WHAT}, so it is not a "
            f"recognised snapshot (nothing from it was imported or run); {_FIX}"
        )


class _Call:
    """A stand-in function: callable by ``REDUCE``, immune to ``BUILD`` (no state, no attributes to set)."""

    __slots__ = ("_fn", "qualified_name")

    def __init__(self, fn: Any, qualified_name: str) -> None:
        self._fn = fn
        self.qualified_name = qualified_name

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise PickledDataError(f"the pickle tries to give state to the function {self.qualified_name}")


class PersistentStandIn:
    """What ``_reconstruct_persistent_obj(meta)`` yields here: the meta, checked, with the source as text."""

    __slots__ = ("class_name", "version", "source", "state")

    def __init__(self, class_name: str, version: int, source: str, state: dict[str, Any]) -> None:
        self.class_name, self.version, self.source, self.state = class_name, version, source, state

    def __setstate__(self, state: Any) -> None:
        raise PickledDataError(f"the persistent object {self.class_name} takes no state after it is made")


def reconstruct_persistent(meta: Any) -> PersistentStandIn:
    """Stands in for ``torch_utils.persistence._reconstruct_persistent_obj``: records ``meta``, never ``exec``s it."""
    keys = {"type", "version", "module_src", "class_name", "state"}
    if not isinstance(meta, dict) or set(meta) != keys:
        shown = sorted(map(str, meta)) if isinstance(meta, dict) else type(meta).__name__
        raise PickledDataError(f"a persistent object's meta must have the keys {sorted(keys)}, got {shown}")
    class_name, version, source, state = meta["class_name"], meta["version"], meta["module_src"], meta["state"]
    if meta["type"] != "class" or version != PERSISTENCE_VERSION:
        raise PickledDataError(
            f"unsupported persistent object (type {meta['type']!r:.30}, version {version!r:.30}); EDM, EDM2 and "
            f"ECT write type 'class', version {PERSISTENCE_VERSION}"
        )
    if not isinstance(class_name, str) or not class_name.isidentifier() or not isinstance(source, str):
        raise PickledDataError(f"a persistent object's class name {class_name!r:.80} or source is not text")
    state = {} if state is None else state
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise PickledDataError(f"the state of the persistent object {class_name} is not a dict of attributes")
    return PersistentStandIn(class_name, version, source, state)


class TorchModuleStandIn:
    """A plain ``torch.nn`` container (``ModuleDict`` ...): made by ``NEWOBJ``, given its ``__dict__`` by ``BUILD``."""

    module = ""
    class_name = ""
    __slots__ = ("state",)

    def __setstate__(self, state: Any) -> None:
        if getattr(self, "state", None) is not None or not isinstance(state, dict):
            raise PickledDataError(f"unsupported state for {self.module}.{self.class_name}")
        self.state = state


def _torch_container(module: str, name: str) -> type:
    return type(f"{name}StandIn", (TorchModuleStandIn,), {"module": module, "class_name": name, "__slots__": ()})


class EasyDictStandIn(dict):
    """``dnnlib.util.EasyDict``: a dict; its (empty) instance state is accepted and dropped."""

    def __setstate__(self, state: Any) -> None:
        if state:
            raise PickledDataError("a dnnlib EasyDict carries attributes besides its items")


def _encode_latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """Stands in for ``_codecs.encode`` as protocol 2 uses it: bytes written as a latin-1 string."""
    if not isinstance(text, str) or encoding != "latin1":
        raise PickledDataError("_codecs.encode is only read for bytes pickled as latin-1 text")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    calls = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): reconstruct_persistent,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): storage_from_legacy_bytes,
        ("_codecs", "encode"): _encode_latin1,
    }
    allowed: dict[tuple[str, str], Any] = {key: _Call(fn, ".".join(key)) for key, fn in calls.items()}
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(core, "_reconstruct")] = _Call(numpy_reconstruct, f"{core}._reconstruct")
        allowed[(core, "scalar")] = _Call(numpy_scalar, f"{core}.scalar")
    allowed[("numpy", "ndarray")] = NumpyArrayType()
    allowed[("numpy", "dtype")] = NumpyDtype
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    for builtins in ("builtins", "__builtin__"):  # protocol 2 writes Python 2's module name
        allowed[(builtins, "set")] = set
        allowed[(builtins, "frozenset")] = frozenset
    allowed[("dnnlib.util", "EasyDict")] = EasyDictStandIn
    for name in ("ModuleDict", "ModuleList", "Sequential"):
        allowed[("torch.nn.modules.container", name)] = _torch_container("torch.nn.modules.container", name)
    return allowed


#: every global a network snapshot may name, and the inert stand-in it becomes; any other is refused.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _allowed_globals()


class SnapshotUnpickler(pickle._Unpickler):  # noqa: SLF001 - the reference implementation, see below
    """An unpickler that resolves globals through :data:`ALLOWED_GLOBALS` only.

    It is Python's own pure-Python unpickler, not the C one: the C unpickler keeps its memo in an array sized by
    the largest index a file names, so a ten-byte file naming memo slot 2^28 makes it allocate and zero 4 GiB;
    this one keeps a dict. (A snapshot has a few thousand opcodes; its bytes are read in large blocks either way.)
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise RefusedGlobal(str(module), str(name)) from None

    def persistent_load(self, pid: Any) -> Any:
        raise PickledDataError("the pickle uses persistent ids, which a plain network snapshot never does")


@dataclass(frozen=True)
class RecordedObject:
    """One object of a snapshot, as recorded, inert.

    ``class_name`` is the class's name; ``module`` the module of a plain ``torch.nn`` container, and None for a
    persistent class, whose module the pickle records only as ``source`` text (never executed). ``init_args`` /
    ``init_kwargs`` are the constructor arguments as recorded (None when the object did not record them),
    ``attributes`` the other plain attributes (numbers, strings, containers, numpy arrays, tensors that are
    neither parameters nor buffers, nested records), ``state_dict`` the parameters and persistent buffers of it and
    its submodules under dotted names, and ``children`` its direct submodules (None where a slot is empty).
    """

    class_name: str
    module: Optional[str] = None
    source: Optional[str] = field(default=None, repr=False)
    init_args: Optional[tuple] = None
    init_kwargs: Optional[dict[str, Any]] = None
    attributes: dict[str, Any] = field(default_factory=dict, repr=False)
    state_dict: dict[str, Tensor] = field(default_factory=dict, repr=False)
    children: dict[str, Optional["RecordedObject"]] = field(default_factory=dict, repr=False)

    @property
    def source_sha256(self) -> Optional[str]:
        """SHA-256 of the recorded module source (to tell versions of the defining code apart)."""
        return None if self.source is None else hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    def child(self, path: str) -> "RecordedObject":
        """The submodule at the dotted ``path`` (e.g. ``"model"``), or a clear error."""
        node: RecordedObject = self
        for part in path.split("."):
            found = node.children.get(part)
            if found is None:
                raise SnapshotError(
                    f"{self.class_name} has no submodule {path!r}; its submodules are {sorted(self.children)}"
                )
            node = found
        return node


@dataclass(frozen=True)
class NetworkSnapshot:
    """A read snapshot: its top-level entries, with persistent objects as :class:`RecordedObject` trees."""

    path: Path
    entries: dict[str, Any]

    def network(self, key: str = "ema") -> RecordedObject:
        """The network stored under ``key`` (``"ema"`` in every published snapshot)."""
        value = self.entries.get(key)
        if not isinstance(value, RecordedObject) or not value.state_dict:
            found = ", ".join(f"{k} ({type(v).__name__})" for k, v in self.entries.items())
            raise SnapshotError(f"{self.path} holds no network under {key!r}; its entries are: {found}")
        return value


_MODULE_INTERNALS = frozenset({"training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_modules"})
_INIT_RECORD = ("_init_args", "_init_kwargs")


def _is_internal(name: str) -> bool:
    """nn.Module bookkeeping (hook tables and the like) that is no part of the recorded object."""
    return name in _MODULE_INTERNALS or name in _INIT_RECORD or (name.startswith("_") and "hook" in name)


class _TreeBuilder:
    """Turns the unpickled stand-ins into plain data and records; shared objects are converted once."""

    def __init__(self) -> None:
        self._done: dict[int, Any] = {}
        self._active: set[int] = set()

    def plain(self, value: Any, where: str, depth: int = 0) -> Any:
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes, Tensor, np.generic)):
            return value
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, NumpyArray):
            return value.value()
        if isinstance(value, NumpyDtype):
            return value.resolve()
        key = id(value)
        if key in self._done:
            return self._done[key]
        if key in self._active:
            raise PickledDataError(f"{where} contains itself")
        if depth > MAX_DEPTH:
            raise PickledDataError(f"{where} is nested more than {MAX_DEPTH} levels deep")
        self._active.add(key)
        try:
            out = self._convert(value, where, depth + 1)
        finally:
            self._active.discard(key)
        self._done[key] = out
        return out

    def _convert(self, value: Any, where: str, depth: int) -> Any:
        if isinstance(value, (PersistentStandIn, TorchModuleStandIn)):
            return self._record(value, where, depth)
        if isinstance(value, Mapping):
            return {
                self.plain(k, f"{where} key", depth): self.plain(v, f"{where}[{k!r}]", depth) for k, v in value.items()
            }
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [self.plain(v, f"{where}[{i}]", depth) for i, v in enumerate(value)]
            return items if isinstance(value, list) else type(value)(items)
        raise PickledDataError(f"{where} is a {type(value).__name__}, which a network snapshot does not hold")

    def _tensors(self, table: Any, where: str, skip: Any = ()) -> dict[str, Tensor]:
        if table is None:
            return {}
        if not isinstance(table, Mapping):
            raise PickledDataError(f"{where} is a {type(table).__name__}, not a table of tensors")
        out = {}
        for name, value in table.items():
            if value is None or name in skip:
                continue
            if not isinstance(name, str) or not isinstance(value, Tensor):
                raise PickledDataError(f"{where}[{name!r}] is a {type(value).__name__}, not a tensor")
            out[name] = value
        return out

    def _record(self, obj: Any, where: str, depth: int) -> RecordedObject:
        state = obj.state
        if state is None:
            raise PickledDataError(f"{where} ({obj.class_name}) was never given its state")
        non_persistent = state.get("_non_persistent_buffers_set") or ()
        state_dict = {
            **self._tensors(state.get("_parameters"), f"{where}._parameters"),
            **self._tensors(state.get("_buffers"), f"{where}._buffers", skip=non_persistent),
        }
        modules = state.get("_modules") or {}
        if not isinstance(modules, Mapping):
            raise PickledDataError(f"{where}._modules is a {type(modules).__name__}, not a table of submodules")
        children: dict[str, Optional[RecordedObject]] = {}
        for name, child in modules.items():
            if child is not None and not isinstance(child, (PersistentStandIn, TorchModuleStandIn)):
                raise PickledDataError(f"{where}.{name} is a {type(child).__name__}, not a recorded module")
            children[str(name)] = None if child is None else self.plain(child, f"{where}.{name}", depth)
        for name, child in children.items():
            if child is not None:
                state_dict.update({f"{name}.{k}": v for k, v in child.state_dict.items()})
        persistent = isinstance(obj, PersistentStandIn)
        init_args = self.plain(state.get("_init_args"), f"{where}._init_args", depth)
        init_kwargs = self.plain(state.get("_init_kwargs"), f"{where}._init_kwargs", depth)
        if not (init_args is None or isinstance(init_args, tuple)) or not (
            init_kwargs is None or (isinstance(init_kwargs, dict) and all(isinstance(k, str) for k in init_kwargs))
        ):
            raise PickledDataError(f"{where} recorded constructor arguments that are not a tuple and a dict")
        attributes = {k: self.plain(v, f"{where}.{k}", depth) for k, v in state.items() if not _is_internal(k)}
        return RecordedObject(
            class_name=obj.class_name,
            module=None if persistent else obj.module,
            source=obj.source if persistent else None,
            init_args=init_args,
            init_kwargs=init_kwargs,
            attributes=attributes,
            state_dict=state_dict,
            children=children,
        )


def _check_header(path: Path, f: BinaryIO) -> None:
    head = f.read(4)
    f.seek(0)
    if head.startswith(b"PK\x03\x04"):
        raise SnapshotError(
            f"{path} is a torch.save zip archive, not a network snapshot pickle: a state dict loads with "
            "cmkit.io.weights.load_state_dict (or `cmkit convert --checkpoint`); EDM's training-state-*.pt hold the "
            "whole module and are not read, use the network-snapshot-*.pkl written beside them"
        )
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        raise SnapshotError(f"{path} is not a pickle of protocol 2 or later, so it is not {_WHAT}")


def read_network_pickle(path: str | os.PathLike) -> NetworkSnapshot:
    """Read an EDM / EDM2 / ECT ``.pkl`` snapshot safely: nothing in it is imported or executed.

    Raises :class:`SnapshotError` for a file that needs any global outside :data:`ALLOWED_GLOBALS` (named in the
    message), a truncated or corrupt file, or a file larger than the memory it needs (its tensors and their
    pickled bytes are held at once: about twice its size).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"network snapshot not found: {p}")
    size = p.stat().st_size
    require_memory(
        2 * size,
        f"reading the network snapshot {p} ({format_bytes(size)}; its tensors and their pickled bytes at once)",
        "free memory, or read the snapshot on a machine with more",
    )
    with open(p, "rb") as f:
        _check_header(p, f)
        try:
            loaded = SnapshotUnpickler(f).load()
        except SnapshotError as err:
            raise SnapshotError(f"{p}: {err}") from None
        except PickledDataError as err:
            raise SnapshotError(f"{p} is not a readable network snapshot: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                OverflowError, UnicodeDecodeError, RecursionError, MemoryError) as err:  # fmt: skip
            raise SnapshotError(
                f"{p} is truncated or corrupt ({type(err).__name__}: {err}); download or copy it again"
            ) from None
        trailing = len(f.read(1))
    if trailing:
        raise SnapshotError(f"{p} has data after the end of its pickle, so it is not a single network snapshot")
    if not isinstance(loaded, Mapping) or not all(isinstance(k, str) for k in loaded):
        raise SnapshotError(f"{p} holds a {type(loaded).__name__}, not the dict of entries of {_WHAT}")
    builder = _TreeBuilder()
    try:
        entries = {key: builder.plain(value, key) for key, value in loaded.items()}
    except PickledDataError as err:
        raise SnapshotError(f"{p} is not a readable network snapshot: {err}") from None
    return NetworkSnapshot(path=p, entries=entries)
