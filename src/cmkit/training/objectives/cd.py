"""Consistency distillation (Song et al. 2023, Algorithm 2) from an EDM teacher.

For a pair of adjacent points ``sigma_{n+1} > sigma_n`` of the N-point Karras grid (``n`` uniform) and
``z ~ N(0, I)``: ``x_{n+1} = x0 + sigma_{n+1} z``; the teacher takes one ODE step to
``x_hat_n = Phi(x_{n+1}, sigma_{n+1} -> sigma_n)`` (Heun or Euler, :mod:`cmkit.sampling`); the loss is
``d(f_theta(x_{n+1}, sigma_{n+1}), f_theta^-(x_hat_n, sigma_n))`` and the target ``theta^-`` follows
``theta`` with EMA rate ``mu`` (0.95 in the paper; 0 uses the online network under stop-gradient).
The student starts from the teacher's weights, with dropout 0 (OpenAI's recipe); with dropout, the student and
the target pass share one mask (:func:`.consistency.consistency_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from ...fields import documented
from ...karras import RHO, SIGMA_MAX, SIGMA_MIN, add_noise
from ...sampling import euler_step, heun_step
from ...streams import StepRandom
from ..losses import LossName, make_distance
from ..schedules import training_grid
from .base import ObjectiveOutput, TargetObjective
from .common import check_batch, copy_teacher_weights_, follow_device_, frozen_copy, grid_pair, set_dropout_
from .consistency import consistency_loss

Solver = Literal["heun", "euler"]


@dataclass
class CDOptions:
    """Options of :class:`CDObjective`; ``num_scales`` is N (18 suits the toys, 40 is the paper's ImageNet value)."""

    num_scales: int = documented(18, "N, the points of the Karras grid")
    solver: Solver = documented("heun", "the teacher's ODE step: heun or euler")
    target_ema: float = documented(0.95, "target EMA rate mu (0: the online network under stop-gradient)")
    loss: LossName = documented("l2", "distance d: l2, pseudo_huber or lpips")
    huber_c: Optional[float] = documented(None, "pseudo-Huber c (None: 0.00054 sqrt(d))")
    lpips_weights: Optional[str] = documented(None, "LPIPS weights file for loss=lpips")
    lpips_resize: int = documented(224, "side images are resized to for loss=lpips (224: OpenAI's CD)")
    init_from_teacher: bool = documented(True, "start from the teacher's weights")
    student_dropout: Optional[float] = documented(0.0, "dropout of the student (None: keep the network's)")
    sigma_min: float = documented(SIGMA_MIN, "smallest sigma of the grid")
    sigma_max: float = documented(SIGMA_MAX, "largest sigma of the grid")
    rho: float = documented(RHO, "Karras grid exponent")

    def __post_init__(self) -> None:
        if self.num_scales < 2:
            raise ValueError(f"num_scales must be >= 2, got {self.num_scales}")
        if self.solver not in ("heun", "euler"):
            raise ValueError(f"solver must be 'heun' or 'euler', got {self.solver!r}")
        if not 0.0 <= self.target_ema < 1.0:
            raise ValueError(f"target_ema must lie in [0, 1), got {self.target_ema}")


class CDObjective(TargetObjective):
    """Consistency distillation: match the student at ``sigma_{n+1}`` to the target after one teacher ODE step."""

    label = "CD"

    def __init__(self, model: nn.Module, teacher: Optional[nn.Module] = None, options: Optional[CDOptions] = None) -> None:
        if teacher is None:
            raise ValueError("method 'cd' distils a teacher: pass teacher=<EDM Denoiser> (e.g. --teacher DIR)")
        self.options = o = options or CDOptions()
        if o.init_from_teacher:
            copy_teacher_weights_(model, teacher)
        if o.student_dropout is not None:
            set_dropout_(model, o.student_dropout)
        self.model = model
        self.teacher = teacher.eval().requires_grad_(False)
        self.target: Optional[nn.Module] = frozen_copy(model) if o.target_ema > 0 else None
        self.distance = make_distance(
            o.loss, huber_c=o.huber_c, lpips_weights=o.lpips_weights, lpips_resize=o.lpips_resize
        )
        self.sigmas = training_grid(o.num_scales, o.sigma_min, o.sigma_max, o.rho)
        self._solver = heun_step if o.solver == "heun" else euler_step

    def teacher_step(
        self, x: Tensor, sigma: Tensor, sigma_next: Tensor, class_labels: Optional[Tensor] = None
    ) -> Tensor:
        """One teacher step of the PF-ODE from ``sigma`` down to ``sigma_next`` (per-sample ``[B]`` tensors)."""
        with torch.no_grad():
            return self._solver(self.teacher, x, sigma, sigma_next, class_labels)

    def __call__(self, x0: Tensor, class_labels: Optional[Tensor], step: int, rng: StepRandom) -> ObjectiveOutput:
        """The distillation loss on ``x0`` (CM Algorithm 2, lines 4-8)."""
        check_batch(x0, rng)
        follow_device_(self.teacher, x0.device)
        n = rng.randint(self.options.num_scales - 1, device=self.sigmas.device)
        sigma_hi, sigma_lo = grid_pair(self.sigmas, n, x0)
        z = rng.randn(*x0.shape[1:]).to(device=x0.device, dtype=x0.dtype)
        x_lo = self.teacher_step(add_noise(x0, sigma_hi, z), sigma_hi, sigma_lo, class_labels)
        loss = consistency_loss(self.online, self.target_of(x0), x0, z, sigma_hi, sigma_lo, class_labels, self.distance,
                                dropout_seed=rng.dropout_seed(), target_input=x_lo)
        return ObjectiveOutput(
            loss, {"loss": float(loss.detach()), "N": float(self.options.num_scales), "mu": self.options.target_ema}
        )

    def target_ema(self, step: int) -> float:
        """The constant target EMA rate ``mu``."""
        return self.options.target_ema
