"""Consistency training, original recipe (Song et al. 2023, Algorithm 3 and appendix C).

At step ``k`` the Karras grid has ``N(k)`` points (:func:`cmkit.training.schedules.ct_num_scales`); a pair
``sigma_{n+1} > sigma_n`` is drawn uniformly and both points share one ``z``:
``L = d(f_theta(x0 + sigma_{n+1} z, sigma_{n+1}), f_theta^-(x0 + sigma_n z, sigma_n))``. The target
``theta^-`` follows ``theta`` with the adaptive rate ``mu(k) = exp(s0 ln(mu0) / N(k))``. The paper uses
LPIPS on images; l2 and pseudo-Huber are offered for data without a perceptual metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ...karras import RHO, SIGMA_MAX, SIGMA_MIN, add_noise
from ..losses import LossName, make_distance
from ..random import StepRandom
from ..schedules import ct_num_scales, ct_target_ema, training_grid
from .base import ObjectiveOutput
from .common import check_batch, ema_update_, follow_device_, frozen_copy, grid_pair


@dataclass
class CTOptions:
    """Options of :class:`CTObjective`; ``total_steps`` is K of the ``N(k)`` schedule (required)."""

    total_steps: int
    s0: int = 2
    s1: int = 150
    mu0: float = 0.95
    loss: LossName = "l2"
    huber_c: Optional[float] = None
    lpips_weights: Optional[str] = None
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = RHO

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 (the run's length K), got {self.total_steps}")
        ct_target_ema(0, self.total_steps, self.s0, self.s1, self.mu0)  # validates s0, s1, mu0


class CTObjective:
    """Consistency training with the adaptive ``N(k)`` / ``mu(k)`` schedules and an EMA target network."""

    def __init__(self, model: nn.Module, options: CTOptions) -> None:
        self.options = o = options
        self.model = model
        self.target = frozen_copy(model)
        self.distance = make_distance(o.loss, huber_c=o.huber_c, lpips_weights=o.lpips_weights)
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
        follow_device_(self.target, x0.device)
        num = self.num_scales(step)
        sigmas = self.grid(num)
        n = rng.randint(num - 1, device=sigmas.device)
        sigma_hi, sigma_lo = grid_pair(sigmas, n, x0)
        z = rng.randn(*x0.shape[1:]).to(device=x0.device, dtype=x0.dtype)
        with torch.no_grad():
            self.target.train(self.model.training)
            target = self.target(add_noise(x0, sigma_lo, z), sigma_lo, class_labels)
        pred = self.model(add_noise(x0, sigma_hi, z), sigma_hi, class_labels)
        loss = self.distance(pred, target).mean()
        return ObjectiveOutput(loss, {"loss": float(loss.detach()), "N": float(num), "mu": self.target_ema(step)})

    def after_optimizer_step(self, step: int) -> None:
        """Move the target towards the model with rate ``mu(k)`` (CM Algorithm 3, line 9)."""
        ema_update_(self.target, self.model, self.target_ema(step))

    def state_dict(self) -> dict[str, Any]:
        """The target network's weights."""
        return {"target": self.target.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the target network."""
        if "target" not in state:
            raise ValueError("checkpoint lacks the CT target network ('target'); was it saved by a CT run?")
        self.target.load_state_dict(state["target"])
