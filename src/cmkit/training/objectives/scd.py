"""Continuous-time consistency distillation (sCD; Lu & Song 2024, sec. 4-5): sCT (:mod:`.sct`) with the teacher's
PF-ODE velocity ``dx_t/dt = sigma_d F_teacher(x_t / sigma_d, t)`` instead of the data's conditional velocity.

The teacher is an EDM denoiser ``D``; viewed as a TrigFlow model (sCM sec. 2, :func:`cmkit.models.denoiser.trigflow_F_of`)
``F_teacher = (cos(t) x_t - D(x_t / cos t, sigma_d tan t)) / (sin(t) sigma_d)``. The student starts from the
teacher's weights (sCM sec. 5). The teacher's network saw EDM's ``c_noise = 250 ln(sigma)`` and its output enters
``D`` with the opposite sign to TrigFlow's ``F``, so by default (``time_input="edm"``) the student keeps that
convention (:func:`cmkit.trigflow.trigflow_network_input`): at initialisation its ``f`` is exactly the teacher's
denoiser, and the exported pipeline records the choice. ``time_input="trigflow"`` (``1000 t``) starts from weights
whose time conditioning and output sign do not match (measured in docs/quality.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ..._validate import check_choice
from ...fields import documented
from ...trigflow import TIME_INPUTS
from ...models.denoiser import trigflow_F_of
from .common import copy_teacher_weights_, follow_device_
from .sct import SCTObjective, SCTOptions


@dataclass
class SCDOptions(SCTOptions):
    """Options of :class:`SCDObjective`: those of sCT plus the teacher initialisation."""

    init_from_teacher: bool = documented(True, "start from the teacher's weights")
    time_input: str = documented(
        "edm", "network time input: 'edm' keeps the EDM teacher's c_noise = 250 ln(sigma) (and output sign) so the "
        "teacher initialisation is exact; 'trigflow' feeds 1000 t (sCM)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("time_input", self.time_input, TIME_INPUTS)


class SCDObjective(SCTObjective):
    """sCD: the sCM loss with the teacher's velocity ``sigma_d F_teacher``."""

    def __init__(self, model: nn.Module, teacher: Optional[nn.Module] = None, options: Optional[SCDOptions] = None) -> None:
        if teacher is None:
            raise ValueError("sCD distils a diffusion model: pass teacher=<EDM Denoiser> (cmkit train --teacher DIR)")
        options = options if options is not None else SCDOptions()
        super().__init__(model, teacher=teacher, options=options)
        model.trigflow_time_input = options.time_input
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
