"""A simulated accelerator for CPU-only test machines: the ``meta`` device plus CUDA's and MPS's device rules.

Tensors on the ``meta`` device carry shapes, dtypes and devices but no data, and PyTorch already refuses most
ops that mix a meta tensor with a CPU tensor, as it does for CUDA. Three rules that CUDA (or MPS) enforce and
meta does not are added by :class:`AcceleratorRules`, a dispatch mode:

* a tensor on one device indexed by indices on another (CUDA allows only CPU indices into device tensors);
* a random draw on one device from a generator of another (CUDA refuses a CPU generator for device tensors);
* with ``mps=True``, any float64 tensor on the simulated device (MPS has no float64).

Reading a device value back to Python (``float(t)``, ``bool(t)``) gives a placeholder (1, or True), and meta
tensors cannot be copied to the CPU, so only code whose control flow does not hang on device values runs under
it: the training objectives, the samplers and the editing algorithm, not the pipeline (which looks timesteps
up with ``nonzero``). It checks where tensors live, never their values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SIMULATED = torch.device("meta")

#: ops that move data between devices on purpose.
_TRANSFERS = {
    torch.ops.aten._to_copy.default,
    torch.ops.aten.copy_.default,
    torch.ops.aten.lift_fresh.default,
    torch.ops.aten._local_scalar_dense.default,
}
#: ops whose index arguments may live on the CPU when the indexed tensor is on the device.
_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default}


class DeviceRuleError(RuntimeError):
    """An op that would fail on a real accelerator."""


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class AcceleratorRules(TorchDispatchMode):
    """Enforce the device rules of CUDA (and, with ``mps=True``, MPS) on code running on the ``meta`` device."""

    def __init__(self, mps: bool = False) -> None:
        super().__init__()
        self.mps = mps

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device == SIMULATED:
            return True if args[0].dtype == torch.bool else 1
        if func in _INDEXING:
            self._check_indexing(func, args)
        elif func not in _TRANSFERS:
            self._check_one_device(func, args, kwargs)
        out = func(*args, **kwargs)
        self._check_generator(func, kwargs, out)
        if self.mps:
            for t in _tensors(out):
                if t.device == SIMULATED and t.dtype == torch.float64:
                    raise DeviceRuleError(f"{func} makes a float64 tensor on the device; MPS has no float64")
        return out

    @staticmethod
    def _check_indexing(func: Any, args: tuple) -> None:
        target = args[0]
        for index in _tensors(args[1]):
            if index.device != target.device and index.device.type != "cpu":
                raise DeviceRuleError(
                    f"{func}: a tensor on {target.device} indexed by indices on {index.device}; CUDA allows only "
                    "indices on the CPU or on the indexed tensor's device"
                )

    @staticmethod
    def _check_one_device(func: Any, args: tuple, kwargs: dict) -> None:
        # 0-d CPU tensors are scalars, which every device accepts
        devices = {t.device for t in _tensors((args, kwargs)) if not (t.ndim == 0 and t.device.type == "cpu")}
        if len(devices) > 1:
            raise DeviceRuleError(f"{func} mixes tensors on {sorted(map(str, devices))}")

    @staticmethod
    def _check_generator(func: Any, kwargs: dict, out: Any) -> None:
        generator = kwargs.get("generator")
        if generator is None:
            return
        for t in _tensors(out):
            if t.device.type != generator.device.type:
                raise DeviceRuleError(f"{func} draws a tensor on {t.device} from a generator on {generator.device}")
