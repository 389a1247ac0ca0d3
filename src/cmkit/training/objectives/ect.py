"""Easy consistency tuning (ECT; Geng et al. 2024): consistency training started from a diffusion model.

``t ~ LogNormal(P_mean, P_std^2)`` (clipped to ``[sigma_min, sigma_max]``), ``r = r(t)`` from the stage's
mapping function (:func:`cmkit.training.schedules.ect_r`; the stage doubles every ``steps_per_stage`` steps,
so ``r -> t`` and the ODE discretisation shrinks), one shared ``eps`` and one shared dropout mask:
``L = lambda(t, r) d(f_theta(x0 + t eps, t), sg f_theta(x0 + r eps, r))``. Where ``r`` falls below
``sigma_min`` the target is ``x0`` itself (the boundary condition), so early stages are pure denoising.

The weighting ``lambda`` (option ``weighting``) is ECT's CIFAR-10 one, ``1 / (t - r)`` (``"inverse_dt"``), or its
ImageNet-64 one (locuslab/ect's ImageNet branch, ``--wt snrpk``: "SNR(t) + k" with ``k = 1 / sigma_data^2``),
``lambda(t) = (t^2 + sigma_data^2) / (t sigma_data)^2``, which is EDM's loss weight (Karras et al. 2022, table 1)
at ``t`` (``"edm"``; ``sigma_data`` is the model's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, get_args

import torch
from torch import Tensor, nn

from ..._validate import check_choice
from ...fields import documented
from ...karras import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from ...streams import StepRandom
from ..losses import LossName, make_distance
from ..schedules import ect_r, ect_stage
from .base import BaseObjective, ObjectiveOutput
from .common import check_batch, copy_teacher_weights_
from .consistency import consistency_loss
from .edm import edm_loss_weight

ECTWeighting = Literal["inverse_dt", "edm"]


@dataclass
class ECTOptions:
    """Options of :class:`ECTObjective` (Geng et al. 2024 defaults: q=2, k=8, b=1, LogNormal(-1.1, 2.0))."""

    steps_per_stage: int = documented(2000, "steps per stage of the r(t) mapping")
    q: float = documented(2.0, "mapping-function base: 1 - r/t shrinks as q^-stage")
    k: float = documented(8.0, "mapping-function sharpness")
    b: float = documented(1.0, "mapping-function offset")
    p_mean: float = documented(-1.1, "mean of ln t")
    p_std: float = documented(2.0, "standard deviation of ln t")
    loss: LossName = documented("pseudo_huber", "distance d: l2, pseudo_huber or lpips")
    huber_c: Optional[float] = documented(None, "pseudo-Huber c (None: 0.00054 sqrt(d))")
    lpips_weights: Optional[str] = documented(None, "LPIPS weights file for loss=lpips")
    lpips_resize: int = documented(224, "side images are resized to for loss=lpips (224: OpenAI's CD)")
    weighting: ECTWeighting = documented(
        "inverse_dt", "loss weight: inverse_dt = 1/(t - r) (ECT's CIFAR-10), edm = (t^2 + sigma_data^2) / "
        "(t sigma_data)^2 (ECT's ImageNet-64)")
    init_from_teacher: bool = documented(True, "start from the teacher's weights")
    sigma_min: float = documented(SIGMA_MIN, "smallest t")
    sigma_max: float = documented(SIGMA_MAX, "largest t")

    def __post_init__(self) -> None:
        ect_stage(0, self.steps_per_stage)  # validates steps_per_stage
        if self.q <= 1.0:
            raise ValueError(f"q must be > 1, got {self.q}")
        if self.p_std <= 0:
            raise ValueError(f"p_std must be > 0, got {self.p_std}")
        check_choice("weighting", self.weighting, get_args(ECTWeighting))


class ECTObjective(BaseObjective):
    """ECT: continuous-time consistency loss with the staged ``r(t)`` mapping, weighted by ``1/(t - r)`` or EDM's
    ``lambda(t)``."""

    def __init__(self, model: nn.Module, teacher: Optional[nn.Module] = None, options: Optional[ECTOptions] = None) -> None:
        self.options = o = options or ECTOptions()
        if o.init_from_teacher:
            if teacher is None:
                raise ValueError("ECT starts from a diffusion model: pass teacher=<EDM Denoiser> or init_from_teacher=False")
            copy_teacher_weights_(model, teacher)
        self.model = model
        self.distance = make_distance(
            o.loss, huber_c=o.huber_c, lpips_weights=o.lpips_weights, lpips_resize=o.lpips_resize
        )

    def loss_weight(self, t: Tensor, r: Tensor) -> Tensor:
        """``lambda(t, r)`` per sample (see the module docstring)."""
        if self.options.weighting == "edm":
            return edm_loss_weight(t, float(getattr(self.model, "sigma_data", SIGMA_DATA)))
        # r == t only if t is clipped at sigma_min; the network is then the identity and gets no gradient.
        return 1.0 / (t - r).clamp_min(1e-8)

    def stage(self, step: int) -> int:
        """The mapping-function stage at ``step``."""
        return ect_stage(step, self.options.steps_per_stage)

    def __call__(self, x0: Tensor, class_labels: Optional[Tensor], step: int, rng: StepRandom) -> ObjectiveOutput:
        """The ECT loss on ``x0``."""
        check_batch(x0, rng)
        o, stage = self.options, self.stage(step)
        t = torch.exp(o.p_mean + o.p_std * rng.randn()).clamp(o.sigma_min, o.sigma_max)
        r = ect_r(t, stage, o.q, o.k, o.b).to(device=x0.device, dtype=torch.float32)
        t = t.to(device=x0.device, dtype=torch.float32)
        eps = rng.randn(*x0.shape[1:]).to(device=x0.device, dtype=x0.dtype)
        on_boundary = r <= o.sigma_min
        r_eval = torch.where(on_boundary, torch.full_like(r, o.sigma_min), r)
        loss = consistency_loss(self.online, self.model, x0, eps, t, r_eval, class_labels, self.distance,
                                weight=self.loss_weight(t, r), dropout_seed=rng.dropout_seed(), boundary=on_boundary)
        return ObjectiveOutput(loss, {"loss": float(loss.detach()), "stage": float(stage)})
