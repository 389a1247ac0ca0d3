"""Easy consistency tuning (ECT; Geng et al. 2024): consistency training started from a diffusion model.

``t ~ LogNormal(P_mean, P_std^2)`` (clipped to ``[sigma_min, sigma_max]``), ``r = r(t)`` from the stage's
mapping function (:func:`cmkit.training.schedules.ect_r`; the stage doubles every ``steps_per_stage`` steps,
so ``r -> t`` and the ODE discretisation shrinks), one shared ``eps`` and one shared dropout mask:
``L = d(f_theta(x0 + t eps, t), sg f_theta(x0 + r eps, r)) / (t - r)``. Where ``r`` falls below
``sigma_min`` the target is ``x0`` itself (the boundary condition), so early stages are pure denoising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ...karras import SIGMA_MAX, SIGMA_MIN, add_noise, append_dims
from ..losses import LossName, make_distance
from ..random import StepRandom
from ..schedules import ect_r, ect_stage
from .base import ObjectiveOutput
from .common import check_batch, copy_teacher_weights_, seeded_dropout


@dataclass
class ECTOptions:
    """Options of :class:`ECTObjective` (Geng et al. 2024 defaults: q=2, k=8, b=1, LogNormal(-1.1, 2.0))."""

    steps_per_stage: int = 2000
    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    p_mean: float = -1.1
    p_std: float = 2.0
    loss: LossName = "pseudo_huber"
    huber_c: Optional[float] = None
    lpips_weights: Optional[str] = None
    init_from_teacher: bool = True
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX

    def __post_init__(self) -> None:
        ect_stage(0, self.steps_per_stage)  # validates steps_per_stage
        if self.q <= 1.0:
            raise ValueError(f"q must be > 1, got {self.q}")
        if self.p_std <= 0:
            raise ValueError(f"p_std must be > 0, got {self.p_std}")


class ECTObjective:
    """ECT: continuous-time consistency loss with the staged ``r(t)`` mapping and ``1/(t - r)`` weights."""

    def __init__(self, model: nn.Module, teacher: Optional[nn.Module] = None, options: Optional[ECTOptions] = None) -> None:
        self.options = o = options or ECTOptions()
        if o.init_from_teacher:
            if teacher is None:
                raise ValueError("ECT starts from a diffusion model: pass teacher=<EDM Denoiser> or init_from_teacher=False")
            copy_teacher_weights_(model, teacher)
        self.model = model
        self.distance = make_distance(o.loss, huber_c=o.huber_c, lpips_weights=o.lpips_weights)

    def stage(self, step: int) -> int:
        """The mapping-function stage at ``step``."""
        return ect_stage(step, self.options.steps_per_stage)

    def __call__(self, x0: Tensor, class_labels: Optional[Tensor], step: int, rng: StepRandom) -> ObjectiveOutput:
        """The ECT loss on ``x0``."""
        check_batch(x0, rng)
        o = self.options
        stage = self.stage(step)
        t = torch.exp(o.p_mean + o.p_std * rng.randn()).clamp(o.sigma_min, o.sigma_max)
        r = ect_r(t, stage, o.q, o.k, o.b)
        t = t.to(device=x0.device, dtype=torch.float32)
        r = r.to(device=x0.device, dtype=torch.float32)
        eps = rng.randn(*x0.shape[1:]).to(device=x0.device, dtype=x0.dtype)
        seed = rng.dropout_seed()
        with seeded_dropout(seed, x0.device):
            pred = self.model(add_noise(x0, t, eps), t, class_labels)
        on_boundary = r <= o.sigma_min
        r_eval = torch.where(on_boundary, torch.full_like(r, o.sigma_min), r)
        with seeded_dropout(seed, x0.device), torch.no_grad():
            target = self.model(add_noise(x0, r_eval, eps), r_eval, class_labels)
        target = torch.where(append_dims(on_boundary, x0.ndim), x0, target)
        # r == t only if t is clipped at sigma_min; the network is then the identity and gets no gradient.
        weight = 1.0 / (t - r).clamp_min(1e-8)
        loss = (weight * self.distance(pred, target.detach())).mean()
        return ObjectiveOutput(loss, {"loss": float(loss.detach()), "stage": float(stage)})

    def after_optimizer_step(self, step: int) -> None:
        """Nothing to update: the target is the online network under stop-gradient."""

    def state_dict(self) -> dict[str, Any]:
        """No extra state (the stage is a function of the step)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """No extra state."""
