"""Trajectory consistency distillation (TCD; Zheng et al. 2024, "Trajectory Consistency Distillation", sec. 4 and
Algorithm 1), from an EDM teacher viewed in the discrete VP world of ``TCDScheduler`` (:mod:`cmkit.vp`).

The grid is the scheduler's: ``T`` training timesteps of a beta schedule, and the ``N``-point distillation grid
``tau_j = (j + 1) T / N - 1`` (``original_inference_steps``), with timestep 0 below it (``G = [0, tau_0, ..., tau_{N-1}]``).
In EDM coordinates a timestep is ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``, so one step is:

* ``n ~ U{k..N}``: ``t_{n} = G[n]`` and ``t_{n-k} = G[n - k]`` (a skip of ``k`` grid points, LCM's skipping step);
* ``s`` (the paper's s-sampling): ``m ~ U{0..n-k}``, ``s = G[m]`` (``s_sampling="grid"``), or any integer timestep
  in ``[0, t_{n-k}]`` (``"uniform"``, the ``s`` that strategic stochastic sampling with ``gamma > 0`` asks for);
* ``x_{t_n} = x0 + sigma_{t_n} z`` (``x_vp / sqrt(alpha_bar)``), and the teacher's ODE step to ``t_{n-k}``: DDIM
  (= Euler in sigma, the first-order DPM-Solver) or Heun;
* the trajectory consistency function ``f(x, t, s) = (sigma_s / sigma_t) x + (1 - sigma_s / sigma_t) D_theta(x, t, s)``
  (:func:`cmkit.vp.trajectory_consistency`; ``f(x, s, s) = x`` exactly);
* ``L = d(f_theta(x_{t_n}, t_n, s), f_theta^-(x_hat_{t_{n-k}}, t_{n-k}, s))`` with the EMA target ``theta^-``
  (rate ``mu``, 0.95 as LCM / TCD).

Conditioning on ``s``: a network that takes its target time (``target_conditioning=True`` on ``MLPNet`` and the
UNets: a second time embedding, zero-initialised so the student starts as the teacher) gets ``c_noise(sigma_s)``;
a network without it is trained in the released TCD form, where ``s`` enters only through the semi-linear
coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, get_args

import torch
from torch import Tensor, nn

from ..._validate import check_choice, require_int
from ...fields import documented
from ...karras import add_noise
from ...sampling import euler_step, heun_step
from ...schedulers.betas import BetaSchedule
from ...schedulers.tcd import TCDScheduler, distillation_timesteps
from ...streams import StepRandom
from ...vp import trajectory_consistency
from ..losses import LossName, make_distance
from .base import ObjectiveOutput, TargetObjective
from .common import (
    check_batch, copy_teacher_weights_, follow_device_, frozen_copy, per_sample, seeded_dropout, set_dropout_,
    target_embedding_prefixes,
)

TCDSolver = Literal["ddim", "heun"]
SSampling = Literal["grid", "uniform"]


@dataclass
class TCDOptions:
    """Options of :class:`TCDObjective`: the VP grid (exported as the pipeline's ``TCDScheduler``) and the loss."""

    beta_schedule: BetaSchedule = documented("linear", "VP beta schedule (linear: DDPM's, for pixels; scaled_linear: SD's)")
    beta_start: float = documented(1e-4, "first beta (SD: 0.00085)")
    beta_end: float = documented(0.02, "last beta (SD: 0.012)")
    num_train_timesteps: int = documented(1000, "T, the VP timesteps")
    original_inference_steps: int = documented(50, "N, the distillation grid (TCDScheduler's original_inference_steps)")
    skip: int = documented(1, "k, the grid points one teacher solve spans")
    solver: TCDSolver = documented("ddim", "the teacher's ODE step: ddim (first-order DPM-Solver) or heun")
    s_sampling: SSampling = documented("grid", "s = a grid point <= t_{n-k} (the paper's) or any timestep (uniform)")
    target_ema: float = documented(0.95, "target EMA rate mu (0: the online network under stop-gradient)")
    loss: LossName = documented("l2", "distance d: l2, l1, pseudo_huber or lpips")
    huber_c: Optional[float] = documented(None, "pseudo-Huber c (None: 0.00054 sqrt(d))")
    init_from_teacher: bool = documented(True, "start from the teacher's weights (a target embedding starts at zero)")
    student_dropout: Optional[float] = documented(0.0, "dropout of the student (None: keep the network's)")

    def __post_init__(self) -> None:
        n = require_int("num_train_timesteps", self.num_train_timesteps, 2)
        grid = require_int("original_inference_steps", self.original_inference_steps, 1, maximum=n)
        require_int("skip", self.skip, 1, " (grid points per teacher solve)", maximum=grid)
        check_choice("solver", self.solver, get_args(TCDSolver))
        check_choice("s_sampling", self.s_sampling, get_args(SSampling))
        if not 0.0 <= self.target_ema < 1.0:
            raise ValueError(f"target_ema must lie in [0, 1), got {self.target_ema}")

    def scheduler(self) -> TCDScheduler:
        """The ``TCDScheduler`` that samples the distilled model (x0 output: ``prediction_type="sample"``)."""
        return TCDScheduler(
            num_train_timesteps=self.num_train_timesteps, beta_start=self.beta_start, beta_end=self.beta_end,
            beta_schedule=self.beta_schedule, original_inference_steps=self.original_inference_steps,
            prediction_type="sample",
        )


def distillation_grid(num_train_timesteps: int, original_inference_steps: int) -> Tensor:
    """``G = [0, tau_0, ..., tau_{N-1}]``: the timesteps ``TCDScheduler`` samples from
    (:func:`~cmkit.schedulers.tcd.distillation_timesteps`), ascending, with timestep 0, where sampling ends, below them."""
    taus = torch.from_numpy(distillation_timesteps(num_train_timesteps, original_inference_steps))
    return torch.cat([torch.zeros(1, dtype=torch.long), taus])


class TCDObjective(TargetObjective):
    """TCD: match the student's trajectory jump from ``t_n`` to ``s`` with the target's from the teacher's ``t_{n-k}``."""

    label = "TCD"

    def __init__(self, model: nn.Module, teacher: Optional[nn.Module] = None, options: Optional[TCDOptions] = None) -> None:
        if teacher is None:
            raise ValueError("method 'tcd' distils a teacher: pass teacher=<EDM Denoiser> (e.g. --teacher DIR)")
        self.options = o = options or TCDOptions()
        if o.init_from_teacher:
            copy_teacher_weights_(model, teacher, allow_new=target_embedding_prefixes(model))
        if o.student_dropout is not None:
            set_dropout_(model, o.student_dropout)
        self.model = model
        self.teacher = teacher.eval().requires_grad_(False)
        self.target: Optional[nn.Module] = frozen_copy(model) if o.target_ema > 0 else None
        self.distance = make_distance(o.loss, huber_c=o.huber_c)
        self.grid = distillation_grid(o.num_train_timesteps, o.original_inference_steps)
        #: EDM sigma of every VP timestep (float64 from the scheduler's float32 alpha_bar, as the pipeline computes it)
        self.sigmas = o.scheduler().edm_sigmas()
        self._solver = heun_step if o.solver == "heun" else euler_step
        model.sigma_min = float(self.sigmas[0])  # the data end of the VP grid: a TCD denoiser's default target

    def export_scheduler(self) -> TCDScheduler:
        """The scheduler the exported pipeline samples with."""
        return self.options.scheduler()

    def draw_times(self, rng: StepRandom) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample timesteps ``(t_n, t_{n-k}, s)`` (int64, on the CPU)."""
        o = self.options
        n = o.skip + rng.randint(o.original_inference_steps - o.skip + 1, device="cpu")
        t_hi, t_lo = self.grid[n], self.grid[n - o.skip]
        u = rng.rand(device="cpu").double()
        if o.s_sampling == "grid":
            s = self.grid[torch.floor(u * (n - o.skip + 1)).long()]
        else:
            s = torch.floor(u * (t_lo + 1)).long()
        return t_hi, t_lo, torch.minimum(s, t_lo)

    def __call__(self, x0: Tensor, class_labels: Optional[Tensor], step: int, rng: StepRandom) -> ObjectiveOutput:
        """The TCD loss on ``x0`` (Algorithm 1)."""
        check_batch(x0, rng)
        follow_device_(self.teacher, x0.device)
        t_hi, t_lo, s = self.draw_times(rng)
        sigma_hi, sigma_lo, sigma_s = (per_sample(self.sigmas[i], x0) for i in (t_hi, t_lo, s))
        z = rng.randn(*x0.shape[1:]).to(device=x0.device, dtype=x0.dtype)
        x_hi = add_noise(x0, sigma_hi, z)
        with torch.no_grad():
            x_lo = self._solver(self.teacher, x_hi, sigma_hi, sigma_lo, class_labels)
        seed, target_net = rng.dropout_seed(), self.target_of(x0)
        with seeded_dropout(seed, x0.device), torch.no_grad():
            target = trajectory_consistency(x_lo, target_net(x_lo, sigma_lo, class_labels, sigma_s), sigma_lo, sigma_s)
        with seeded_dropout(seed, x0.device):
            pred = trajectory_consistency(x_hi, self.online(x_hi, sigma_hi, class_labels, sigma_s), sigma_hi, sigma_s)
        loss = self.distance(pred, target.detach()).mean()
        return ObjectiveOutput(loss, {"loss": float(loss.detach()), "mu": self.options.target_ema})

    def target_ema(self, step: int) -> float:
        """The constant target EMA rate ``mu``."""
        return self.options.target_ema
