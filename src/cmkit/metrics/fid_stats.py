"""FID statistics: the mean and covariance of a set's features, accumulated in a stream, saved and loaded.

FID (Heusel et al. 2017, eq. 6) compares two Gaussians ``N(mu, Sigma)`` fitted to feature sets. The moments are
accumulated batch by batch in float64, as EDM's ``fid.py`` does,

    mu = (1/n) sum_i f_i,    Sigma = (sum_i f_i f_i^T - n mu mu^T) / (n - 1),

so no set of images or features is ever held whole.

Files: an ``.npz`` with ``mu`` ``[D]`` and ``sigma`` ``[D, D]`` (EDM's ``fid-refs/*.npz``, clean-fid's and
OpenAI's reference batches; cmkit adds ``num_images`` and ``extractor``), or torch-fidelity's cached
statistics (a ``.pt`` dict with ``mu`` and ``sigma``, read through ``torch.load(weights_only=True)`` with only
NumPy's array reconstruction allowed). Files without an ``extractor`` entry are taken to be Inception-v3
statistics. cmkit writes ``.npz`` files atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..io.atomic import atomic_path
from ..io.npz import npz_headers
from ..limits import require_memory
from .fid import INCEPTION, FeatureExtractor, extract_features
from .image_sets import open_image_set

PathLike = Union[str, os.PathLike]
#: torch-fidelity's statistics files are pickled dicts of NumPy arrays
TORCH_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class FidStats:
    """``mu`` ``[D]`` and ``sigma`` ``[D, D]`` (float64) of a set's features; how many images, which network."""

    mu: np.ndarray
    sigma: np.ndarray
    num_images: Optional[int] = None
    extractor: str = INCEPTION

    def __post_init__(self) -> None:
        d = self.mu.shape[0] if self.mu.ndim == 1 else -1
        if d < 1 or self.sigma.shape != (d, d):
            raise ValueError(
                f"FID statistics need mu [D] and sigma [D, D], got {self.mu.shape} and {self.sigma.shape}"
            )
        if not (np.isfinite(self.mu).all() and np.isfinite(self.sigma).all()):
            raise ValueError("FID statistics contain NaN or infinite values; recompute them from the images")

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mu.shape[0])


class FeatureMoments:
    """Running ``n``, ``sum f`` and ``sum f f^T`` (float64, CPU) of feature batches; :meth:`stats` gives ``FidStats``."""

    def __init__(self) -> None:
        self.count = 0
        self.total: Optional[Tensor] = None
        self.outer: Optional[Tensor] = None

    def add(self, features: Tensor) -> None:
        """Add features ``[B, D]``."""
        if features.ndim != 2 or features.shape[0] < 1:
            raise ValueError(f"features must have shape [B, D] with B >= 1, got {tuple(features.shape)}")
        f = features.detach().to("cpu", torch.float64)
        if not torch.isfinite(f).all():
            raise ValueError("features contain NaN or infinite values; check the images and the feature network")
        if self.total is None:
            d = f.shape[1]
            require_memory(2 * d * d * 8, f"FID moments of {d}-d features", "use a feature network with fewer features")
            self.total, self.outer = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
        elif f.shape[1] != self.total.shape[0]:
            raise ValueError(f"features changed dimension from {self.total.shape[0]} to {f.shape[1]}")
        self.count += f.shape[0]
        self.total += f.sum(dim=0)
        self.outer += f.T @ f

    def stats(self, extractor: str = INCEPTION) -> FidStats:
        """Mean and unbiased covariance of everything added."""
        if self.count < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {self.count}")
        mu = self.total / self.count
        sigma = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return FidStats(mu.numpy(), (0.5 * (sigma + sigma.T)).numpy(), self.count, extractor)


def stats_of_images(
    batches: Iterable[Tensor], extractor: FeatureExtractor, extractor_name: str = INCEPTION,
    device: Union[str, torch.device] = "cpu",
) -> FidStats:
    """FID statistics of uint8 image batches ``[B, 1 or 3, H, W]``, one batch of features at a time."""
    moments = FeatureMoments()
    for batch in batches:
        moments.add(extract_features(extractor, batch, device))
    return moments.stats(extractor_name)


def save_stats(path: PathLike, stats: FidStats) -> Path:
    """Write ``stats`` to the ``.npz`` at ``path`` atomically (keys ``mu``, ``sigma``, ``num_images``, ``extractor``)."""
    p = Path(path)
    if p.suffix != ".npz":
        raise ValueError(f"FID statistics are saved as .npz, got {p}; name the file e.g. {p.with_suffix('.npz').name}")
    with atomic_path(p) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, mu=stats.mu, sigma=stats.sigma, num_images=np.int64(stats.num_images or 0),
                 extractor=np.array(stats.extractor))
    return p


def _load_torch_fidelity_stats(path: Path) -> dict:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed = [
        _reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype,
        *{type(np.dtype(t)) for t in (np.float32, np.float64)},
    ]
    with torch.serialization.safe_globals(allowed):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - re-raised with what the file should hold
            raise ValueError(
                f"could not read {path} as torch-fidelity statistics (a dict with 'mu' and 'sigma'): {err}"
            ) from err


def load_stats(path: PathLike) -> FidStats:
    """FID statistics from an ``.npz`` (EDM / clean-fid / OpenAI / cmkit) or a torch-fidelity ``.pt`` file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"FID statistics file not found: {p}")
    if p.suffix.lower() in TORCH_SUFFIXES:
        data = _load_torch_fidelity_stats(p)
        if not isinstance(data, dict) or "mu" not in data or "sigma" not in data:
            raise ValueError(f"{p} is not a torch-fidelity statistics file: expected a dict with 'mu' and 'sigma'")
        mu, sigma = (np.asarray(torch.as_tensor(data[k]).numpy(), dtype=np.float64) for k in ("mu", "sigma"))
        return FidStats(mu, sigma)
    headers = npz_headers(p)
    if "mu" not in headers or "sigma" not in headers:
        raise ValueError(f"{p} holds no FID statistics: expected arrays 'mu' and 'sigma', found {sorted(headers)}")
    require_memory(sum(h.nbytes for k, h in headers.items() if k in ("mu", "sigma")), f"the statistics in {p}",
                   "check that the file holds FID statistics")
    with np.load(p, allow_pickle=False) as data:
        num_images = int(data["num_images"]) if "num_images" in data else 0
        extractor = str(data["extractor"]) if "extractor" in data else INCEPTION
        return FidStats(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), num_images or None,
                        extractor)


def is_stats_file(path: PathLike) -> bool:
    """Whether ``path`` names a statistics file (a ``.pt``, or an ``.npz`` with ``mu`` and ``sigma``), not images."""
    p = Path(path).expanduser()
    if not p.is_file():
        return False
    if p.suffix.lower() in TORCH_SUFFIXES:
        return True
    return p.suffix.lower() == ".npz" and {"mu", "sigma"} <= set(npz_headers(p))


def reference_stats(
    source: PathLike, extractor: FeatureExtractor, extractor_name: str = INCEPTION, *,
    device: Union[str, torch.device] = "cpu", batch_size: int = 64, save_to: Optional[PathLike] = None,
) -> FidStats:
    """The reference statistics of ``source``: read from a statistics file, or computed from an image set (a folder,
    or an ``.npz`` of uint8 images) and then saved to ``save_to`` (an ``.npz``) when given."""
    if is_stats_file(source):
        stats = load_stats(source)
    else:
        images = open_image_set(source)
        if images.num_images < 2:
            raise ValueError(f"{source} holds {images.num_images} image(s); reference statistics need the dataset")
        stats = stats_of_images(images.batches(batch_size), extractor, extractor_name, device)
    if save_to is not None:
        save_stats(save_to, stats)
    return stats


def check_compatible(reference: FidStats, extractor_name: str, dim: Optional[int] = None) -> None:
    """Refuse a reference measured with another feature network (or of another dimension) than the samples."""
    if reference.extractor != extractor_name:
        raise ValueError(
            f"the reference statistics were computed with the feature network {reference.extractor!r}, the samples "
            f"use {extractor_name!r}; recompute the reference with the same network"
        )
    if dim is not None and dim != reference.dim:
        raise ValueError(f"the reference statistics have {reference.dim}-d features, the network gives {dim}-d")
