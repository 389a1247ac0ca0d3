"""FID (Heusel et al. 2017) for real image sets, with torch-fidelity's Inception-v3 as the feature extractor.

The feature network is the standard FID Inception (the TensorFlow 2015-12-05 graph, ported to PyTorch by
torch-fidelity and used by torchmetrics), 2048-d pool features; the Fréchet distance is cmkit's own
(:mod:`cmkit.metrics.frechet`). It is an optional extra: ``pip install "cmkit[fid]"``, with a torchvision
that matches your torch installed first.

The Inception weights cannot be downloaded at run time (cmkit never fetches them): pass a local file as
``weights_path`` or set ``CMKIT_INCEPTION_WEIGHTS``. The file torch-fidelity publishes is
``weights-inception-2015-12-05-6726825d.pth``. It is read safely (safetensors, or
``torch.load(weights_only=True)``), so a converted ``.safetensors`` copy works too.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..io.weights import load_state_dict
from .frechet import frechet_distance_from_features

WEIGHTS_ENV = "CMKIT_INCEPTION_WEIGHTS"
WEIGHTS_FILE_NAME = "weights-inception-2015-12-05-6726825d.pth"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class InceptionWeightsError(FileNotFoundError):
    """No usable local Inception-v3 weights file was given."""


def resolve_inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``weights_path``, else ``$CMKIT_INCEPTION_WEIGHTS``; a clear error if neither."""
    chosen = weights_path if weights_path is not None else os.environ.get(WEIGHTS_ENV)
    if not chosen:
        raise InceptionWeightsError(
            "FID needs local Inception-v3 weights, and cmkit does not download them. Fetch "
            f"{WEIGHTS_FILE_NAME} (torch-fidelity's release) on a machine with internet access, then pass "
            f"weights_path=... (cmkit eval: --inception-weights) or set {WEIGHTS_ENV}."
        )
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise InceptionWeightsError(f"Inception weights file not found: {path}; pass the path of {WEIGHTS_FILE_NAME}")
    return path


def _feature_extractor_class() -> type[nn.Module]:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as err:  # ImportError, or a torchvision built for another torch failing to load
        raise ImportError(
            "FID needs the optional 'fid' extra: pip install 'cmkit[fid]' (torch-fidelity), with a torchvision "
            f"that matches your torch installed first ({type(err).__name__}: {err})"
        ) from err
    return FeatureExtractorInceptionV3


@lru_cache(maxsize=1)
def load_inception(weights_path: str | None = None) -> nn.Module:
    """torch-fidelity's FID Inception-v3 (2048-d features, eval mode) with weights from a local file."""
    path = resolve_inception_weights(weights_path)
    extractor_class = _feature_extractor_class()
    state = load_state_dict(path)  # safe load; torch-fidelity itself would unpickle the file unrestricted
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "inception_state_dict.pt"
        torch.save(state, plain)  # a plain dict of tensors, just validated
        return extractor_class("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(plain)).eval()


def to_uint8_rgb(images: Tensor) -> Tensor:
    """``[N, C, H, W]`` images (uint8, or float in [0, 1]; C = 1 or 3) as uint8 RGB, what the Inception expects."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [N, 1 or 3, H, W], got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images
    elif images.is_floating_point():
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; convert [-1, 1] images "
                "with (x + 1) / 2"
            )
        x = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    else:
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_features(
    images: Tensor, weights_path: str | os.PathLike | None = None, batch_size: int = 50, device: str = "cpu"
) -> Tensor:
    """2048-d Inception pool features ``[N, 2048]`` (float64) of ``[N, C, H, W]`` images (see :func:`to_uint8_rgb`)."""
    x = to_uint8_rgb(images)
    model = load_inception(str(resolve_inception_weights(weights_path))).to(device)
    chunks = [model(chunk.to(device))[0].cpu().to(torch.float64) for chunk in x.split(batch_size)]
    return torch.cat(chunks)


def fid(
    images_1: Tensor, images_2: Tensor, weights_path: str | os.PathLike | None = None, batch_size: int = 50,
    device: str = "cpu",
) -> float:
    """FID between two image sets ``[N, C, H, W]`` (uint8, or float in [0, 1])."""
    if images_1.shape[0] < 2 or images_2.shape[0] < 2:
        raise ValueError("FID needs at least 2 images per set (thousands for a meaningful value)")
    features = [inception_features(images, weights_path, batch_size, device) for images in (images_1, images_2)]
    return frechet_distance_from_features(*features)


def load_image_folder(directory: str | os.PathLike) -> Tensor:
    """All images in ``directory`` (sorted by name) as uint8 RGB ``[N, 3, H, W]``; they must share one size."""
    from PIL import Image

    d = Path(directory)
    if not d.is_dir():
        raise NotADirectoryError(f"not a directory of images: {d}")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {d}")
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images in {d} have different sizes {sorted(sizes)}; resize them to one size first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def fid_from_folders(
    directory_1: str | os.PathLike, directory_2: str | os.PathLike, weights_path: str | os.PathLike | None = None,
    batch_size: int = 50, device: str = "cpu",
) -> float:
    """FID between two folders of images."""
    return fid(load_image_folder(directory_1), load_image_folder(directory_2), weights_path, batch_size, device)
