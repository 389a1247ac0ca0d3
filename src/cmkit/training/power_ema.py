"""EDM2's power-function EMA and its post-hoc reconstruction (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", Section 3 and Appendix C).

**The profile.** At training time ``t`` the power-function EMA weighs the weights ``theta(tau)`` seen so far by

    p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),   0 <= tau <= t        (EDM2 Eq. 121)

which integrates to one; its width relative to ``t`` is ``sigma_rel``, the standard deviation of ``tau / t``
under ``p_t``:

    sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))                 (Eq. 123)

Inverting it means solving the cubic ``gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0``
for its largest real root (Eq. 126, Algorithm 2). ``sigma_rel`` falls from ``1 / sqrt(12) ~ 0.2887``
(``gamma = 0``: a uniform average of the whole run) toward 0 as ``gamma`` grows; EDM2 stores ``sigma_rel`` 0.05
and 0.10 (``gamma`` 16.97 and 6.94).

**Tracking it.** Updated after every step with ``ema <- beta(t) ema + (1 - beta(t)) theta_t`` and

    beta(t) = (1 - 1/t)^(gamma + 1)                                         (Eq. 127, one step per update)

the average after ``t`` steps gives the weights ``theta_tau`` after step ``tau`` (``tau = 1..t``) exactly
``prod_{s>tau} beta(s) (1 - beta(tau)) = (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1)``, the integral of
``p_t`` over ``(tau - 1, tau]``: the tracker is the profile applied to the step-wise constant trajectory, with
no approximation, and the initial weights get weight 0 (``beta(1) = 0``).

**Time unit.** ``t`` counts optimizer steps here (EDM2 counts training images, ``nimg``). cmkit's global batch
``B`` is fixed for a run (it cannot change on resume), so EDM2's ``1 - t_delta / t_next = 1 - B / (B t)`` is the
same ``1 - 1/t``, and every inner product below only scales by ``1 / B``, which leaves the reconstruction
coefficients unchanged. Snapshots record ``samples_seen = B t`` for reference.

**Post-hoc reconstruction.** Snapshots of averages with profiles ``p_i`` (times ``t_i``, exponents ``gamma_i``)
are combined as ``sum_i x_i theta_hat_i`` with ``x`` minimising ``|| sum_i x_i p_i - p* ||_2`` for the target
profile ``p*``: the normal equations ``A x = b`` with ``A_ij = <p_i, p_j>``, ``b_i = <p_i, p*>``, each inner
product in closed form (Eq. 151, Algorithm 3), and ``x`` scaled to sum to one (the profiles integrate to one).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from torch import nn

from .ema import WeightAverages

#: the largest sigma_rel a power-function profile with gamma >= 0 has (gamma = 0: a uniform average).
MAX_SIGMA_REL = math.sqrt(1.0 / 12.0)
#: relative L2 residual of the fitted profile above which a reconstruction is reported as poor.
RESIDUAL_WARNING = 0.05


def gamma_to_sigma_rel(gamma: float) -> float:
    """``sigma_rel`` of the power-function profile with exponent ``gamma`` (EDM2 Eq. 123)."""
    g = float(gamma)
    return math.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


def check_sigma_rel(name: str, value: Any) -> float:
    """``value`` as a float, or a ValueError naming ``name`` when it is not in ``(0, 1/sqrt(12))``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0.0 < value < MAX_SIGMA_REL:
        raise ValueError(
            f"{name} must be a relative standard deviation sigma_rel in (0, {MAX_SIGMA_REL:.4f}) (a power-function "
            f"EMA with exponent gamma > 0; EDM2 uses 0.05 and 0.10), got {value!r}"
        )
    return float(value)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent ``gamma > 0`` whose profile has relative standard deviation ``sigma_rel`` (EDM2 Eq. 126,
    Algorithm 2): the largest real root of ``g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2)``."""
    s = check_sigma_rel("sigma_rel", sigma_rel)
    inv = s**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    gamma = float(max(r.real for r in roots if abs(r.imag) <= 1e-9 * max(1.0, abs(r.real))))
    for _ in range(2):  # polish the eigenvalue root with Newton's method on the cubic
        f = ((gamma + 7.0) * gamma + 16.0 - inv) * gamma + 12.0 - inv
        gamma -= f / ((3.0 * gamma + 14.0) * gamma + 16.0 - inv)
    return gamma


def power_ema_beta(gamma: float, t: int) -> float:
    """The decay ``beta(t) = (1 - 1/t)^(gamma + 1)`` of the update after ``t`` optimizer steps (EDM2 Eq. 127)."""
    assert t >= 1, t
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def profile_inner_product(t_a: ArrayLike, gamma_a: ArrayLike, t_b: ArrayLike, gamma_b: ArrayLike) -> NDArray[np.float64]:
    """``<p_a, p_b> = integral of p_a(tau) p_b(tau) dtau`` of two power-function profiles (EDM2 Eq. 151), broadcast.

    With ``t_lo <= t_hi`` and ``gamma_hi`` the exponent of the later profile, the integral over ``[0, t_lo]`` is
    ``(gamma_a + 1)(gamma_b + 1) / ((gamma_a + gamma_b + 1) t_hi) * (t_lo / t_hi)^gamma_hi``.
    """
    ta, ga, tb, gb = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    t_lo, t_hi = np.minimum(ta, tb), np.maximum(ta, tb)
    gamma_hi = np.where(ta >= tb, ga, gb)
    return (ga + 1.0) * (gb + 1.0) / ((ga + gb + 1.0) * t_hi) * (t_lo / t_hi) ** gamma_hi


@dataclass(frozen=True)
class Reconstruction:
    """How to combine snapshots into the average of one target profile."""

    sigma_rel: float
    gamma: float
    t: float
    coefficients: NDArray[np.float64]  # one per snapshot, summing to one
    relative_residual: float  # || sum_i x_i p_i - p* || / || p* || of the continuous profiles


def solve_reconstruction(
    snapshot_t: Sequence[float], snapshot_gamma: Sequence[float], t: float, sigma_rel: float
) -> Reconstruction:
    """The least-squares combination of snapshot profiles ``(t_i, gamma_i)`` closest to the profile of
    ``sigma_rel`` at time ``t`` (EDM2 Algorithm 3), and how much of the target it leaves unexplained."""
    ts = np.asarray(snapshot_t, dtype=np.float64)
    gs = np.asarray(snapshot_gamma, dtype=np.float64)
    assert ts.ndim == 1 and ts.shape == gs.shape and ts.size > 0 and (ts > 0).all() and (ts <= t).all()
    gamma = sigma_rel_to_gamma(sigma_rel)
    gram = profile_inner_product(ts[:, None], gs[:, None], ts[None, :], gs[None, :])
    target = profile_inner_product(ts, gs, t, gamma)
    x = np.linalg.lstsq(gram, target, rcond=None)[0]  # the normal equations; lstsq tolerates repeated profiles
    x = x / x.sum()
    norm2 = float(profile_inner_product(t, gamma, t, gamma))
    residual2 = float(x @ gram @ x - 2.0 * x @ target + norm2)
    return Reconstruction(float(sigma_rel), gamma, float(t), x, math.sqrt(max(residual2, 0.0) / norm2))


def power_ema_key(sigma_rel: float) -> str:
    """A stable name for the power EMA of ``sigma_rel`` (checkpoint files), e.g. ``ema_std_0.05``."""
    return f"ema_std_{sigma_rel:.10g}"


class PowerEMA(WeightAverages):
    """Power-function EMAs of ``model``'s weights, one per ``sigma_rel`` (EDM2's ``--ema-std`` 0.05 0.10).

    Used like :class:`~cmkit.training.ema.EMA`: ``update(model, step)`` after optimizer step ``step`` (0-based,
    so ``t = step + 1``), ``copy_model``, and ``state_dict`` / ``load_state_dict`` for exact resume (the
    averages are all the state: ``beta`` depends on the step alone).
    """

    what = "std"

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float]) -> None:
        super().__init__(model, [check_sigma_rel("EMA std", s) for s in sigma_rels])
        self.stds = self.settings
        self.gammas = {s: sigma_rel_to_gamma(s) for s in self.stds}

    def decay(self, setting: float, step: int) -> float:
        return power_ema_beta(self.gammas[setting], step + 1)

    def key(self, setting: float) -> str:
        return power_ema_key(setting)
