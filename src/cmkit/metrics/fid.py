"""FID (Heusel et al. 2017) for real image sets, with torch-fidelity's Inception-v3 as the feature extractor.

The feature network is the standard FID Inception (the TensorFlow 2015-12-05 graph, ported to PyTorch by
torch-fidelity and used by torchmetrics), 2048-d pool features; the Fréchet distance is cmkit's own
(:mod:`cmkit.metrics.frechet`). It is an optional extra: ``pip install "cmkit[fid]"``, with a torchvision
that matches your torch installed first.

The Inception weights cannot be downloaded at run time (cmkit never fetches them): pass a local file as
``weights_path`` or set ``CMKIT_INCEPTION_WEIGHTS``. The file torch-fidelity publishes is
``weights-inception-2015-12-05-6726825d.pth``. It is read safely (safetensors, or
``torch.load(weights_only=True)``), so a converted ``.safetensors`` copy works too.

Another feature network can be plugged in by name through :func:`register_feature_extractor` (the hook the
tests use for a small stand-in network); results and statistics record the name of the network they used.
The paper protocol (50k samples, per-seed noise, uint8 quantisation, min of three runs) is in
:mod:`cmkit.metrics.fid_protocol`; statistics files in :mod:`cmkit.metrics.fid_stats`.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .._validate import check_choice
from ..io.weights import load_state_dict
from .frechet import frechet_distance_from_features

WEIGHTS_ENV = "CMKIT_INCEPTION_WEIGHTS"
WEIGHTS_FILE_NAME = "weights-inception-2015-12-05-6726825d.pth"
#: where torch-fidelity publishes the weights (fetch it yourself; cmkit never does)
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE_NAME}"
#: the feature network FID means: the 2015-12-05 Inception-v3, 2048-d pool features
INCEPTION = "inception-v3"

#: a feature network: uint8 RGB images ``[B, 3, H, W]`` (on its device) to features ``[B, D]``
FeatureExtractor = Callable[[Tensor], Tensor]
#: builds a feature network from a weights path (or None) and a device
ExtractorFactory = Callable[[Optional[str], torch.device], FeatureExtractor]
PathLike = Union[str, os.PathLike]


class InceptionWeightsError(FileNotFoundError):
    """No usable local Inception-v3 weights file was given."""


def resolve_inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``weights_path``, else ``$CMKIT_INCEPTION_WEIGHTS``; a clear error if neither."""
    chosen = weights_path if weights_path is not None else os.environ.get(WEIGHTS_ENV)
    if not chosen:
        raise InceptionWeightsError(
            "FID needs local Inception-v3 weights, and cmkit does not download them. Fetch "
            f"{WEIGHTS_FILE_NAME} (torch-fidelity's release, {WEIGHTS_URL}) on a machine with internet access, "
            f"then pass weights_path=... (cmkit eval: --inception-weights PATH) or set {WEIGHTS_ENV}=PATH."
        )
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise InceptionWeightsError(
            f"Inception weights file not found: {path}; download {WEIGHTS_FILE_NAME} from {WEIGHTS_URL} and pass "
            f"its path (--inception-weights or {WEIGHTS_ENV})"
        )
    return path


def _feature_extractor_class() -> type[nn.Module]:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as err:  # ImportError, or a torchvision built for another torch failing to load
        raise ImportError(
            "FID needs the optional 'fid' extra: pip install 'cmkit[fid]' (torch-fidelity), with a torchvision "
            "that matches your torch installed first (for a CPU-only torch, from the index it came from, e.g. "
            f"https://download.pytorch.org/whl/cpu) ({type(err).__name__}: {err})"
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
        try:
            return extractor_class("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(plain)).eval()
        except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen tensors
            raise ValueError(
                f"{path} does not hold torch-fidelity's Inception-v3 weights ({str(err)[:300]}); download "
                f"{WEIGHTS_FILE_NAME} from {WEIGHTS_URL}"
            ) from err


def _inception_extractor(weights_path: Optional[str], device: torch.device) -> FeatureExtractor:
    model = load_inception(str(resolve_inception_weights(weights_path))).to(device)
    return lambda images: model(images)[0]


#: feature networks by name (the hook for another network: :func:`register_feature_extractor`)
FEATURE_EXTRACTORS: dict[str, ExtractorFactory] = {INCEPTION: _inception_extractor}


def register_feature_extractor(name: str, factory: ExtractorFactory, replace: bool = False) -> None:
    """Make ``factory(weights_path, device) -> extractor`` available as ``name`` (``cmkit eval --fid-extractor``).

    The extractor maps uint8 RGB images ``[B, 3, H, W]`` on ``device`` to features ``[B, D]``. Values measured
    with any network but :data:`INCEPTION` are not FID and are labelled with the network's name.
    """
    if name in FEATURE_EXTRACTORS and not replace:
        raise ValueError(f"a feature extractor named {name!r} is registered already; pass replace=True to replace it")
    FEATURE_EXTRACTORS[name] = factory


def load_feature_extractor(
    name: str = INCEPTION, weights_path: Optional[PathLike] = None, device: Union[str, torch.device] = "cpu"
) -> FeatureExtractor:
    """The registered feature network ``name`` on ``device`` (for Inception: local weights, the ``fid`` extra)."""
    check_choice("feature extractor", name, FEATURE_EXTRACTORS)
    return FEATURE_EXTRACTORS[name](None if weights_path is None else str(weights_path), torch.device(device))


def quantize_uint8(images: Tensor) -> Tensor:
    """Model-space images (``[-1, 1]``) as the uint8 pixels of their PNG files, as EDM writes them.

    ``floor(127.5 x + 128)`` clipped to [0, 255] (EDM ``generate.py``), i.e. ``round(255 y)`` with halves rounded
    up for ``y = (x + 1) / 2``. Papers measure FID on these 8-bit images, not on the float samples.
    """
    x = images if images.dtype == torch.float64 else images.float()
    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def to_uint8_rgb(images: Tensor) -> Tensor:
    """``[N, C, H, W]`` images (uint8, or float in [0, 1]; C = 1 or 3) as uint8 RGB, what the Inception expects.

    Floats are quantised by :func:`quantize_uint8`; one channel is repeated three times (as EDM's ``fid.py`` does).
    """
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
        x = quantize_uint8(images * 2 - 1)
    else:
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_features(
    images: Tensor, weights_path: str | os.PathLike | None = None, batch_size: int = 50, device: str = "cpu"
) -> Tensor:
    """2048-d Inception pool features ``[N, 2048]`` (float64) of ``[N, C, H, W]`` images (see :func:`to_uint8_rgb`)."""
    x = to_uint8_rgb(images)
    extractor = load_feature_extractor(INCEPTION, weights_path, device)
    return torch.cat([extract_features(extractor, chunk, device) for chunk in x.split(batch_size)])


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: Tensor, device: Union[str, torch.device]) -> Tensor:
    """``extractor``'s features ``[B, D]`` (float64, on the CPU) of uint8 images ``[B, 1 or 3, H, W]``."""
    if images.dtype != torch.uint8:
        raise ValueError(f"feature extractors take uint8 images, got {images.dtype}; quantise with quantize_uint8")
    features = extractor(to_uint8_rgb(images).to(device))
    if features.ndim != 2 or features.shape[0] != images.shape[0]:
        raise ValueError(f"a feature extractor must return [B, D] features, got {tuple(features.shape)}")
    return features.detach().to("cpu", torch.float64)


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
    """All images under ``directory`` (recursively, sorted by path) as uint8 RGB ``[N, 3, H, W]``; one size.

    Everything is held in memory; for large sets stream them (:func:`cmkit.metrics.image_sets.open_image_set`).
    """
    from ..data.folder import load_image_folder as decode_folder

    return decode_folder(directory, resize="none", channels=3, class_labels=False).images


def fid_from_folders(
    directory_1: str | os.PathLike, directory_2: str | os.PathLike, weights_path: str | os.PathLike | None = None,
    batch_size: int = 50, device: str = "cpu",
) -> float:
    """FID between two folders of images."""
    return fid(load_image_folder(directory_1), load_image_folder(directory_2), weights_path, batch_size, device)
