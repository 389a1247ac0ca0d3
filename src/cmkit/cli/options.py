"""Command-line options shared by the inference commands (``sample``, ``demo``, ``edit``)."""

from __future__ import annotations

import argparse

#: the choices of ``--dtype`` (resolved by :func:`cmkit.hardware.resolve_dtype`)
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def add_dtype_argument(p: argparse.ArgumentParser) -> None:
    """``--dtype {auto,float32,bfloat16,float16}``, ``auto`` by default (see :func:`cmkit.hardware.fastest_dtype`)."""
    p.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="auto",
        help="compute dtype. auto (the default) picks the fastest for the device: bfloat16 on CPUs that compute it "
        "natively (AVX-512-BF16 or AMX), float32 on other CPUs, float16 on CUDA and MPS",
    )


def dtype_label(requested: str, resolved: object) -> str:
    """How a chosen dtype is reported: ``bfloat16`` or ``bfloat16 (auto)``."""
    name = str(resolved).removeprefix("torch.")
    return f"{name} (auto)" if requested == "auto" else name
