"""One decoded image to the fixed-size uint8 pixels a training batch holds: every data format goes through here.

:func:`to_8bit` reads any PIL mode with :func:`cmkit.io.images.pil_to_unit` (16-bit images scaled by 65535,
transparency composited over black, each such choice returned as a note), applies the EXIF orientation and
converts to RGB or grayscale; :func:`resize` brings it to ``resolution``; :func:`to_chw` gives ``[C, H, W]``
uint8. :func:`image_pixels` chains the three, so the streaming sources, ``cmkit data prepare`` and the in-memory
folder reader give the same bytes for the same image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

#: ``crop``: scale the shorter side to ``resolution`` then centre-crop a square; ``stretch``: scale both sides to
#: ``resolution`` (aspect ratio changes); ``none``: keep the pixels as they are (all images must share one size).
ResizeMode = Literal["crop", "stretch", "none"]
Channels = Literal[1, 3]


def check_options(resolution: Optional[int], resize: str, channels: int) -> None:
    """A ValueError naming the fix when ``resize``, ``channels`` or ``resolution`` are not a valid combination."""
    if resize not in ("crop", "stretch", "none"):
        raise ValueError(f"resize must be 'crop', 'stretch' or 'none', got {resize!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if resize != "none" and resolution is None:
        raise ValueError(f"resize={resize!r} needs a resolution; pass one (e.g. 32), or resize='none' to keep sizes")
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")


def to_8bit(image: "Image.Image", channels: Channels) -> tuple["Image.Image", tuple[str, ...]]:
    """``image`` (any mode) upright as an 8-bit ``RGB`` (``channels=3``) or ``L`` (1) image, and the decoder's notes."""
    from PIL import Image, ImageOps

    from ..io.images import pil_to_unit, unit_to_uint8

    upright = ImageOps.exif_transpose(image)
    notes: tuple[str, ...] = ()
    if upright.mode not in ("L", "RGB"):  # 8-bit L and RGB pass pil_to_unit unchanged: round(255 (v / 255)) = v
        decoded = pil_to_unit(upright)
        pixels, notes = unit_to_uint8(decoded.pixels), decoded.notes
        upright = Image.fromarray(pixels[..., 0], mode="L") if decoded.channels == 1 else Image.fromarray(pixels, mode="RGB")
    return upright.convert("RGB" if channels == 3 else "L"), notes


def resize(img: "Image.Image", resolution: int, mode: ResizeMode) -> "Image.Image":
    """``img`` at ``resolution`` x ``resolution`` by ``mode`` ``crop`` or ``stretch`` (bicubic)."""
    from PIL import Image

    if mode == "stretch":
        return img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def to_chw(img: "Image.Image") -> np.ndarray:
    """An 8-bit ``L`` or ``RGB`` image as a ``[C, H, W]`` uint8 array."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def image_pixels(
    image: "Image.Image", channels: Channels, resolution: Optional[int], mode: ResizeMode
) -> tuple[np.ndarray, tuple[str, ...]]:
    """``image`` as ``[channels, H, W]`` uint8 pixels: :func:`to_8bit`, then :func:`resize` to ``resolution``
    (``mode='none'`` keeps the size; the caller checks it), and the decoder's notes."""
    img, notes = to_8bit(image, channels)
    if mode != "none":
        img = resize(img, int(resolution), mode)  # type: ignore[arg-type]
    return to_chw(img), notes
