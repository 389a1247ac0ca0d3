"""Continuous-time consistency distillation (sCD; Lu & Song 2024, sec. 4-5): sCT (:mod:`.sct`) with the teacher's
PF-ODE velocity ``dx_t/dt = sigma_d F_teacher(x_t / sigma_d, t)`` instead of the data's conditional velocity.

The teacher is an EDM denoiser ``D``; viewed as a TrigFlow model (sCM sec. 2, :func:`cmkit.models.denoiser.trigflow_F_of`)
``F_teacher = (cos(t) x_t - D(x_t / cos t, sigma_d tan t)) / (sin(t) sigma_d)``. The student starts from the
teacher's weights (sCM sec. 5; its time input is then ``1000 t`` where the teacher saw EDM's ``ln(sigma) / 4``, which
fine-tuning adapts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ...fields import documented
from ...models.denoiser import trigflow_F_of
from .common import copy_teacher_weights_, follow_device_
from .sct import SCTObjective, SCTOptions


@dataclass
class SCDOptions(SCTOptions):
    """Options of :class:`SCDObjective`: those of sCT plus the teacher initialisation."""

    init_from_teacher: bool = documented(True, "start from the teacher's weights")


class SCDObjective(SCTObjective):
    """sCD: the sCM loss with the teacher's velocity ``sigma_d F_teacher``."""

    def __init__(self, model: nn.Module, teacher: Optional[nn.Module] = None, options: Optional[SCDOptions] = None) -> None:
        if teacher is None:
            raise ValueError("sCD distils a diffusion model: pass teacher=<EDM Denoiser> (cmkit train --teacher DIR)")
        options = options if options is not None else SCDOptions()
        super().__init__(model, teacher=teacher, options=options)
        teacher.requires_grad_(False)
        if options.init_from_teacher:
            copy_teacher_weights_(model, teacher)

    @torch.no_grad()
    def velocity(self, x0: Tensor, z: Tensor, x_t: Tensor, t: Tensor, class_labels: Optional[Tensor]) -> Tensor:
        """``dx_t/dt = sigma_d F_teacher(x_t / sigma_d, t)`` (sCM sec. 4, sCD)."""
        assert self.teacher is not None
        follow_device_(self.teacher, x_t.device)
        self.teacher.eval()
        sd = self.sigma_data
        return sd * trigflow_F_of(self.teacher, x_t, t, class_labels, sd).to(x_t.dtype)
