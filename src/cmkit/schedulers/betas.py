"""Discrete-time (DDPM) noise schedules: betas, cumulative alphas and the zero-terminal-SNR rescale.

A discrete diffusion of ``T`` steps adds noise with variances ``beta_t``; ``alpha_t = 1 - beta_t`` and
``alpha_bar_t = prod_{s <= t} alpha_s``, so ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``
(Ho et al., "Denoising Diffusion Probabilistic Models", 2020, eq. 4). All schedules are float32, as the
published latent-diffusion checkpoints (and diffusers) use them.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence, get_args

import torch
from torch import Tensor

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)

#: offset ``s`` of the cosine schedule (Nichol & Dhariwal 2021, eq. 17).
COSINE_OFFSET = 0.008


def linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int) -> Tensor:
    """Betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, sec. 4)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)


def scaled_linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int) -> Tensor:
    """Betas whose square roots are evenly spaced (the latent-diffusion schedule, Rombach et al. 2022)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2


def cosine_alpha_bar(t: float) -> float:
    """``alpha_bar(t) = cos^2(((t + s) / (1 + s)) pi / 2)`` for ``t`` in [0, 1] (Nichol & Dhariwal 2021, eq. 17)."""
    return math.cos((t + COSINE_OFFSET) / 1.008 * math.pi / 2) ** 2


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> Tensor:
    """Betas ``1 - alpha_bar(t+1) / alpha_bar(t)`` of the cosine schedule, capped at ``max_beta`` (eq. 17)."""
    n = num_train_timesteps
    betas = [min(1 - cosine_alpha_bar((i + 1) / n) / cosine_alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    schedule: BetaSchedule,
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    trained_betas: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """The float32 betas of ``schedule`` (or ``trained_betas`` verbatim when given)."""
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float32).clone()
        if betas.ndim != 1 or len(betas) != num_train_timesteps:
            raise ValueError(
                f"trained_betas must be a flat list of num_train_timesteps={num_train_timesteps} values, got shape "
                f"{tuple(betas.shape)}; set num_train_timesteps to its length"
            )
        if not bool(torch.all((betas >= 0) & (betas <= 1))):
            raise ValueError("trained_betas must all lie in [0, 1]")
        return betas
    if schedule == "linear":
        return linear_betas(beta_start, beta_end, num_train_timesteps)
    if schedule == "scaled_linear":
        return scaled_linear_betas(beta_start, beta_end, num_train_timesteps)
    if schedule == "squaredcos_cap_v2":
        return cosine_betas(num_train_timesteps)
    raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {schedule!r}")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale ``betas`` so the last step has zero SNR (Lin et al. 2024, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", Algorithm 1).

    ``sqrt(alpha_bar)`` is shifted so its last value is 0 and scaled so its first value is unchanged; the
    betas are then recovered from the new ``alpha_bar``. The last beta becomes 1 (``alpha_bar_T = 0``).
    """
    sqrt_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first = sqrt_alpha_bar[0].clone()
    last = sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar -= last
    sqrt_alpha_bar *= first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[0:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def alphas_cumprod(betas: Tensor) -> Tensor:
    """``alpha_bar_t = prod_{s <= t} (1 - beta_s)`` (Ho et al. 2020, eq. 4)."""
    return torch.cumprod(1.0 - betas, dim=0)
