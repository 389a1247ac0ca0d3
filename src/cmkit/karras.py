"""Sigma math for consistency models, written once.

Notation follows Song et al., "Consistency Models" (2023), and Karras et al., "Elucidating the Design Space
of Diffusion-Based Generative Models" (EDM, 2022):

* ``sigma_min`` (the paper's epsilon) = 0.002, ``sigma_max`` (T) = 80, ``rho`` = 7, ``sigma_data`` = 0.5.
* The Karras grid (EDM eq. 5; CM sec. 5): ``t_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.
  Index ``i = 0`` is ``sigma_max``, as in the diffusers / OpenAI timestep convention.
* A consistency function (CM eq. 3, appendix C): ``f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))``
  with ``c_skip = sigma_data^2 / ((sigma - eps)^2 + sigma_data^2)`` and
  ``c_out = (sigma - eps) sigma_data / sqrt(sigma^2 + sigma_data^2)``, so ``f(x, eps) = x`` exactly.
* An EDM denoiser (EDM table 1) uses ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)`` and
  ``c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)``.
* Both use ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)`` and, in the OpenAI / diffusers checkpoints, the network's
  noise input ``c_noise = 1000 * 0.25 * ln(sigma + 1e-44)``.
"""

from __future__ import annotations

import math
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
SIGMA_DATA = 0.5
RHO = 7.0

Parameterization = Literal["consistency", "edm", "trigflow", "tcd"]
#: every parameterization a Denoiser / pipeline may record ("trigflow": sCM, see cmkit.trigflow; "tcd": an EDM
#: denoiser, optionally conditioned on its target time, sampled in VP time by a TCDScheduler, see cmkit.vp).
PARAMETERIZATIONS: tuple[str, ...] = ("consistency", "edm", "trigflow", "tcd")
SigmaLike = Union[Tensor, np.ndarray, float]


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims to ``x`` until it has ``ndim`` dims (for per-sample broadcasting)."""
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"cannot broadcast a {x.ndim}-d tensor to {ndim} dims")
    return x.reshape(*x.shape, *([1] * missing))


def karras_sigmas_from_ramp(
    ramp: SigmaLike, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> SigmaLike:
    """Karras sigmas at positions ``ramp`` in [0, 1], where 0 is ``sigma_max`` and 1 is ``sigma_min`` (EDM eq. 5).

    ``ramp`` may be a tensor, a numpy array or a float; the result has the same type (numpy arrays give
    diffusers' float64 values bit for bit, since diffusers evaluates this formula in numpy).
    """
    min_inv_rho = sigma_min ** (1.0 / rho)
    max_inv_rho = sigma_max ** (1.0 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def karras_sigmas(
    n: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The N-point Karras grid, descending from ``sigma_max`` (index 0) to ``sigma_min`` (index N-1)."""
    if n < 2:
        raise ValueError(f"a Karras grid needs at least 2 points, got n={n}")
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    return karras_sigmas_from_ramp(ramp, sigma_min, sigma_max, rho).to(device=device, dtype=dtype)


def karras_grid_sigmas(
    indices: Tensor | list[int],
    num_points: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> Tensor:
    """Sigmas at integer ``indices`` of the ``num_points``-point Karras grid (index 0 = ``sigma_max``), in float64."""
    idx = torch.as_tensor(indices, dtype=torch.float64)
    if num_points < 2:
        raise ValueError(f"a Karras grid needs at least 2 points, got num_points={num_points}")
    if idx.numel() and (idx.min() < 0 or idx.max() > num_points - 1):
        raise ValueError(f"grid indices must lie in [0, {num_points - 1}], got {idx.tolist()}")
    return karras_sigmas_from_ramp(idx / (num_points - 1), sigma_min, sigma_max, rho)


def karras_ramp_from_sigma(
    sigma: SigmaLike, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> SigmaLike:
    """Inverse of :func:`karras_sigmas_from_ramp`: the position in [0, 1] of ``sigma`` (0 is ``sigma_max``)."""
    min_inv_rho = sigma_min ** (1.0 / rho)
    max_inv_rho = sigma_max ** (1.0 / rho)
    return (sigma ** (1.0 / rho) - max_inv_rho) / (min_inv_rho - max_inv_rho)


def sigma_to_grid_index(
    sigma: float,
    num_points: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
    *,
    interior: bool = False,
) -> int:
    """The index of the ``num_points``-point Karras grid whose sigma is nearest ``sigma`` (a 2-step tau -> ``[i, 0]``).

    With ``interior=True`` the end points (``sigma_max`` and ``sigma_min``) are excluded, as a multistep
    sampler's intermediate timesteps need.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    grid = karras_sigmas(num_points, sigma_min, sigma_max, rho)
    first, last = (1, num_points - 1) if interior else (0, num_points)
    if first >= last:
        raise ValueError(f"a grid of {num_points} points has no interior point")
    return first + int(torch.argmin((grid[first:last] - float(sigma)).abs()))


def consistency_scalings(
    sigma: SigmaLike, sigma_min: float = SIGMA_MIN, sigma_data: float = SIGMA_DATA
) -> tuple[SigmaLike, SigmaLike]:
    """Boundary-condition scalings ``(c_skip, c_out)`` of CM appendix C; ``f(x, sigma_min) = x`` exactly."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def edm_scalings(sigma: SigmaLike, sigma_data: float = SIGMA_DATA) -> tuple[SigmaLike, SigmaLike]:
    """EDM denoiser scalings ``(c_skip, c_out)`` (EDM table 1, "Ours")."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def output_scalings(
    sigma: SigmaLike,
    parameterization: Parameterization,
    sigma_min: float = SIGMA_MIN,
    sigma_data: float = SIGMA_DATA,
) -> tuple[SigmaLike, SigmaLike]:
    """``(c_skip, c_out)`` for a consistency function or an EDM denoiser."""
    if parameterization == "consistency":
        return consistency_scalings(sigma, sigma_min, sigma_data)
    if parameterization in ("edm", "tcd"):  # a TCD model is an EDM denoiser D(x, sigma[, s]) (cmkit.vp)
        return edm_scalings(sigma, sigma_data)
    raise ValueError(f"parameterization must be 'consistency', 'edm' or 'tcd', got {parameterization!r}")


def noised_std(sigma: SigmaLike, sigma_data: float = SIGMA_DATA) -> SigmaLike:
    """Standard deviation ``sqrt(sigma^2 + sigma_data^2)`` of ``y + sigma n`` for data of std ``sigma_data`` (EDM B.6)."""
    return (sigma**2 + sigma_data**2) ** 0.5


def c_in(sigma: SigmaLike, sigma_data: float = SIGMA_DATA) -> SigmaLike:
    """Input scaling ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)`` (EDM table 1; CM appendix C)."""
    return 1.0 / noised_std(sigma, sigma_data)


def sigma_to_timestep(sigma: SigmaLike) -> SigmaLike:
    """The network's noise input in the OpenAI / diffusers checkpoints: ``1000 * 0.25 * ln(sigma + 1e-44)``."""
    if isinstance(sigma, Tensor):
        return 250.0 * torch.log(sigma + 1e-44)
    if isinstance(sigma, np.ndarray):
        return 250.0 * np.log(sigma + 1e-44)
    return 250.0 * math.log(sigma + 1e-44)


def timestep_to_sigma(timestep: SigmaLike) -> SigmaLike:
    """Inverse of :func:`sigma_to_timestep` (up to the 1e-44 guard)."""
    if isinstance(timestep, Tensor):
        return torch.exp(timestep / 250.0)
    if isinstance(timestep, np.ndarray):
        return np.exp(timestep / 250.0)
    return math.exp(timestep / 250.0)


def edm_noise_label(timestep: SigmaLike) -> SigmaLike:
    """EDM's network noise input ``c_noise = ln(sigma) / 4`` (EDM table 1, "Ours"; EDM2's ``Precond``) from cmkit's
    ``timestep = sigma_to_timestep(sigma) = 250 ln sigma``: ``c_noise = timestep / 1000``.

    The EDM / EDM2 networks (``SongUNet``, ``DhariwalUNet``, ``EDM2UNet``) take cmkit's timestep, like every
    cmkit network, and feed their embeddings this label, so weights trained by the reference code load unchanged.
    """
    return timestep / 1000.0


def add_noise(x0: Tensor, sigma: SigmaLike, z: Tensor) -> Tensor:
    """The forward (variance-exploding) process ``x_sigma = x0 + sigma z``, ``z ~ N(0, I)`` (EDM eq. 2; CM sec. 2).

    ``sigma`` is a float, a 0-d tensor, or one level per sample (a ``[B]`` tensor, broadcast over the other
    dims); a 0-d tensor is left 0-d, so it does not promote a half-precision ``z``. ``z * sigma`` (not
    ``sigma * z``): with a 0-d float32 ``sigma`` and a bfloat16 ``z`` only this order rounds as diffusers does.
    """
    if isinstance(sigma, Tensor) and sigma.ndim > 0:
        sigma = append_dims(sigma, x0.ndim)
    return x0 + z * sigma


def renoise(denoised: Tensor, sigma_next: SigmaLike, noise: Tensor, sigma_min: float = SIGMA_MIN) -> Tensor:
    """Move a clean estimate to noise level ``sigma_next``: ``x + sqrt(sigma_next^2 - eps^2) z`` (CM Algorithm 1)."""
    return add_noise(denoised, (sigma_next**2 - sigma_min**2) ** 0.5, noise)
