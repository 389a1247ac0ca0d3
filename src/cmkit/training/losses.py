"""Per-sample distances ``d(x, y)`` for consistency losses: l2, l1, pseudo-Huber and (optional) LPIPS.

Every distance maps two batches ``[B, ...]`` to a ``[B]`` tensor; objectives weight and average it.

* ``l2``: mean over the sample's entries of ``(x - y)^2`` (OpenAI's "l2", CM sec. 6).
* ``l1``: mean of ``|x - y|``.
* ``pseudo_huber``: ``sqrt(||x - y||_2^2 + c^2) - c`` on the *whole sample's* Euclidean norm, with
  ``c = 0.00054 sqrt(d)`` and ``d = C*H*W`` (iCT, Song & Dhariwal 2023, sec. 3.3). It is not applied per entry.
* ``lpips``: the LPIPS-VGG distance (Zhang et al. 2018; cmkit's own, :mod:`cmkit.training.lpips`) on images
  upsampled to 224x224 (as OpenAI's CD does). It needs a local weight file, since nothing can be downloaded at
  training time, and neither torchvision nor the ``lpips`` package.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import require_int
from .lpips import MIN_INPUT_SIZE, PathLike, load_lpips_vgg16

LossName = Literal["l2", "l1", "pseudo_huber", "lpips"]
Distance = Callable[[Tensor, Tensor], Tensor]

#: iCT's pseudo-Huber constant per sqrt(dimension): c = 0.00054 sqrt(d).
PSEUDO_HUBER_C_PER_SQRT_DIM = 0.00054


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"distance needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim < 2:
        raise ValueError(f"distance needs a batch dimension plus data dims, got shape {tuple(x.shape)}")


def l2_distance(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample mean squared difference, shape ``[B]``."""
    _check_pair(x, y)
    return (x - y).pow(2).flatten(1).mean(dim=1)


def l1_distance(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample mean absolute difference, shape ``[B]``."""
    _check_pair(x, y)
    return (x - y).abs().flatten(1).mean(dim=1)


def pseudo_huber_c(dim: int) -> float:
    """iCT's pseudo-Huber constant ``c = 0.00054 sqrt(dim)`` for samples of ``dim`` entries (``C*H*W``)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return PSEUDO_HUBER_C_PER_SQRT_DIM * math.sqrt(dim)


def pseudo_huber_distance(x: Tensor, y: Tensor, c: Optional[float] = None) -> Tensor:
    """``sqrt(||x - y||^2 + c^2) - c`` on each sample's full norm (iCT sec. 3.3); ``c`` defaults to ``0.00054 sqrt(d)``."""
    _check_pair(x, y)
    if c is None:
        c = pseudo_huber_c(x[0].numel())
    if c < 0:
        raise ValueError(f"the pseudo-Huber c must be >= 0, got {c}")
    sq = (x - y).pow(2).flatten(1).sum(dim=1)
    return torch.sqrt(sq + c * c) - c


class LPIPSDistance(nn.Module):
    """LPIPS-VGG (:class:`cmkit.training.lpips.LPIPSVGG16`) from local weight files (no download), on inputs resized
    to ``resize`` x ``resize`` (224, as OpenAI's CD).

    ``weights_path`` holds the full ``lpips.LPIPS(net='vgg').state_dict()`` (backbone and linear heads), e.g.
    written on a machine with internet by
    ``python -c "import lpips, torch; torch.save(lpips.LPIPS(net='vgg').state_dict(), 'lpips_vgg.pt')"``;
    or it is a pair of files: a torchvision ``vgg16`` state dict and lpips' linear-head file ``weights/v0.1/vgg.pth``.
    Inputs are images in [-1, 1]; one-channel images are repeated to three channels; sizes other than ``resize``
    are resized bilinearly.
    """

    def __init__(self, weights_path: PathLike | Sequence[PathLike], resize: int = 224):
        super().__init__()
        paths = [weights_path] if isinstance(weights_path, (str, os.PathLike)) else list(weights_path)
        for path in (Path(p).expanduser() for p in paths):
            if not path.is_file():
                raise FileNotFoundError(
                    f"LPIPS weights not found at {path}. LPIPS needs backbone weights that cannot be downloaded "
                    "during training: on a machine with internet run `python -c \"import lpips, torch; "
                    "torch.save(lpips.LPIPS(net='vgg').state_dict(), 'lpips_vgg.pt')\"` and pass that file "
                    "as the LPIPS weights path (lpips_weights=...)."
                )
        self.resize = require_int("lpips_resize", resize, MIN_INPUT_SIZE, " (VGG-16 pools four times before relu5_3)")
        self.lpips = load_lpips_vgg16([Path(p).expanduser() for p in paths])

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample LPIPS distance, shape ``[B]``."""
        _check_pair(x, y)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS needs images [B, 1 or 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.resize or x.shape[-2] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        self.lpips.to(x.device)
        return self.lpips(x, y)


def make_distance(
    name: LossName,
    *,
    huber_c: Optional[float] = None,
    lpips_weights: Optional[PathLike | Sequence[PathLike]] = None,
    lpips_resize: int = 224,
) -> Distance:
    """The per-sample distance called ``name``; ``lpips`` requires ``lpips_weights`` (a local file, or a torchvision
    ``vgg16`` file and lpips' head file) and resizes images to ``lpips_resize`` (224 as OpenAI's CD)."""
    if name == "l2":
        return l2_distance
    if name == "l1":
        return l1_distance
    if name == "pseudo_huber":
        return lambda x, y: pseudo_huber_distance(x, y, huber_c)
    if name == "lpips":
        if lpips_weights is None:
            raise ValueError(
                "loss='lpips' needs lpips_weights=PATH to a saved lpips.LPIPS state dict (weights cannot be "
                "downloaded here); or choose loss='l2' / 'pseudo_huber'"
            )
        return LPIPSDistance(lpips_weights, resize=lpips_resize)
    raise ValueError(f"loss must be one of 'l2', 'l1', 'pseudo_huber', 'lpips', got {name!r}")
