"""Turn sampled tensors into outputs: [-1, 1] images to [0, 1] tensors, NumPy arrays, PIL images and grids.

Numerics follow diffusers' image post-processing exactly (``(x / 2 + 0.5).clamp(0, 1)``, then
``round(x * 255)`` to uint8), so cmkit and diffusers give identical PNGs from identical samples.
Samples that are not images (e.g. 2-D points from an MLP) pass through unchanged.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence, Union

import numpy as np
import torch
from torch import Tensor

OutputType = Literal["pil", "np", "pt"]
OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt")
PIL_CHANNELS = (1, 3, 4)


def check_output_type(output_type: str, sample_shape: Sequence[int]) -> None:
    """Raise a ValueError if ``output_type`` is unknown, or is "pil" for samples that are not images."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not supported; choose one of 'pil', 'np' or 'pt'")
    if output_type == "pil" and not is_image_shape(sample_shape):
        raise ValueError(
            f"output_type='pil' needs image samples shaped (channels, height, width) with 1, 3 or 4 channels, but "
            f"this model makes samples of shape {tuple(sample_shape)}; use output_type='np' or 'pt'"
        )


def is_image_shape(sample_shape: Sequence[int]) -> bool:
    """Whether one sample of ``sample_shape`` (no batch dim) is a (C, H, W) image PIL can show."""
    return len(sample_shape) == 3 and sample_shape[0] in PIL_CHANNELS


def denormalize(images: Tensor) -> Tensor:
    """Map model space [-1, 1] to [0, 1] and clamp."""
    return (images / 2 + 0.5).clamp(0, 1)


def to_numpy(sample: Tensor) -> np.ndarray:
    """A CPU NumPy copy; channels last for image batches; bfloat16 (which NumPy lacks) becomes float32."""
    if sample.dtype == torch.bfloat16:
        sample = sample.float()
    sample = sample.detach().cpu()
    if sample.ndim == 4:
        sample = sample.permute(0, 2, 3, 1)
    return sample.numpy()


def numpy_to_pil(images: np.ndarray) -> list:
    """[0, 1] channels-last images (N, H, W, C) or (H, W, C) to a list of PIL images (C = 1 gives mode "L")."""
    from PIL import Image

    if images.ndim == 3:
        images = images[None]
    pixels = (images * 255).round().astype("uint8")
    if pixels.shape[-1] == 1:
        return [Image.fromarray(p[..., 0], mode="L") for p in pixels]
    return [Image.fromarray(p) for p in pixels]


def postprocess(sample: Tensor, output_type: OutputType) -> Union[Tensor, np.ndarray, list]:
    """Pipeline output from a final sample: images in [0, 1] ("pt"/"np") or PIL; non-images unchanged."""
    check_output_type(output_type, tuple(sample.shape[1:]))
    if sample.ndim == 4:
        sample = denormalize(sample)
    if output_type == "pt":
        return sample
    array = to_numpy(sample)
    if output_type == "np":
        return array
    return numpy_to_pil(array)


def image_grid(images: Sequence, cols: int | None = None):
    """Tile equally sized PIL images into one image, row by row (``cols`` defaults to about sqrt(n))."""
    from PIL import Image

    if not images:
        raise ValueError("image_grid needs at least one image")
    n = len(images)
    cols = cols or math.ceil(math.sqrt(n))
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    rows = math.ceil(n / cols)
    w, h = images[0].size
    if any(im.size != (w, h) for im in images):
        raise ValueError("image_grid needs images of one size")
    grid = Image.new(images[0].mode, (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid
