"""Convolutions with kernels kept in oneDNN's own blocked layout for CPU inference.

An eager ``F.conv2d`` on CPU re-lays its kernel out into oneDNN's blocked format (VNNI-packed for bfloat16 AMX)
on every call. For the small feature maps of a UNet's lower levels that copy costs as much as the arithmetic:
measured on this project's 2-core AVX-512/AMX machine, a 768->768 3x3 convolution on an 8x8 map takes 3.5 ms
eagerly and 1.8 ms with a pre-packed kernel (bfloat16; float32 21 -> 10 ms), with bit-identical results. This is
the weight pre-packing ``torch.compile`` does under ``freezing``, done once per weight version in eager mode.

:func:`conv2d` uses a cached packed kernel when autograd and autocast are off, the tensors are float32 or
bfloat16 on a CPU with oneDNN, the input is channels-last and nothing is being traced (nor a JVP tangent); otherwise it is
``module(x)``. bfloat16 kernels are packed only where oneDNN runs its bf16 kernels on this CPU (AVX-512 BW/VL/DQ or
AVX-NE-CONVERT, and no ``ONEDNN_MAX_CPU_ISA`` cap below them; see :mod:`cmkit.hardware`): elsewhere, e.g. on
AVX2-only CPUs, the reorder refuses to run, so bf16 convolutions take the plain op. That is decided once, at
import. Should a packing call still fail on some CPU, packing for that dtype is switched off for the rest of
the process and the plain op is used. The cache is keyed on the weight's storage, version counter, dtype and the input shape, so
optimizer steps, ``.to()`` and ``load_state_dict`` invalidate it. It holds one packed copy of each kernel (the
weights' memory once more); :func:`drop_packed_weights` frees it.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn

from ..hardware import cpu_info
from .forward_ad import has_tangent

#: the two oneDNN entry points inductor uses for the same job; absent from builds without oneDNN
_AVAILABLE = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
)
#: dtypes whose kernels this CPU can pack, decided once per process (bf16 only where oneDNN's bf16 kernels run)
_PACKABLE: set[torch.dtype] = (
    ({torch.float32} | ({torch.bfloat16} if cpu_info().onednn_bf16 else set())) if _AVAILABLE else set()
)
#: module -> (key, source weight, packed kernel); weak, and outside the module so copies, pickles and state dicts
#: never see it.
_CACHE: "weakref.WeakKeyDictionary[nn.Conv2d, tuple[tuple[Any, ...], Tensor, Tensor]]" = weakref.WeakKeyDictionary()


def _can_pack(module: nn.Conv2d, x: Tensor) -> bool:
    w = module.weight
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")  # autocast picks the dtype per op: leave it to F.conv2d
        and x.dtype in _PACKABLE
        and w.dtype == x.dtype
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_scripting()
        and not has_tangent(x)  # oneDNN's packed convolution has no forward-mode derivative (torch.func.jvp)
        and torch.backends.mkldnn.enabled
    )


def _packed_weight(module: nn.Conv2d, x: Tensor) -> Tensor:
    w = module.weight.detach()  # shares storage and version counter with the parameter
    key: tuple[Any, ...] = (w.data_ptr(), w._version, w.dtype, tuple(x.shape))
    cached = _CACHE.get(module)
    if cached is not None and cached[0] == key:
        return cached[2]
    packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
        w.to_mkldnn(),
        list(module.padding),
        list(module.stride),
        list(module.dilation),
        module.groups,
        list(x.shape),
    )
    # keeping the source alive means its address cannot be reused by a new weight tensor while this entry exists
    _CACHE[module] = (key, w, packed)
    return packed


def packs(dtype: torch.dtype) -> bool:
    """Whether convolutions of ``dtype`` are pre-packed on this CPU (else they take the plain op)."""
    return dtype in _PACKABLE


def conv2d(module: nn.Conv2d, x: Tensor) -> Tensor:
    """``module(x)``; in CPU inference on channels-last input, with the kernel pre-packed once for oneDNN."""
    if not _can_pack(module, x):
        device = x.device.type
        if has_tangent(x) and torch.is_autocast_enabled(device):
            # under autocast a traced input may hold a bf16 primal with a float32 tangent (autocast casts primals,
            # not always tangents), which the convolution's forward derivative refuses: pass through float32 so
            # both are cast, and cast the weights ourselves with autocast off
            dtype = torch.get_autocast_dtype(device)
            bias = module.bias.to(dtype) if module.bias is not None else None
            with torch.autocast(device, enabled=False):
                return module._conv_forward(x.float().to(dtype), module.weight.to(dtype), bias)
        return module(x)
    try:
        weight = _packed_weight(module, x)
    except RuntimeError:  # a CPU oneDNN refuses for this dtype after all: use the plain op from now on
        _PACKABLE.discard(x.dtype)
        return module(x)
    bias = module.bias.detach() if module.bias is not None else None
    return torch.ops.mkldnn._convolution_pointwise(
        x,
        weight,
        bias,
        list(module.padding),
        list(module.stride),
        list(module.dilation),
        module.groups,
        "none",
        [],
        "",
    )


def drop_packed_weights(model: nn.Module) -> None:
    """Free the packed kernels cached on ``model``'s convolutions (they are rebuilt on the next inference call)."""
    for module in model.modules():
        _CACHE.pop(module, None)
