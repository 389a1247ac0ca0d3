"""Command-line options and checks shared by the commands: ``--dtype``, ``--device``, ``--out`` and ``--scale``.

The checks run before the model is loaded or anything large is allocated, and raise a ValueError that names
the flag and the fix (``cmkit`` prints it as ``cmkit COMMAND: error: ...``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # torch is imported by the commands' run(), so ``cmkit --help`` stays fast
    import torch

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


#: output image types, in the order the messages list them (each is kept only if this Pillow can write it).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def parse_device_flag(value: str | None, flag: str = "--device") -> torch.device:
    """``--device`` as a device that exists here (see :func:`cmkit.devices.parse_device`)."""
    from ..devices import parse_device

    return parse_device("cpu" if value is None else value, flag)


def image_suffixes() -> tuple[str, ...]:
    """The entries of :data:`IMAGE_SUFFIXES` that the installed Pillow can save."""
    from PIL import Image

    registered = Image.registered_extensions()
    return tuple(s for s in IMAGE_SUFFIXES if s in registered and registered[s] in Image.SAVE)


def check_out_path(path: str | Path, flag: str = "--out", extra: Sequence[str] = ()) -> Path:
    """``path`` when its suffix is an image type this Pillow writes (or one of ``extra``, e.g. ``.npy``)."""
    out = Path(path)
    images = image_suffixes()
    if out.suffix.lower() not in (*images, *extra):
        kinds = f"an image ({', '.join(images)})" + (f" or {', '.join(extra)} (raw samples)" if extra else "")
        raise ValueError(f"{flag} must end in {kinds}, got {out}")
    return out


def check_upscaled_images(
    count: int, width: int, height: int, channels: int, scale: int, grid: bool = True, flag: str = "--scale"
) -> None:
    """Refuse ``count`` 8-bit images upscaled ``scale`` times (and the ``grid`` holding them) that cannot fit in memory."""
    from ..limits import require_memory

    side_w, side_h = width * scale, height * scale
    nbytes = (2 if grid else 1) * count * side_w * side_h * channels
    what = f"{count} images of {side_w}x{side_h} pixels" + (" and their grid" if grid else "")
    require_memory(nbytes, f"{flag} {scale} ({what})", f"use a smaller {flag}")
