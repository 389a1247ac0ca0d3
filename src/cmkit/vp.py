"""The discrete variance-preserving (VP) world of DDPM / latent diffusion viewed in EDM's sigma space, and the
trajectory consistency function of TCD (Zheng et al. 2024, "Trajectory Consistency Distillation").

A VP timestep ``tau`` of a beta schedule has ``alpha_bar_tau`` and ``x_vp = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``
(Ho et al. 2020, eq. 4). Dividing by ``sqrt(alpha_bar)`` gives EDM's ``x_sigma = x0 + sigma eps`` with
``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` (Karras et al. 2022, sec. 2 and table 1: VP is EDM with ``s(t) =
sqrt(alpha_bar)``). So an EDM denoiser ``D(x_sigma, sigma)`` *is* an x0-predicting VP model, exactly:
``x0_hat(x_vp, tau) = D(x_vp / sqrt(alpha_bar_tau), sigma_tau)``; this is how cmkit's EDM teachers drive
``TCDScheduler`` and how TCD distils them.

The trajectory consistency function (TCD sec. 4.1, the first-order "semi-linear" form, i.e. one DDIM / DPM-Solver-1
step from ``t`` to ``s <= t`` with the network's x0): in EDM coordinates
``f(x_t, t, s) = (sigma_s / sigma_t) x_t + (1 - sigma_s / sigma_t) D_theta(x_t, sigma_t, s)``, which is
``sqrt(alpha_bar_s)``-scaled the VP form ``x_s = (sigma'_s / sigma'_t) x_t + (alpha_s - alpha_t sigma'_s / sigma'_t) x0``
(``sigma' = sqrt(1 - alpha_bar)``, ``alpha = sqrt(alpha_bar)``). Written with the ratio first, ``f(x, t, t) = x``
holds exactly in floating point (``1 * x + 0 * D``).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from .karras import append_dims

SigmaLike = Union[float, Tensor]


def vp_sigma(alpha_bar: Tensor) -> Tensor:
    """EDM's ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` of a VP timestep (EDM table 1, VP column)."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def vp_alpha_bar(sigma: Tensor) -> Tensor:
    """The inverse of :func:`vp_sigma`: ``alpha_bar = 1 / (1 + sigma^2)``."""
    return 1 / (1 + sigma**2)


def vp_to_edm_x(x_vp: Tensor, alpha_bar: Tensor) -> Tensor:
    """``x_sigma = x_vp / sqrt(alpha_bar)`` (per-sample ``alpha_bar`` of shape ``[B]`` or a scalar)."""
    return x_vp / _per_sample(alpha_bar, x_vp).sqrt()


def edm_to_vp_x(x_sigma: Tensor, alpha_bar: Tensor) -> Tensor:
    """``x_vp = sqrt(alpha_bar) x_sigma``, the inverse of :func:`vp_to_edm_x`."""
    return x_sigma * _per_sample(alpha_bar, x_sigma).sqrt()


def trajectory_consistency(x_t: Tensor, denoised: Tensor, sigma_t: SigmaLike, sigma_s: SigmaLike) -> Tensor:
    """TCD's ``f(x_t, t, s) = (sigma_s / sigma_t) x_t + (1 - sigma_s / sigma_t) x0_hat`` in EDM coordinates
    (TCD sec. 4.1, first order; one DDIM step with the network's ``x0_hat``); ``f(x, t, t) = x`` exactly."""
    ratio = _per_sample(torch.as_tensor(sigma_s, device=x_t.device) / sigma_t, x_t)
    return ratio * x_t + (1 - ratio) * denoised


def _per_sample(value: Tensor, like: Tensor) -> Tensor:
    value = torch.as_tensor(value, device=like.device)
    return append_dims(value.flatten(), like.ndim).to(like.dtype) if value.ndim else value.to(like.dtype)
