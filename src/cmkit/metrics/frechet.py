"""The Fréchet distance between two Gaussians fitted to feature sets.

For ``N(mu_1, S_1)`` and ``N(mu_2, S_2)`` (Dowson & Landau 1982; the FID of Heusel et al. 2017, eq. 6):

    d^2 = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2)).

``tr((S_1 S_2)^(1/2))`` is computed without a general matrix square root: ``S_1 S_2`` is similar to the
symmetric PSD matrix ``M = S_1^(1/2) S_2 S_1^(1/2)``, so its square-root trace is the sum of the square roots
of ``M``'s eigenvalues. Two symmetric eigendecompositions in float64 are exact up to rounding even when the
covariances are singular (fewer samples than feature dimensions), where ``scipy.linalg.sqrtm`` of the
non-symmetric product can return complex noise.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _as_float64(x: ArrayLike, name: str) -> Tensor:
    # moved before the cast: MPS has no float64
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().cpu().to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the samples it was computed from")
    return t


def feature_statistics(features: ArrayLike) -> tuple[Tensor, Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``."""
    f = _as_float64(features, "features")
    if f.ndim != 2:
        raise ValueError(f"features must have shape [N, D], got {tuple(f.shape)}")
    if f.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {f.shape[0]}")
    mu = f.mean(dim=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def sqrtm_psd(matrix: ArrayLike) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped)."""
    m = _as_float64(matrix, "matrix")
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square, got shape {tuple(m.shape)}")
    m = 0.5 * (m + m.T)
    eigvals, eigvecs = torch.linalg.eigh(m)
    return (eigvecs * eigvals.clamp_min(0.0).sqrt()) @ eigvecs.T


def trace_sqrt_product(sigma_1: ArrayLike, sigma_2: ArrayLike) -> float:
    """``tr((S_1 S_2)^(1/2))`` for symmetric PSD ``S_1, S_2``, via the eigenvalues of ``S_1^(1/2) S_2 S_1^(1/2)``."""
    root_1 = sqrtm_psd(sigma_1)
    s2 = _as_float64(sigma_2, "sigma_2")
    middle = root_1 @ (0.5 * (s2 + s2.T)) @ root_1
    eigvals = torch.linalg.eigvalsh(0.5 * (middle + middle.T))
    return float(eigvals.clamp_min(0.0).sqrt().sum())


def frechet_distance(mu_1: ArrayLike, sigma_1: ArrayLike, mu_2: ArrayLike, sigma_2: ArrayLike) -> float:
    """Squared Fréchet (2-Wasserstein) distance between ``N(mu_1, sigma_1)`` and ``N(mu_2, sigma_2)``."""
    m1, m2 = _as_float64(mu_1, "mu_1"), _as_float64(mu_2, "mu_2")
    s1, s2 = _as_float64(sigma_1, "sigma_1"), _as_float64(sigma_2, "sigma_2")
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"means must be 1-d vectors of equal length, got {tuple(m1.shape)} and {tuple(m2.shape)}")
    d = m1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"covariances must be [{d}, {d}] to match the means, got {tuple(s1.shape)} and {tuple(s2.shape)}"
        )
    diff = m1 - m2
    value = float(diff @ diff) + float(s1.trace()) + float(s2.trace()) - 2.0 * trace_sqrt_product(s1, s2)
    return max(value, 0.0)


def frechet_distance_from_features(features_1: ArrayLike, features_2: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N_1, D]`` and ``[N_2, D]``."""
    mu_1, sigma_1 = feature_statistics(features_1)
    mu_2, sigma_2 = feature_statistics(features_2)
    return frechet_distance(mu_1, sigma_1, mu_2, sigma_2)
