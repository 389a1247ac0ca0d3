"""Turn user images and masks into tensors: PIL images, numpy arrays, torch tensors or file paths.

Conventions (the same as the pipeline's ``output_type`` values, so outputs can be fed back in):

* PIL images and files: any mode; ``L`` is one channel, everything else is converted to RGB.
* numpy arrays are channels-last, ``[H, W]``, ``[H, W, C]`` or ``[B, H, W, C]``; ``uint8`` in 0..255,
  floats in [0, 1] (``output_type="np"``).
* torch tensors are channels-first, ``[H, W]``, ``[C, H, W]`` or ``[B, C, H, W]``; ``uint8`` in 0..255,
  floats in [0, 1] (``output_type="pt"``).
* a list of any of these is a batch.

Images come back as float32 ``[B, C, H, W]`` tensors in [-1, 1]. Masks come back as ``[B, 1, H, W]`` 0/1
tensors, 1 = the region to generate (white in a mask image); grey levels are thresholded at 0.5 (mid-grey,
128 of 255), so anti-aliased mask drawings work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import Tensor

#: a mask value at or above this (on the [0, 1] scale) means "generate".
MASK_THRESHOLD = 0.5

ImageInput = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, Tensor, Sequence[Any]]  # noqa: F821


def _from_pil(image: Any) -> Tensor:
    if image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in ("1", "I", "I;16", "F", "LA") else "RGB")
    array = np.array(image, dtype=np.uint8)
    return _from_numpy(array[:, :, None] if array.ndim == 2 else array)


def _from_numpy(array: np.ndarray, name: str = "image") -> Tensor:
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[None]
    elif array.ndim != 4:
        raise ValueError(f"a numpy {name} must be [H, W], [H, W, C] or [B, H, W, C], got shape {array.shape}")
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
    """``uint8`` 0..255 or floats in [0, 1] -> float32 in [0, 1]."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == torch.bool:
        return x.float()
    if not x.is_floating_point():
        raise ValueError(f"{name} values must be uint8 (0..255) or floats in [0, 1], got dtype {x.dtype}")
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
            return _from_pil(img)
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
        return _from_pil(value)
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

    RGB input for a 1-channel ``channels`` is an error unless ``rgb_to_gray`` (then its luma is used).
    """
    x = load_unit(value, name)
    c = x.shape[1]
    if c == 4:
        raise ValueError(f"{name} has 4 channels (RGBA?); drop the alpha channel and pass RGB")
    if c == channels:
        pass
    elif c == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    elif c == 3 and channels == 1:
        if not rgb_to_gray:
            raise ValueError(f"{name} is RGB but the model has 1 channel; convert the {name} to grayscale first")
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
    return (m >= MASK_THRESHOLD).float()
