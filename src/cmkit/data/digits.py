"""The 8x8 handwritten digits that scikit-learn ships (UCI "Optical Recognition of Handwritten Digits",
1797 images, 10 classes, pixel values 0..16), embedded in cmkit as ``assets/digits.npz`` so no download or
scikit-learn install is needed.

A fixed split is used everywhere (training, the FD-digits classifier and its noise floor): 360 held-out
images (36 per class, chosen by a fixed permutation) and 1437 training images.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Split = Literal["train", "test", "all"]
NUM_CLASSES = 10
NUM_IMAGES = 1797
HELD_OUT_PER_CLASS = 36
_SPLIT_SEED = 20231


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    with resources.files("cmkit.assets").joinpath("digits.npz").open("rb") as fh:
        data = np.load(fh)
        return data["images"].copy(), data["labels"].astype(np.int64)


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Indices of the fixed train / test split (test: 36 images of each class)."""
    _, labels = _raw()
    rng = np.random.default_rng(_SPLIT_SEED)
    order = rng.permutation(len(labels))
    test = np.concatenate([order[labels[order] == c][:HELD_OUT_PER_CLASS] for c in range(NUM_CLASSES)])
    test = np.sort(test)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": train, "test": test, "all": np.arange(len(labels))}


def load_digits(split: Split = "train", resolution: int = 8) -> tuple[Tensor, Tensor]:
    """Digits as float32 images in [-1, 1] of shape ``[N, 1, resolution, resolution]`` and int64 labels.

    ``resolution`` must be a multiple of 8; larger sizes are bilinear upsamplings of the 8x8 originals.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if resolution < 8 or resolution % 8:
        raise ValueError(f"resolution must be a positive multiple of 8, got {resolution}")
    images, labels = _raw()
    idx = split_indices()[split]
    x = torch.from_numpy(images[idx]).float().div(16.0).mul(2.0).sub(1.0).unsqueeze(1)
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.contiguous(), torch.from_numpy(labels[idx])
