"""Decode a PIL image of any mode into float pixels in [0, 1]: one reader for editing inputs and training folders.

Each mode is scaled by its own range, never clipped to 8 bits:

* ``1`` (bilevel), ``L``, ``P``, ``RGB`` and other 8-bit modes: ``value / 255``;
* ``I;16`` / ``I;16B`` / ``I;16L`` / ``I;16N`` (16-bit greyscale, e.g. a 16-bit PNG): ``value / 65535``;
* ``I`` (32-bit integers): ``value / 65535`` when the values fit 16 bits and some exceed 255 (how Pillow opens
  16-bit PNG and TIFF files), ``value / 255`` with a note when they all lie in 0..255 (8-bit data in an integer
  container), and an error otherwise, since the range cannot be known;
* ``F`` (32-bit float): used as is when the values lie in [0, 1], an error naming the range otherwise.

Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour, pre-multiplied ``RGBa`` / ``La``) is
composited over **black**: ``pixel = alpha * colour``, which is what dropping the alpha channel gives for the
common files that store black under transparent pixels. A note says so whenever some pixel is not fully
opaque; flatten the image onto another background first to choose a different one.

The result has 1 channel (greyscale modes, with or without alpha) or 3 (colour and palette modes); callers
convert channels as they need (editing treats an image whose three channels are equal as greyscale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: grey level, in [0, 1], that transparent pixels are composited over.
ALPHA_BACKGROUND = 0.0

#: 16-bit unsigned greyscale modes (byte orders differ; numpy gives their values directly).
UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
GREY_MODES = ("1", "L") + UINT16_MODES + ("I", "F")

#: the note attached to an image whose alpha was composited (callers group identical notes).
ALPHA_NOTE = (
    f"has transparent pixels; they were composited over {'black' if ALPHA_BACKGROUND == 0 else 'white'} "
    "(colour x alpha). Flatten it onto the background you want first to choose another"
)
#: the note attached to a 32-bit integer image whose values all fit 8 bits.
INT8_IN_INT32_NOTE = (
    "holds 32-bit integers that all lie in 0..255; they were read as 8-bit (value / 255). If it is a dark "
    "16-bit image, save it as mode I;16"
)


@dataclass(frozen=True)
class UnitImage:
    """Decoded pixels: float32 ``[H, W, C]`` in [0, 1] with C = 1 or 3, the source mode, and notes on choices made."""

    pixels: np.ndarray
    mode: str
    notes: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        """1 (greyscale) or 3 (colour)."""
        return int(self.pixels.shape[-1])


def _int32_to_unit(values: np.ndarray, notes: list[str]) -> np.ndarray:
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ValueError(
            f"a 32-bit integer image (mode I) with values in [{lo}, {hi}] has no known range; save it as an 8-bit "
            "or 16-bit image, or pass a float array scaled to [0, 1]"
        )
    if hi <= 255:
        notes.append(INT8_IN_INT32_NOTE)
        return values.astype(np.float32) / 255.0
    return (values.astype(np.float64) / 65535.0).astype(np.float32)


def _float_to_unit(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError("a float image (mode F) contains NaN or infinite values; fix or re-export the image")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"a float image (mode F) must hold values in [0, 1], but its values lie in [{lo:.4g}, {hi:.4g}]; "
            "rescale it to [0, 1] (e.g. (x - min) / (max - min)) or save it as an 8-bit or 16-bit image"
        )
    return values.astype(np.float32)


def _grey_to_unit(image: Any, notes: list[str]) -> np.ndarray:
    """``[H, W]`` float32 of a single-band mode."""
    values = np.asarray(image)
    if image.mode == "1":
        return values.astype(np.float32)
    if image.mode == "L":
        return values.astype(np.float32) / 255.0
    if image.mode in UINT16_MODES:
        return (values.astype(np.float64) / 65535.0).astype(np.float32)
    if image.mode == "I":
        return _int32_to_unit(values, notes)
    return _float_to_unit(values)


def _composite(colour: np.ndarray, alpha: np.ndarray, notes: list[str]) -> np.ndarray:
    """``alpha * colour + (1 - alpha) * background`` for uint8 colour ``[H, W, C]`` and alpha ``[H, W]``."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    c = colour.astype(np.float32) / 255.0
    if a.size and float(a.min()) < 1.0:
        notes.append(ALPHA_NOTE)
    return (a * c + (1.0 - a) * ALPHA_BACKGROUND).astype(np.float32)


def pil_to_unit(image: Any) -> UnitImage:
    """The pixels of a PIL image of any mode as float32 ``[H, W, C]`` in [0, 1] (see the module docstring)."""
    mode = image.mode
    notes: list[str] = []
    if mode in GREY_MODES:
        pixels = _grey_to_unit(image, notes)[..., None]
        return UnitImage(pixels, mode, tuple(notes))
    if mode in ("LA", "La"):
        la = np.asarray(image.convert("LA"))
        return UnitImage(_composite(la[..., :1], la[..., 1], notes), mode, tuple(notes))
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        return UnitImage(_composite(rgba[..., :3], rgba[..., 3], notes), mode, tuple(notes))
    try:
        rgb = image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(
            f"cannot read a {mode} image as colours ({err}); convert it to RGB or greyscale (L) and save it again"
        ) from err
    return UnitImage(np.asarray(rgb).astype(np.float32) / 255.0, mode)


def unit_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] as uint8 ``round(255 x)`` (the rounding of cmkit's image outputs)."""
    return np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
