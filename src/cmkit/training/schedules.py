"""Discretisation curricula and noise-level distributions of consistency training.

* CT (Song et al. 2023, appendix C, "Consistency Training"): the number of grid points ``N(k)`` grows with
  the step ``k`` and the target EMA rate ``mu(k)`` follows it:
  ``N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1`` and ``mu(k) = exp(s0 ln(mu0) / N(k))``.
* iCT (Song & Dhariwal 2023, sec. 3.4 and eq. 11): exponential curriculum
  ``N(k) = min(s0 2^floor(k/K'), s1) + 1`` with ``K' = floor(K / (log2 floor(s1/s0) + 1))``, and the
  discrete lognormal distribution over adjacent grid pairs
  ``p(i) ∝ erf((ln sigma_{i+1} - P_mean)/(sqrt 2 P_std)) - erf((ln sigma_i - P_mean)/(sqrt 2 P_std))``.
* ECT (Geng et al. 2024, sec. 3 "mapping function"): ``r(t) = max(0, t (1 - q^-(stage+1) (1 + k sigmoid(-b t))))``.

Karras grids themselves come from :mod:`cmkit.karras`; this module only picks *how many* points and
*which* pair. Grids here are descending (index 0 = ``sigma_max``), so pair ``j`` is
``(sigmas[j], sigmas[j+1])`` with ``sigmas[j] > sigmas[j+1]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validate import require_int, require_positive
from ..karras import RHO, SIGMA_MAX, SIGMA_MIN, karras_sigmas


def _check_progress(k: int, total_steps: int) -> None:
    require_int("total_steps", total_steps, 1)
    require_int("the step k", k, 0)


def ct_num_scales(k: int, total_steps: int, s0: int = 2, s1: int = 150) -> int:
    """CT's adaptive ``N(k)`` (CM appendix C, Table 3): the number of Karras grid points at step ``k``."""
    _check_progress(k, total_steps)
    if s0 < 1 or s1 < s0:
        raise ValueError(f"need 1 <= s0 <= s1, got s0={s0}, s1={s1}")
    frac = min(k, total_steps) / total_steps
    return int(math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1.0)) + 1


def ct_target_ema(k: int, total_steps: int, s0: int = 2, s1: int = 150, mu0: float = 0.95) -> float:
    """CT's target EMA rate ``mu(k) = exp(s0 ln(mu0) / N(k))`` (CM appendix C); ``mu0 = 0`` gives ``mu = 0``.

    The paper's formula. OpenAI's ``cm/script_util.py`` divides by ``N(k) - 1`` instead (its ``scales`` before the
    final ``+ 1``), so its ``mu`` starts at ``mu0^2`` and is slightly lower throughout (ImageNet-64's target budget,
    :func:`ct_target_budget`, is 817 there against 799 here). ``mu0 = 0`` makes the target the online network
    under stop-gradient, as in iCT.
    """
    if not 0.0 <= mu0 < 1.0:
        raise ValueError(f"mu0 must lie in [0, 1) (0: the online network as target), got {mu0}")
    num_scales = ct_num_scales(k, total_steps, s0, s1)
    return 0.0 if mu0 == 0.0 else math.exp(s0 * math.log(mu0) / num_scales)


def ct_target_budget(total_steps: int, s0: int = 2, s1: int = 150, mu0: float = 0.95) -> float:
    """The target's movement budget ``sum_{k<K} (1 - mu(k))`` of a CT run of ``K = total_steps`` steps.

    Each EMA update moves ``theta^-`` the fraction ``1 - mu(k)`` of the way to ``theta``, so the sum counts how
    many times, in all, the target catches up with the online network. The consistency signal climbs from the
    boundary ``f(x, sigma_min) = x`` to ``sigma_max`` only as fast as the target follows: OpenAI's CT runs have
    799 (ImageNet-64: K = 800k, s1 = 200) and 1321 (LSUN 256: K = 1M, s1 = 150); see docs/training.md, "CT's
    target budget rule". ``mu(k)`` is constant while ``N(k)`` is, so the sum runs over the steps where ``N(k)``
    changes (a bisection each), not over every step.
    """
    _check_progress(0, total_steps)
    budget, k = 0.0, 0
    while k < total_steps:
        num_scales = ct_num_scales(k, total_steps, s0, s1)
        lo, hi = k + 1, total_steps  # the first step with more points than k (N(k) is non-decreasing)
        while lo < hi:
            mid = (lo + hi) // 2
            if ct_num_scales(mid, total_steps, s0, s1) > num_scales:
                hi = mid
            else:
                lo = mid + 1
        budget += (lo - k) * (1.0 - ct_target_ema(k, total_steps, s0, s1, mu0))
        k = lo
    return budget


def ict_stage_length(total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's ``K' = floor(K / (log2 floor(s1/s0) + 1))``: steps between doublings of ``N`` (at least 1)."""
    if s0 < 1 or s1 < s0:
        raise ValueError(f"need 1 <= s0 <= s1, got s0={s0}, s1={s1}")
    require_int("total_steps", total_steps, 1)
    return max(1, int(total_steps // (math.floor(math.log2(s1 // s0)) + 1)))


def ict_num_scales(k: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's exponential curriculum ``N(k) = min(s0 2^floor(k/K'), s1) + 1`` (iCT sec. 3.4)."""
    _check_progress(k, total_steps)
    doublings = k // ict_stage_length(total_steps, s0, s1)
    if doublings >= 63:  # s0 * 2^63 is certainly past s1
        return s1 + 1
    return min(s0 * 2**doublings, s1) + 1


def training_grid(
    num_points: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> Tensor:
    """The descending ``num_points``-point Karras grid used for training pairs (float64, from :mod:`cmkit.karras`)."""
    return karras_sigmas(num_points, sigma_min, sigma_max, rho)


def lognormal_pair_probs(sigmas: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """Probabilities of the adjacent pairs of a descending grid under iCT's discrete lognormal (iCT eq. 11).

    Pair ``j`` is ``(sigmas[j], sigmas[j+1])``; its mass is the lognormal probability of the interval between
    them, renormalised to sum to 1 over the ``len(sigmas) - 1`` pairs.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"need a 1-d grid of at least 2 sigmas, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas[:-1] > sigmas[1:]).all()) or not bool((sigmas > 0).all()):
        raise ValueError("the grid must be positive and strictly descending (index 0 = sigma_max)")
    require_positive("p_std", p_std)
    cdf = torch.erf((torch.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    mass = cdf[:-1] - cdf[1:]
    total = mass.sum()
    if not bool(total > 0):
        raise ValueError("the lognormal puts no mass on this grid; check p_mean / p_std against the sigma range")
    return mass / total


def ect_r(t: Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> Tensor:
    """ECT's mapping ``r(t) = max(0, t (1 - q^-(stage+1) (1 + k sigmoid(-b t))))`` (Geng et al. 2024, sec. 3)."""
    require_int("stage", stage, 0)
    if q <= 1.0:
        raise ValueError(f"q must be > 1 so that r(t) -> t as the stage grows, got {q}")
    decay = q ** -(stage + 1)
    ratio = 1.0 - decay * (1.0 + k * torch.sigmoid(-b * t))
    return (t * ratio).clamp_min(0.0)


def ect_stage(step: int, steps_per_stage: int) -> int:
    """ECT's stage at ``step``: it doubles the tightness of ``r(t)`` every ``steps_per_stage`` steps."""
    require_int("steps_per_stage", steps_per_stage, 1)
    require_int("step", step, 0)
    return step // steps_per_stage
