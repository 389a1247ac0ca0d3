"""Image sets read in batches of uint8 RGB ``[B, 3, H, W]``, one batch in memory at a time: a folder of images
(searched recursively, sorted by path, as EDM's ``ImageFolderDataset`` lists them) or a ``.npz`` of uint8 images.

Folder images are decoded by :func:`cmkit.io.images.pil_to_unit` (8-bit files give their pixels unchanged);
greyscale is repeated to three channels. An ``.npz`` holds ``[N, H, W, C]`` (C = 1 or 3; the layout of
OpenAI's reference batches, key ``arr_0``), ``[N, C, H, W]`` or ``[N, H, W]`` uint8 images under the key
``images``, ``arr_0`` or its only key. All images of a set must share one size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..io.npz import NpyHeader, iter_npz_rows, npz_headers

PathLike = Union[str, os.PathLike]
#: keys an ``.npz`` of images is looked up under, in this order (before falling back to its only array)
IMAGE_KEYS = ("images", "arr_0")
#: keys of statistics, never images
STATISTICS_KEYS = ("mu", "sigma", "mu_s", "sigma_s", "num_images", "extractor")


def _rgb_chw(pixels: np.ndarray) -> np.ndarray:
    """``[H, W]`` or ``[H, W, 1 or 3]`` uint8 pixels as ``[3, H, W]``."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    from ..io.images import pil_to_unit, unit_to_uint8

    try:
        with Image.open(path) as img:
            decoded = pil_to_unit(img)
    except Exception as err:  # noqa: BLE001 - any decoding failure names the file
        raise ValueError(f"cannot read image {path} ({type(err).__name__}: {err}); remove or replace it") from err
    return _rgb_chw(unit_to_uint8(decoded.pixels))


def _npz_image_key(path: Path, headers: dict[str, NpyHeader]) -> str:
    candidates = [k for k in headers if k not in STATISTICS_KEYS]
    for key in IMAGE_KEYS:
        if key in headers:
            return key
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(
        f"{path} holds no image array: expected a uint8 array under one of {', '.join(IMAGE_KEYS)} (or a single "
        f"array), found keys {sorted(headers)}"
    )


def _npz_layout(path: Path, key: str, header: NpyHeader) -> str:
    shape = header.shape
    if header.dtype != np.uint8:
        raise ValueError(f"{path}[{key}] must hold uint8 images, got {header.dtype}; quantise them to 0..255 first")
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4 and shape[-1] in (1, 3):
        return "NHWC"
    if len(shape) == 4 and shape[1] in (1, 3):
        return "NCHW"
    raise ValueError(
        f"{path}[{key}] has shape {shape}; expected uint8 images [N, H, W, C], [N, C, H, W] (C = 1 or 3) or [N, H, W]"
    )


@dataclass(frozen=True)
class ImageSet:
    """A folder of images or an ``.npz`` of uint8 images, to be read in batches (see :func:`open_image_set`)."""

    path: Path
    num_images: int
    files: Optional[tuple[Path, ...]] = None  # a folder's images, in reading order
    npz_key: Optional[str] = None
    npz_layout: Optional[str] = None

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """The images as uint8 RGB ``[B, 3, H, W]`` batches of ``batch_size`` (the last may be smaller)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for batch in self._raw_batches(batch_size):
            yield torch.from_numpy(batch)

    def _raw_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        if self.files is not None:
            size = None
            for start in range(0, len(self.files), batch_size):
                arrays = []
                for path in self.files[start : start + batch_size]:
                    image = _read_image(path)
                    size = size or (image.shape[1:], path)
                    if image.shape[1:] != size[0]:
                        raise ValueError(
                            f"images in {self.path} have different sizes: {path} is {image.shape[1]}x{image.shape[2]}, "
                            f"{size[1]} is {size[0][0]}x{size[0][1]}; resize them to one size first"
                        )
                    arrays.append(image)
                yield np.stack(arrays)
            return
        for chunk in iter_npz_rows(self.path, self.npz_key, batch_size):
            if self.npz_layout == "NCHW":
                chunk = chunk.transpose(0, 2, 3, 1)
            yield np.stack([_rgb_chw(image) for image in chunk])


def open_image_set(source: PathLike) -> ImageSet:
    """The image set at ``source``: a directory of images, or an ``.npz`` holding a uint8 image array."""
    path = Path(source).expanduser()
    if path.is_dir():
        from ..data.folder import scan_image_folder

        relative, _, _ = scan_image_folder(path, class_labels=False)  # paths relative to the folder, as bytes
        names = sorted(os.fsdecode(name).replace(os.sep, "/") for name in relative.tolist())  # EDM's order
        files = [path / name for name in names]
        return ImageSet(path=path, num_images=len(files), files=tuple(files))
    if path.suffix.lower() != ".npz":
        if not path.exists():
            raise FileNotFoundError(f"image set not found: {path}; pass a folder of images or an .npz of uint8 images")
        raise ValueError(f"{path} is neither a folder of images nor an .npz of uint8 images")
    headers = npz_headers(path)
    key = _npz_image_key(path, headers)
    layout = _npz_layout(path, key, headers[key])
    return ImageSet(path=path, num_images=headers[key].shape[0], npz_key=key, npz_layout=layout)
