"""Improved consistency training (iCT; Song & Dhariwal 2023): CT (:mod:`.ct`) with other schedules.

Differences from CT, each from the iCT paper:

* no EMA target: the target is the online network under stop-gradient (sec. 3.2);
* the exponential curriculum ``N(k) = min(s0 2^floor(k/K'), s1) + 1`` (sec. 3.4);
* the grid pair is drawn from the discrete lognormal ``p(i)`` with ``P_mean = -1.1``, ``P_std = 2`` (eq. 11);
* the weight ``lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i)`` (sec. 3.3);
* the pseudo-Huber distance with ``c = 0.00054 sqrt(d)`` on each sample's norm (sec. 3.3);
* the same dropout mask in the online and the target pass (appendix B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from ...fields import documented
from ...streams import StepRandom
from ..losses import LossName, make_distance
from ..schedules import ict_num_scales, lognormal_pair_probs, training_grid
from .base import BaseObjective, ObjectiveOutput
from .common import check_batch, grid_pair, per_sample
from .consistency import CurriculumOptions, consistency_loss


@dataclass
class ICTOptions(CurriculumOptions):
    """Options of :class:`ICTObjective`; ``total_steps`` is K of the ``N(k)`` curriculum (set to the run's steps)."""

    s0: int = documented(10, "initial number of grid intervals")
    s1: int = documented(1280, "final number of grid intervals")
    p_mean: float = documented(-1.1, "mean of the lognormal pair distribution")
    p_std: float = documented(2.0, "standard deviation of the lognormal pair distribution")
    loss: LossName = documented("pseudo_huber", "distance d: l2, pseudo_huber or lpips")

    def __post_init__(self) -> None:
        super().__post_init__()
        ict_num_scales(0, self.total_steps, self.s0, self.s1)  # validates s0, s1


class ICTObjective(BaseObjective):
    """iCT: lognormal pairs on an exponentially refined grid, ``1/delta sigma`` weights, pseudo-Huber, no EMA target."""

    def __init__(self, model: nn.Module, options: ICTOptions, teacher: Optional[nn.Module] = None) -> None:
        self.options = o = options
        self.model = model
        self.distance = make_distance(
            o.loss, huber_c=o.huber_c, lpips_weights=o.lpips_weights, lpips_resize=o.lpips_resize
        )
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}

    def num_scales(self, step: int) -> int:
        """``N(k)`` at ``step``."""
        o = self.options
        return ict_num_scales(step, o.total_steps, o.s0, o.s1)

    def grid_and_probs(self, num_points: int) -> tuple[Tensor, Tensor]:
        """The descending Karras grid of ``num_points`` and the lognormal probabilities of its pairs (cached)."""
        if num_points not in self._cache:
            o = self.options
            sigmas = training_grid(num_points, o.sigma_min, o.sigma_max, o.rho)
            self._cache[num_points] = (sigmas, lognormal_pair_probs(sigmas, o.p_mean, o.p_std))
        return self._cache[num_points]

    def __call__(self, x0: Tensor, class_labels: Optional[Tensor], step: int, rng: StepRandom) -> ObjectiveOutput:
        """The iCT loss on ``x0``."""
        check_batch(x0, rng)
        num = self.num_scales(step)
        sigmas, probs = self.grid_and_probs(num)
        i = rng.choice(probs, device=sigmas.device)
        sigma_hi, sigma_lo = grid_pair(sigmas, i, x0)
        # lambda = 1 / (sigma_i - sigma_{i+1}) is formed in float64 before the cast: adjacent sigmas near sigma_min
        # are so close that their float32 difference would lose digits
        weight = per_sample(1.0 / (sigmas[i] - sigmas[i + 1]), x0)
        z = rng.randn(*x0.shape[1:]).to(device=x0.device, dtype=x0.dtype)
        loss = consistency_loss(self.online, self.model, x0, z, sigma_hi, sigma_lo, class_labels, self.distance,
                                weight=weight, dropout_seed=rng.dropout_seed())
        return ObjectiveOutput(loss, {"loss": float(loss.detach()), "N": float(num)})
