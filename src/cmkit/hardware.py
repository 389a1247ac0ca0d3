"""What this machine computes fast: the CPU's instruction sets as PyTorch will use them, and the dtype to pick.

CPUs differ in what they compute natively, and so do the fast paths that pay off on them:

- **bfloat16 is faster than float32 only with AMX** (Intel Sapphire Rapids and later; oneDNN ISA
  ``AVX512_CORE_AMX`` and up), whose tile units multiply bf16 matrices at several times the float32 rate. AVX-512-BF16
  alone is not enough: on this project's AVX-512-BF16 Xeon without AMX a 2048x2048 bf16 matmul ran at 171
  GFLOP/s against 330 in float32, and the ImageNet-64 UNet took 1.39 s in bf16 against 0.81 s in float32 (batch 1).
  On AVX2-only CPUs (many AMD EPYC/Ryzen, older Intel) bf16 is emulated and about 7x *slower* than float32, and
  oneDNN's bf16 weight reorder refuses to run at all.
- **oneDNN's bf16 kernels** (the pre-packed convolutions of :mod:`cmkit.models.prepack`) need AVX-512
  BW/VL/DQ or AVX-NE-CONVERT; PyTorch reports this as ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``.

Both answers respect the caps a user or a test sets in the environment: oneDNN's ``ONEDNN_MAX_CPU_ISA`` (or its
older name ``DNNL_MAX_CPU_ISA``) and ATen's ``ATEN_CPU_CAPABILITY`` (MKL's matrix products take
``MKL_ENABLE_INSTRUCTIONS``; to act as an AVX2-only CPU, set all three). They are read once per process (oneDNN reads
its cap once too), so the fast paths cost nothing per call. :func:`fastest_dtype` turns them into the dtype that
``--dtype auto`` picks: bf16 on CPUs with AMX, float32 on the others, fp16 on CUDA and MPS.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, replace
from typing import Optional, Union

import torch

#: oneDNN's CPU ISA levels, lowest first (the names ``ONEDNN_MAX_CPU_ISA`` accepts; aliases of a rank joined by |).
ONEDNN_ISA_ORDER: tuple[str, ...] = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16",
    "AVX512_CORE_FP16|AVX10_1_512", "AVX512_CORE_AMX|AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16|AVX10_1_512_AMX_FP16",
    "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL|DEFAULT",
)
#: the lowest oneDNN ISA whose bfloat16 matrix units beat float32 (AMX tiles)
NATIVE_BF16_ISA = "AVX512_CORE_AMX"

DeviceLike = Union[str, torch.device]
DTypeLike = Union[torch.dtype, str, None]

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def onednn_isa_rank(name: str) -> Optional[int]:
    """The rank of a oneDNN ISA name in :data:`ONEDNN_ISA_ORDER` (case-insensitive), or None if unknown."""
    upper = name.strip().upper()
    for rank, names in enumerate(ONEDNN_ISA_ORDER):
        if upper in names.split("|"):
            return rank
    return None


def _onednn_isa_cap() -> Optional[str]:
    value = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip() or os.environ.get("DNNL_MAX_CPU_ISA", "").strip()
    return value.upper() or None


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@dataclass(frozen=True)
class CPUInfo:
    """The CPU as PyTorch sees it in this process (caps from the environment included)."""

    model_name: str
    #: ATen's vectorisation level for elementwise kernels: "AVX512", "AVX2", "DEFAULT", "ZVECTOR", ...
    aten_capability: str
    #: ``ONEDNN_MAX_CPU_ISA`` as set in the environment, or None when oneDNN may use everything
    onednn_isa_cap: Optional[str]
    #: the CPU has AMX bf16 tiles and no cap forbids oneDNN to use them: bf16 is faster than float32 here
    native_bf16: bool
    #: the CPU has AVX-512-BF16 dot products (bf16 runs, but without AMX not faster than float32)
    avx512_bf16: bool
    #: oneDNN's bfloat16 kernels (weight reorders, packed convolutions) run here
    onednn_bf16: bool
    #: oneDNN is compiled in and enabled
    onednn: bool
    threads: int

    def describe(self) -> str:
        """One line for benchmark headers and ``cmkit sample`` output."""
        cap = f", oneDNN capped at {self.onednn_isa_cap}" if self.onednn_isa_cap else ""
        if self.native_bf16:
            bf16 = "native (AMX)"
        elif not self.onednn_bf16:
            bf16 = "emulated (no oneDNN bf16 kernels here)"
        elif self.avx512_bf16:
            bf16 = "AVX-512-BF16 without AMX (slower than float32)"
        else:
            bf16 = "AVX-512 without BF16 (slower than float32)"
        return f"{self.model_name}; ATen {self.aten_capability}{cap}; bf16 {bf16}; {self.threads} threads"


@functools.lru_cache(maxsize=1)
def _static_cpu_info() -> CPUInfo:
    onednn = bool(torch.backends.mkldnn.is_available())
    cap = _onednn_isa_cap()
    onednn_bf16 = onednn and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    def flag(probe: str) -> bool:  # cpuinfo flags through private torch.cpu helpers, so probed
        x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
        return x86 and bool(getattr(torch.cpu, probe, lambda: False)())

    amx, avx512_bf16 = flag("_is_amx_tile_supported"), flag("_is_avx512_bf16_supported")
    cap_rank = onednn_isa_rank(cap) if cap else None
    cap_allows = cap is None or (cap_rank is not None and cap_rank >= onednn_isa_rank(NATIVE_BF16_ISA))  # type: ignore[operator]
    native_bf16 = amx and onednn_bf16 and cap_allows
    aten = torch.backends.cpu.get_cpu_capability()  # threads (and whether oneDNN is enabled) are read live
    return CPUInfo(_cpu_model_name(), aten, cap, native_bf16, avx512_bf16, onednn_bf16, onednn, threads=0)


def cpu_info() -> CPUInfo:
    """This process's :class:`CPUInfo` (the ISA facts are computed once; the thread count is read live)."""
    info = _static_cpu_info()
    return replace(info, onednn=info.onednn and torch.backends.mkldnn.enabled, threads=torch.get_num_threads())


def fastest_dtype(device: DeviceLike = "cpu") -> torch.dtype:
    """The inference dtype that is fastest on ``device`` without losing the network's range.

    CPU: bfloat16 where the CPU has AMX (:attr:`CPUInfo.native_bf16`), else float32 (float16 matrix products on
    CPU are orders of magnitude slower). CUDA: float16 on GPUs with fast fp16 (compute capability
    7.0 and up), bfloat16 on older ones if supported, else float32. MPS: float16.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        major, _ = torch.cuda.get_device_capability(dev)
        if major >= 7:
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if dev.type == "mps":
        return torch.float16
    if dev.type == "cpu":
        return torch.bfloat16 if cpu_info().native_bf16 else torch.float32
    return torch.float32


def parse_dtype(value: DTypeLike, name: str = "dtype") -> Optional[torch.dtype]:
    """A ``torch.dtype`` from a dtype, a name like ``"bfloat16"`` / ``"torch.float16"``, or ``None``."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        key = value.lower().removeprefix("torch.")
        if key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
    raise ValueError(f"{name}={value!r} is not a floating dtype; use a torch.dtype or one of {sorted(_DTYPE_NAMES)}")


def resolve_dtype(name: Union[str, torch.dtype], device: DeviceLike = "cpu") -> torch.dtype:
    """:func:`parse_dtype` of ``name``, where ``"auto"`` is :func:`fastest_dtype` for ``device``."""
    if name == "auto":
        return fastest_dtype(device)
    try:
        dtype = parse_dtype(name)
    except ValueError:
        dtype = None
    if dtype is None:
        raise ValueError(f"dtype must be 'auto' or a floating torch dtype name such as 'float32' or 'bfloat16', got {name!r}")
    return dtype
