"""TrigFlow math for continuous-time consistency models, written once.

Notation follows Lu & Song, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models" (sCM, 2024):

* TrigFlow (sCM sec. 2, eq. 1-2): ``x_t = cos(t) x0 + sin(t) z``, ``z ~ N(0, sigma_d^2 I)``, ``t in [0, pi/2]``.
  At ``t = pi/2`` the sample is pure noise of std ``sigma_d``.
* The link to EDM's variance-exploding ``x_sigma = x0 + sigma eps`` (sCM sec. 2, "TrigFlow ... is a special case
  of EDM"): ``sigma = sigma_d tan(t)`` and ``x_t = cos(t) x_sigma`` (since ``cos t (x0 + sigma_d tan t eps) =
  cos t x0 + sin t sigma_d eps``).
* The consistency function (sCM sec. 3, eq. 7-8):
  ``f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, c_noise(t))``; ``f(x, 0) = x`` exactly.
  ``sigma_d F`` is the model's estimate of the PF-ODE velocity ``dx_t/dt`` (sCM eq. 3-4).
* The network's time input. The paper uses ``c_noise(t) = t`` with a positional embedding (sCM sec. 4.1).
  cmkit networks take a ``timestep`` (diffusers' ``UNet2DModel`` embeds it sinusoidally; the EDM networks use
  ``timestep / 1000``, :func:`cmkit.karras.edm_noise_label`), so a TrigFlow network receives
  ``timestep = 1000 t`` (:func:`trigflow_timestep`): the EDM networks then see exactly the paper's
  ``c_noise(t) = t``, and ``UNet2DModel``'s sinusoidal (positional) embedding sees ``[0, 1570.8]``, the range of
  DDPM timesteps it was built for. The scheduler's timesteps stay TrigFlow times in radians, as diffusers'
  ``SCMScheduler`` holds them; a pipeline converts them with :func:`trigflow_timestep` before the network, as
  diffusers' SANA-Sprint pipeline converts its scheduler's ``t`` before its transformer.
* The "edm" time input (:func:`trigflow_network_input`), for a network trained as an EDM denoiser (sCD's student
  initialised from an EDM teacher): ``F(x_t, t) = -F_net(x_t / sigma_d, 250 ln(sigma_d tan t))``. EDM's
  preconditioning (Karras et al. 2022, Table 1) at ``sigma = sigma_d tan t`` has ``c_in x_sigma = x_t / sigma_d``,
  ``c_skip = cos^2 t``, ``c_out = sigma_d sin t``, so ``D = cos(t) x_t + sin(t) sigma_d F_net``; sCM eq. 8 gives
  ``f = cos(t) x_t - sin(t) sigma_d F``, hence ``F = -F_net`` at EDM's ``c_noise(sigma)``: with these weights the
  TrigFlow model's ``f`` is exactly the EDM denoiser, so the teacher's time conditioning (and output sign) stay
  meaningful. A pipeline records the choice in its ``SCMScheduler`` config (``time_input``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .karras import SIGMA_DATA, SIGMA_MAX, SigmaLike, append_dims, sigma_to_timestep

#: the noise end of TrigFlow time: ``x_{pi/2} = z``.
T_MAX = math.pi / 2
#: network timestep per unit of TrigFlow time (radians): ``timestep = 1000 t``; EDM networks then see ``c_noise = t``.
TIMESTEP_SCALE = 1000.0
#: how a TrigFlow network receives time: "trigflow" (``1000 t``, sCM) or "edm" (EDM's ``c_noise``, sign flipped).
TimeInput = Literal["trigflow", "edm"]
TIME_INPUTS: tuple[str, ...] = ("trigflow", "edm")
#: the paper's 2-step sampling: ``t = pi/2`` then ``t = 1.1`` (sCM sec. 6 / appendix).
DEFAULT_INTERMEDIATE_T = 1.1


def _per_sample(t: SigmaLike, x: Tensor) -> SigmaLike:
    """``t`` broadcast over ``x`` when it holds one value per sample (``[B]``); floats and 0-d tensors unchanged."""
    if isinstance(t, Tensor) and t.ndim > 0:
        return append_dims(t, x.ndim)
    return t


def _cos_sin(t: SigmaLike) -> tuple[SigmaLike, SigmaLike]:
    if isinstance(t, Tensor):
        return torch.cos(t), torch.sin(t)
    if isinstance(t, np.ndarray):
        return np.cos(t), np.sin(t)
    return math.cos(t), math.sin(t)


def sigma_to_t(sigma: SigmaLike, sigma_data: float = SIGMA_DATA) -> SigmaLike:
    """TrigFlow time of EDM noise level ``sigma``: ``t = arctan(sigma / sigma_d)`` (sCM sec. 2)."""
    if isinstance(sigma, Tensor):
        return torch.atan(sigma / sigma_data)
    if isinstance(sigma, np.ndarray):
        return np.arctan(sigma / sigma_data)
    return math.atan(sigma / sigma_data)


def t_to_sigma(t: SigmaLike, sigma_data: float = SIGMA_DATA) -> SigmaLike:
    """EDM noise level of TrigFlow time ``t``: ``sigma = sigma_d tan(t)`` (sCM sec. 2); ``t = pi/2`` is infinite."""
    if isinstance(t, Tensor):
        return sigma_data * torch.tan(t)
    if isinstance(t, np.ndarray):
        return sigma_data * np.tan(t)
    return sigma_data * math.tan(t)


def edm_to_trigflow_x(x_sigma: Tensor, t: SigmaLike) -> Tensor:
    """TrigFlow sample ``x_t = cos(t) x_sigma`` of EDM's ``x_sigma = x0 + sigma eps`` at ``sigma = sigma_d tan t``."""
    return _cos_sin(_per_sample(t, x_sigma))[0] * x_sigma


def trigflow_to_edm_x(x_t: Tensor, t: SigmaLike) -> Tensor:
    """EDM sample ``x_sigma = x_t / cos(t)`` of TrigFlow's ``x_t`` (``t < pi/2``)."""
    return x_t / _cos_sin(_per_sample(t, x_t))[0]


def x0_from_velocity(x_t: Tensor, t: SigmaLike, velocity: Tensor) -> Tensor:
    """The clean estimate ``cos(t) x_t - sin(t) v`` from a velocity ``v = sigma_d F`` (sCM eq. 8).

    Exact at the ODE: with ``v = dx_t/dt = cos(t) z - sin(t) x0`` it returns ``x0``.
    """
    cos_t, sin_t = _cos_sin(_per_sample(t, x_t))
    return cos_t * x_t - sin_t * velocity


def trigflow_consistency(x_t: Tensor, t: SigmaLike, F_out: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """The sCM consistency function ``f(x_t, t) = cos(t) x_t - sin(t) sigma_d F`` (sCM eq. 8); ``f(x, 0) = x``."""
    return x0_from_velocity(x_t, t, sigma_data * F_out)


def trigflow_F_from_denoised(x_t: Tensor, t: SigmaLike, denoised: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """The TrigFlow output ``F`` whose consistency function equals the clean estimate ``denoised`` at ``t > 0``.

    Solving ``denoised = cos(t) x_t - sin(t) sigma_d F`` for ``F``: ``F = (cos(t) x_t - denoised) / (sin(t) sigma_d)``.
    With ``denoised = D(x_t / cos t, sigma_d tan t)`` this views an EDM denoiser or a CM consistency function as
    a TrigFlow model (sCM sec. 2: the EDM and TrigFlow parameterizations describe the same ODE).
    """
    cos_t, sin_t = _cos_sin(_per_sample(t, x_t))
    return (cos_t * x_t - denoised) / (sin_t * sigma_data)


def trigflow_timestep(t: SigmaLike) -> SigmaLike:
    """THE network time input of a cmkit TrigFlow model: ``timestep = 1000 t`` (``t`` in radians).

    EDM networks turn it into ``c_noise = timestep / 1000 = t`` (sCM sec. 4.1); see the module docstring. A tensor is
    scaled by a constant of its own dtype and device: under ``torch.func.jvp`` a Python number becomes a float64
    tensor on ``t``'s device, which MPS cannot hold.
    """
    if isinstance(t, torch.Tensor):
        return t * torch.full((), TIMESTEP_SCALE, dtype=t.dtype, device=t.device)
    return TIMESTEP_SCALE * t


def trigflow_renoise(x0: Tensor, t_next: SigmaLike, z: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """Move a clean estimate to TrigFlow time ``t_next``: ``cos(t) x0 + sin(t) (sigma_d z)``, ``z ~ N(0, I)``.

    The re-noising of sCM's multistep sampler (sCM appendix, Algorithm "sCM sampling"); ``z * sigma_d`` is formed
    first, as diffusers' ``SCMScheduler`` does, so the two agree bit for bit.
    """
    cos_t, sin_t = _cos_sin(_per_sample(t_next, x0))
    return cos_t * x0 + sin_t * (z * sigma_data)


def trigflow_network_input(
    t: SigmaLike, time_input: TimeInput = "trigflow", sigma_data: float = SIGMA_DATA
) -> tuple[SigmaLike, float]:
    """The network's ``timestep`` at TrigFlow time ``t`` and the sign ``s`` with ``F = s F_net(x_t / sigma_d, timestep)``.

    ``"trigflow"``: ``(1000 t, +1)`` (:func:`trigflow_timestep`). ``"edm"``: ``(250 ln(sigma_d tan t), -1)``, EDM's
    ``c_noise(sigma)`` at ``sigma = sigma_d tan t`` (module docstring), with ``t`` capped at ``arctan(sigma_max /
    sigma_d)`` (``sigma_max = 80``, the largest level an EDM network is trained and sampled at) so that
    ``t = pi/2`` (pure noise) gives a finite input.
    """
    if time_input == "trigflow":
        return trigflow_timestep(t), 1.0
    if time_input != "edm":
        raise ValueError(f"time_input must be one of {', '.join(map(repr, TIME_INPUTS))}, got {time_input!r}")
    t_cap = math.atan(SIGMA_MAX / sigma_data)
    if isinstance(t, Tensor):
        t = t.clamp(max=t_cap)
    elif isinstance(t, np.ndarray):
        t = np.minimum(t, t_cap)
    else:
        t = min(t, t_cap)
    return sigma_to_timestep(t_to_sigma(t, sigma_data)), -1.0
