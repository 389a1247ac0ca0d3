"""Turn user images and masks into tensors: PIL images, numpy arrays, torch tensors or file paths.

Conventions (the same as the pipeline's ``output_type`` values, so outputs can be fed back in):

* PIL images and files: any mode, decoded by :func:`cmkit.io.images.pil_to_unit` (16-bit images scaled by
  65535, transparency composited over black with a warning); greyscale modes give one channel, colour and
  palette modes three.
* numpy arrays are channels-last, ``[H, W]``, ``[H, W, C]`` or ``[B, H, W, C]``; ``uint8`` in 0..255,
  ``uint16`` in 0..65535, floats in [0, 1] (``output_type="np"``).
* torch tensors are channels-first, ``[H, W]``, ``[C, H, W]`` or ``[B, C, H, W]``; ``uint8`` in 0..255,
  ``uint16`` in 0..65535, floats in [0, 1] (``output_type="pt"``).
* a list of any of these is a batch.

Images come back as float32 ``[B, C, H, W]`` tensors in [-1, 1]; an RGB image whose three channels are equal
is greyscale and fits a 1-channel model. Masks come back as ``[B, 1, H, W]`` 0/1 tensors, 1 = the region to
generate (white in a mask image); grey levels are thresholded at 0.5 (mid-grey, 128 of 255), so anti-aliased
mask drawings work. A mask that selects no pixel (or every pixel) is almost always a mistake and warns.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..io.images import pil_to_unit

#: a mask value at or above this (on the [0, 1] scale) means "generate".
MASK_THRESHOLD = 0.5

ImageInput = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, Tensor, Sequence[Any]]  # noqa: F821


def _from_pil(image: Any, name: str = "image") -> Tensor:
    decoded = pil_to_unit(image)
    for note in decoded.notes:
        warnings.warn(f"the {name} (PIL mode {decoded.mode}) {note}", UserWarning, stacklevel=4)
    return torch.from_numpy(decoded.pixels).permute(2, 0, 1)[None].contiguous()


def _from_numpy(array: np.ndarray, name: str = "image") -> Tensor:
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[None]
    elif array.ndim != 4:
        raise ValueError(f"a numpy {name} must be [H, W], [H, W, C] or [B, H, W, C], got shape {array.shape}")
    if array.dtype == np.uint16:  # 16-bit pixels; torch has few uint16 kernels, so scale here
        array = (array.astype(np.float64) / 65535.0).astype(np.float32)
    return _scale(torch.from_numpy(np.array(array, copy=True)).permute(0, 3, 1, 2), name)


def _from_torch(tensor: Tensor, name: str = "image") -> Tensor:
    if tensor.ndim == 2:
        tensor = tensor[None, None]
    elif tensor.ndim == 3:
        tensor = tensor[None]
    elif tensor.ndim != 4:
        raise ValueError(f"a tensor {name} must be [H, W], [C, H, W] or [B, C, H, W], got shape {tuple(tensor.shape)}")
    return _scale(tensor.detach().cpu(), name)


def _scale(x: Tensor, name: str) -> Tensor:
    """``uint8`` 0..255, ``uint16`` 0..65535 or floats in [0, 1] -> float32 in [0, 1]."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == getattr(torch, "uint16", None):
        return (x.to(torch.int32).double() / 65535.0).float()
    if x.dtype == torch.bool:
        return x.float()
    if not x.is_floating_point():
        raise ValueError(
            f"{name} values must be uint8 (0..255), uint16 (0..65535) or floats in [0, 1], got dtype {x.dtype}; "
            f"for other integers pass x / max_value as floats"
        )
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"float {name} values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; for an image in [-1, 1] pass "
            "(x + 1) / 2, for 0..255 values pass x / 255"
        )
    return x.clamp(0.0, 1.0)


def load_unit(value: ImageInput, name: str = "image") -> Tensor:
    """Any supported input as a float32 ``[B, C, H, W]`` tensor in [0, 1] (no channel conversion)."""
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{name} file not found: {path}")
        from PIL import Image

        with Image.open(path) as img:
            img.load()
            return _from_pil(img, name)
    if isinstance(value, Tensor):
        return _from_torch(value, name)
    if isinstance(value, np.ndarray):
        return _from_numpy(value, name)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"got an empty list of {name}s")
        parts = [load_unit(v, name) for v in value]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"all {name}s in a list must share one size and channel count, got {sorted(shapes)}")
        return torch.cat(parts)
    if hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image, without importing PIL eagerly
        return _from_pil(value, name)
    raise TypeError(
        f"{name} must be a file path, PIL image, numpy array, torch tensor or a list of them, got {type(value).__name__}"
    )


def to_luma(rgb: Tensor) -> Tensor:
    """ITU-R BT.601 luma ``0.2989 R + 0.5870 G + 0.1140 B`` of ``[B, 3, H, W]`` images, kept as one channel."""
    from .transforms import LUMA_WEIGHTS

    w = torch.tensor(LUMA_WEIGHTS, dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("c,bchw->bhw", w, rgb)[:, None]


def load_image(
    value: ImageInput,
    *,
    channels: int,
    size: tuple[int, int] | None = None,
    name: str = "image",
    rgb_to_gray: bool = False,
) -> Tensor:
    """Load ``value`` as ``[B, channels, H, W]`` in [-1, 1]; grey is replicated to RGB; checks ``size`` = (H, W).

    RGB input whose three channels are equal is grey and fits ``channels=1``; colour input for ``channels=1`` is
    an error unless ``rgb_to_gray`` (then its luma is used).
    """
    x = load_unit(value, name)
    c = x.shape[1]
    if c == 4:
        raise ValueError(
            f"a 4-channel {name} array (RGBA?) is ambiguous; drop or composite the alpha channel and pass RGB, or "
            "pass it as a PIL image or file (alpha is then composited over black)"
        )
    if c == channels:
        pass
    elif c == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    elif c == 3 and channels == 1:
        if torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]):
            x = x[:, :1]  # a grey image stored as RGB
        elif not rgb_to_gray:
            raise ValueError(
                f"the {name} is in colour (its red, green and blue channels differ) but the model has 1 channel; "
                f"convert the image to grayscale first (e.g. PIL's image.convert('L'))"
            )
        else:
            x = to_luma(x)
    else:
        raise ValueError(f"{name} has {c} channels but the model needs {channels}")
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        raise ValueError(
            f"{name} is {x.shape[2]}x{x.shape[3]} (HxW) but must be {size[0]}x{size[1]} for this model; resize it first"
        )
    return x * 2.0 - 1.0


def load_mask(value: ImageInput, *, size: tuple[int, int], name: str = "mask") -> Tensor:
    """Load a mask as ``[B, 1, H, W]`` 0/1 (1 = generate); grey levels thresholded at :data:`MASK_THRESHOLD`."""
    m = load_unit(value, name)
    if m.shape[1] == 3:
        m = m.mean(dim=1, keepdim=True)
    elif m.shape[1] != 1:
        raise ValueError(f"{name} must have 1 (grey) or 3 (RGB) channels, got {m.shape[1]}")
    if tuple(m.shape[2:]) != tuple(size):
        raise ValueError(
            f"{name} is {m.shape[2]}x{m.shape[3]} (HxW) but the image is {size[0]}x{size[1]}; they must be the same size"
        )
    m = (m >= MASK_THRESHOLD).float()
    _warn_if_mask_selects_nothing_or_all(m, name)
    return m


def _warn_if_mask_selects_nothing_or_all(mask: Tensor, name: str) -> None:
    """Warn when a 0/1 mask generates no pixel (the output is the input) or every pixel (the image is ignored)."""
    selected = mask.flatten(1).sum(dim=1)
    total = mask[0].numel()
    which = (lambda i: f"{name} {i + 1} of {len(mask)}") if len(mask) > 1 else (lambda i: f"the {name}")
    for i, count in enumerate(selected.tolist()):
        if count == 0:
            warnings.warn(
                f"{which(i)} selects no pixel to regenerate (every value is below {MASK_THRESHOLD} after scaling to "
                f"[0, 1]), so the output equals the input; white (>= {MASK_THRESHOLD}) marks the region to "
                "regenerate and black the pixels to keep",
                UserWarning,
                stacklevel=3,
            )
        elif count == total:
            warnings.warn(
                f"{which(i)} selects every pixel to regenerate (no value is below {MASK_THRESHOLD}), so nothing of "
                "the image is kept and the result is a fresh sample; black marks the pixels to keep, white the "
                "region to regenerate",
                UserWarning,
                stacklevel=3,
            )
