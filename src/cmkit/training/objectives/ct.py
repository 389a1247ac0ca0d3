"""Consistency training, original recipe (Song et al. 2023, Algorithm 3 and appendix C).

At step ``k`` the Karras grid has ``N(k)`` points (:func:`cmkit.training.schedules.ct_num_scales`); a pair
``sigma_{n+1} > sigma_n`` is drawn uniformly and both points share one ``z``:
``L = d(f_theta(x0 + sigma_{n+1} z, sigma_{n+1}), f_theta^-(x0 + sigma_n z, sigma_n))``. The target
``theta^-`` follows ``theta`` with the adaptive rate ``mu(k) = exp(s0 ln(mu0) / N(k))`` (``mu0 = 0``: the online
network under stop-gradient, iCT's choice). The paper uses LPIPS on images; l2 and pseudo-Huber are offered for
data without a perceptual metric.

A short run with the paper's ``mu0 = 0.95`` barely moves its target: the sum of ``1 - mu(k)`` over the run
(:func:`cmkit.training.schedules.ct_target_budget`) is 4 over 3000 steps, where OpenAI's runs have about 800, and
the model collapses. :func:`low_target_budget_message` says so at the start of a run (docs/training.md,
"CT's target budget rule").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from ...fields import documented
from ...streams import StepRandom
from ..losses import make_distance
from ..schedules import ct_num_scales, ct_target_budget, ct_target_ema, training_grid
from .base import ObjectiveOutput, TargetObjective
from .common import check_batch, frozen_copy, grid_pair
from .consistency import CurriculumOptions, consistency_loss


#: the target budget ``sum_k (1 - mu(k))`` below which a CT run warns: on the digits (3000 steps, s1 = 150) 104
#: still failed at one step and 169 converged (docs/training.md, "CT's target budget rule"); OpenAI's ImageNet-64
#: and LSUN runs have 799 and 1321.
MIN_TARGET_BUDGET = 150.0


@dataclass
class CTOptions(CurriculumOptions):
    """Options of :class:`CTObjective`; ``total_steps`` is K of the ``N(k)`` schedule (set to the run's steps)."""

    s0: int = documented(2, "initial number of grid intervals N(0) - 1")
    s1: int = documented(150, "final number of grid intervals")
    mu0: float = documented(0.95, "target EMA rate at N(0) (0: the online network under stop-gradient)")

    def __post_init__(self) -> None:
        super().__post_init__()
        ct_target_ema(0, self.total_steps, self.s0, self.s1, self.mu0)  # validates s0, s1, mu0


def low_target_budget_message(options: CTOptions) -> Optional[str]:
    """A warning when the run's target budget is below :data:`MIN_TARGET_BUDGET`, naming the fix; else None."""
    o = options
    budget = ct_target_budget(o.total_steps, o.s0, o.s1, o.mu0)
    if budget >= MIN_TARGET_BUDGET:
        return None
    return (
        f"CT's target network moves too little in this run: sum_k (1 - mu(k)) = {budget:.1f} over {o.total_steps} "
        f"steps (mu0={o.mu0}, s0={o.s0}, s1={o.s1}), below the {MIN_TARGET_BUDGET:g} that one-step sampling needed "
        "on the digits (OpenAI's ImageNet-64 run has 799), so the model will likely stay near its random start at "
        "high sigma. Lower mu0 (mu0=0.1, or mu0=0 to follow the online network as iCT does), train longer, or use "
        "--method ict; see docs/training.md, \"CT's target budget rule\""
    )


class CTObjective(TargetObjective):
    """Consistency training with the adaptive ``N(k)`` / ``mu(k)`` schedules and an EMA target network."""

    label = "CT"

    def __init__(self, model: nn.Module, options: CTOptions, teacher: Optional[nn.Module] = None) -> None:
        self.options = o = options
        self.model = model
        self.target: Optional[nn.Module] = frozen_copy(model) if o.mu0 > 0 else None
        self.distance = make_distance(
            o.loss, huber_c=o.huber_c, lpips_weights=o.lpips_weights, lpips_resize=o.lpips_resize
        )
        self._grids: dict[int, Tensor] = {}

    def num_scales(self, step: int) -> int:
        """``N(k)`` at ``step``."""
        o = self.options
        return ct_num_scales(step, o.total_steps, o.s0, o.s1)

    def target_ema(self, step: int) -> float:
        """``mu(k)`` at ``step``."""
        o = self.options
        return ct_target_ema(step, o.total_steps, o.s0, o.s1, o.mu0)

    def grid(self, num_points: int) -> Tensor:
        """The ``num_points``-point Karras grid (cached)."""
        if num_points not in self._grids:
            o = self.options
            self._grids[num_points] = training_grid(num_points, o.sigma_min, o.sigma_max, o.rho)
        return self._grids[num_points]

    def __call__(self, x0: Tensor, class_labels: Optional[Tensor], step: int, rng: StepRandom) -> ObjectiveOutput:
        """The consistency-training loss on ``x0`` (CM Algorithm 3, lines 4-7)."""
        check_batch(x0, rng)
        num = self.num_scales(step)
        sigmas = self.grid(num)
        n = rng.randint(num - 1, device=sigmas.device)
        sigma_hi, sigma_lo = grid_pair(sigmas, n, x0)
        z = rng.randn(*x0.shape[1:]).to(device=x0.device, dtype=x0.dtype)
        target_net = self.target_of(x0)
        loss = consistency_loss(self.online, target_net, x0, z, sigma_hi, sigma_lo, class_labels, self.distance,
                                dropout_seed=rng.dropout_seed())
        return ObjectiveOutput(loss, {"loss": float(loss.detach()), "N": float(num), "mu": self.target_ema(step)})
