"""Continuous-time consistency training (sCT; Lu & Song 2024, "Simplifying, Stabilizing and Scaling Continuous-Time
Consistency Models", Algorithm 1), the base of sCD (:mod:`.scd`).

TrigFlow (sCM sec. 2): ``x_t = cos(t) x0 + sin(t) z``, ``z ~ N(0, sigma_d^2 I)``, ``t in [0, pi/2]``, and the consistency
function ``f(x_t, t) = cos(t) x_t - sin(t) sigma_d F_theta(x_t / sigma_d, t)`` (:mod:`cmkit.trigflow`). One step:

* ``t = arctan(tau / sigma_d)``, ``ln tau ~ N(P_mean, P_std^2)`` (sec. 4.2; ImageNet-64: ``P_mean = -1.0, P_std = 1.6``);
* ``dx_t/dt = cos(t) z - sin(t) x0`` (sCT) or ``sigma_d F_teacher(x_t / sigma_d, t)`` (sCD);
* ``cos(t) sin(t) dF^-/dt`` by one forward-mode JVP of the stop-gradient network along
  ``(cos(t) sin(t) dx_t/dt, cos(t) sin(t))`` in ``(x_t, t)`` ("JVP rearrangement", sec. 4.2; ``trigflow_F`` divides
  ``x_t`` by ``sigma_d`` itself), or a central finite difference along the same direction (``tangent``);
* ``g = -cos^2(t) (sigma_d F^- - dx_t/dt) - r cos(t) sin(t) (x_t + sigma_d dF^-/dt)`` with the tangent warm-up
  ``r = min(1, k / H)`` (sec. 4.2), normalised ``g <- g / (||g|| + c)``, ``c = 0.1`` (sec. 4.3);
* ``L = e^{-w(t)} / D ||F_theta - F^- - g||^2 + w(t)`` (Algorithm 1; ``w`` is the log-variance of sec. 4.3, the paper's
  ``-w_phi``), times the prior weight ``1 / (sigma_d tan t)`` (sec. 4.3; NVlabs/FastGen's ``1 / sigma``).

The learned ``w(t)`` is :class:`LogVarianceHead`, attached to the trained :class:`~cmkit.models.denoiser.Denoiser` as
the submodule ``scm_log_variance``: the loop's optimizer, checkpoints, EMA and gradient averaging take the model's
parameters, so they take the head's too; the exported pipeline saves only ``model.net``.

Distributed training (the sCM pitfall): the JVP and the stop-gradient pass run on the inner module, and the pass with
gradients calls ``Denoiser.trigflow_F``, which a ``DistributedDataParallel`` wrapper's ``forward`` does not expose.
These objectives therefore set no wrapper (``set_online = None``): the loop averages every gradient, the head's
included, by one ``all_reduce`` after backward (:class:`~cmkit.training.distributed.GradientSync`), which is exact;
a DDP wrapper whose forward is never called would instead leave the gradients unsynchronised.

The paper trains with Adam, ``betas = (0.9, 0.99)``, ``eps = 1e-11`` (appendix): ``--optimizer adam --adam-eps 1e-11``
with ``"betas": [0.9, 0.99]`` in a ``--config`` file. Under fp16 autocast the JVP runs in float32 (fp16 tangents
overflow); bf16 keeps float32's range and runs as autocast says.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal, Optional, get_args

import torch
from torch import Tensor, nn

from ..._validate import check_choice, require_int, require_positive
from ...fields import documented
from ...karras import append_dims
from ...streams import StepRandom
from .base import BaseObjective, ObjectiveOutput
from .common import check_batch, per_sample, seeded_dropout

TangentMethod = Literal["jvp", "finite_difference"]
#: t is kept inside (0, pi/2) by this margin: F and its derivative at the ends are not needed
T_MARGIN = 1e-4


@dataclass
class SCTOptions:
    """Options of :class:`SCTObjective` (sCM defaults: ImageNet-64's time distribution, H = 10k, c = 0.1)."""

    p_mean: float = documented(-1.0, "mean of ln tau, t = arctan(tau / sigma_d)")
    p_std: float = documented(1.6, "standard deviation of ln tau (sCM: 1.6 ImageNet-64, 1.4 CIFAR-10)")
    warmup_steps: int = documented(10000, "tangent warm-up H: r = min(1, step / H) (0: r = 1 from the start)")
    tangent_c: float = documented(0.1, "tangent normalisation constant c: g / (||g|| + c)")
    rms_norm: bool = documented(
        False, "normalise by the root-mean-square of g instead of its norm ||g|| (FastGen's spatially invariant norm)")
    tangent: TangentMethod = documented("jvp", "dF/dt by torch.func.jvp or by a central finite difference")
    fd_step: float = documented(1e-3, "finite-difference step, relative to t (tangent=finite_difference)")
    prior_weighting: bool = documented(True, "multiply the loss by the prior weight 1 / (sigma_d tan t)")
    log_variance_channels: int = documented(128, "Fourier features of t fed to the log-variance head w(t)")

    def __post_init__(self) -> None:
        require_positive("p_std", self.p_std)
        require_int("warmup_steps", self.warmup_steps, minimum=0)
        require_positive("tangent_c", self.tangent_c)
        require_positive("fd_step", self.fd_step)
        require_int("log_variance_channels", self.log_variance_channels, minimum=2)
        check_choice("tangent", self.tangent, get_args(TangentMethod))


class LogVarianceHead(nn.Module):
    """The adaptive weight ``w(t)`` (sCM sec. 4.3): fixed Fourier features ``[cos(2 pi f t), sin(2 pi f t)]`` of ``t``
    (``f ~ N(0, 1)``, seeded) into one zero-initialised linear layer, so ``w = 0`` at the start."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(channels // 2, generator=generator))
        self.linear = nn.Linear(2 * (channels // 2), 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, t: Tensor) -> Tensor:
        """``[B]`` times -> ``[B]`` log-variances."""
        args = 2 * math.pi * t.float()[:, None] * self.freqs[None, :]
        return self.linear(torch.cat([args.cos(), args.sin()], dim=1)).squeeze(1)


def tangent_warmup(step: int, warmup_steps: int) -> float:
    """``r = min(1, k / H)`` (sCM sec. 4.2); ``H = 0`` means no warm-up."""
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


def normalize_tangent(g: Tensor, c: float, rms: bool = False) -> Tensor:
    """``g / (||g|| + c)`` per sample (sCM sec. 4.3); with ``rms`` the norm is divided by ``sqrt(D)``."""
    norm = torch.linalg.vector_norm(g.flatten(1), dim=1)
    if rms:
        norm = norm / math.sqrt(g[0].numel())
    return g / append_dims(norm + c, g.ndim)


def scm_loss(F: Tensor, F_minus: Tensor, g: Tensor, log_variance: Tensor, prior: Tensor) -> Tensor:
    """``mean_b [prior e^{-w} ||F - F^- - g||^2 / D + w]`` (sCM Algorithm 1 with ``w`` the log-variance)."""
    per_sample_error = (F - F_minus - g).pow(2).flatten(1).mean(dim=1)
    return (prior * torch.exp(-log_variance) * per_sample_error + log_variance).mean()


class SCTObjective(BaseObjective):
    """sCT: the continuous-time consistency loss with the data's conditional velocity ``cos(t) z - sin(t) x0``."""

    #: no DistributedDataParallel wrapper: the gradient pass calls ``trigflow_F`` (see the module docstring)
    set_online = None  # type: ignore[assignment]

    def __init__(self, model: nn.Module, teacher: Optional[nn.Module] = None, options: Optional[SCTOptions] = None) -> None:
        if getattr(model, "parameterization", None) != "trigflow":
            raise ValueError(
                "sCT/sCD train a TrigFlow model: build it as Denoiser(net, parameterization='trigflow', sigma_data=...)"
            )
        self.options = o = options if options is not None else SCTOptions()
        self.model = model
        self.teacher = teacher
        if not isinstance(getattr(model, "scm_log_variance", None), LogVarianceHead):
            model.add_module("scm_log_variance", LogVarianceHead(o.log_variance_channels))

    @property
    def sigma_data(self) -> float:
        return float(self.model.sigma_data)

    def velocity(self, x0: Tensor, z: Tensor, x_t: Tensor, t: Tensor, class_labels: Optional[Tensor]) -> Tensor:
        """``dx_t/dt = cos(t) z - sin(t) x0`` (sCM eq. 6 along the sampled path)."""
        cos_t, sin_t = append_dims(torch.cos(t), x0.ndim), append_dims(torch.sin(t), x0.ndim)
        return cos_t * z - sin_t * x0

    @torch.no_grad()
    def stopgrad_and_tangent_(
        self, x_t: Tensor, t: Tensor, dxt_dt: Tensor, class_labels: Optional[Tensor], dropout_seed: int
    ) -> tuple[Tensor, Tensor]:
        """``(F^-, cos(t) sin(t) dF^-/dt)`` of the stop-gradient network, by JVP or a central finite difference."""
        model, cs = self.model, torch.cos(t) * torch.sin(t)

        def F_of(x: Tensor, tt: Tensor) -> Tensor:
            with seeded_dropout(dropout_seed, x.device):  # the gradient pass's dropout mask
                return model.trigflow_F(x, tt, class_labels)

        direction = append_dims(cs, x_t.ndim).to(x_t.dtype) * dxt_dt
        if self.options.tangent == "jvp":
            return torch.func.jvp(F_of, (x_t, t), (direction, cs))
        h = (self.options.fd_step * t.double()).clamp_min(1e-6)  # along (cs dx/dt, cs) with step h / cs ...
        h = torch.minimum(h, (math.pi / 2 - T_MARGIN - t.double()) / cs.double().clamp_min(1e-12))
        step_x = append_dims(h, x_t.ndim).to(x_t.dtype)
        plus = F_of(x_t + step_x * direction, (t.double() + h * cs).to(t.dtype)).double()
        minus = F_of(x_t - step_x * direction, (t.double() - h * cs).to(t.dtype)).double()
        tangent = (plus - minus) / append_dims(2 * h, x_t.ndim)
        return F_of(x_t, t), tangent.to(x_t.dtype)

    def stopgrad_and_tangent(
        self, x_t: Tensor, t: Tensor, dxt_dt: Tensor, class_labels: Optional[Tensor], dropout_seed: int
    ) -> tuple[Tensor, Tensor]:
        """:meth:`stopgrad_and_tangent_`, in float32 under float16 autocast: fp16 tangents overflow (sCM sec. 5;
        FastGen runs the JVP in bf16 or fp32), while bf16 keeps fp32's range and runs as autocast says."""
        device_type = x_t.device.type
        fp16 = (torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
                and torch.get_autocast_dtype(device_type) == torch.float16)  # fmt: skip
        with torch.autocast(device_type, enabled=False) if fp16 else contextlib.nullcontext():
            return self.stopgrad_and_tangent_(x_t.float() if fp16 else x_t, t, dxt_dt, class_labels, dropout_seed)

    def __call__(self, x0: Tensor, class_labels: Optional[Tensor], step: int, rng: StepRandom) -> ObjectiveOutput:
        """The sCM loss on ``x0`` at step ``step`` (Algorithm 1)."""
        check_batch(x0, rng)
        o, sd = self.options, self.sigma_data
        tau = torch.exp(o.p_mean + o.p_std * rng.randn())
        t = per_sample(torch.atan(tau / sd).clamp(T_MARGIN, math.pi / 2 - T_MARGIN), x0)
        z = rng.randn(*x0.shape[1:]).to(device=x0.device, dtype=x0.dtype) * sd
        cos_t, sin_t = append_dims(torch.cos(t), x0.ndim), append_dims(torch.sin(t), x0.ndim)
        x_t = cos_t * x0 + sin_t * z
        dxt_dt = self.velocity(x0, z, x_t, t, class_labels)
        seed = rng.dropout_seed()
        with seeded_dropout(seed, x0.device):
            F = self.model.trigflow_F(x_t, t, class_labels)  # the one pass with gradients
        F_minus, cs_dF_dt = self.stopgrad_and_tangent(x_t, t, dxt_dt, class_labels, seed)
        r = tangent_warmup(step, o.warmup_steps)
        g = -cos_t.pow(2) * (sd * F_minus.float() - dxt_dt) - r * (cos_t * sin_t * x_t + sd * cs_dF_dt.float())
        tangent_rms = g.flatten(1).pow(2).mean(dim=1).sqrt()  # before normalisation: the stability diagnostic
        g = normalize_tangent(g, o.tangent_c, o.rms_norm)
        prior = 1.0 / (sd * torch.tan(t)) if o.prior_weighting else torch.ones_like(t)
        log_variance = self.model.scm_log_variance(t)
        loss = scm_loss(F.float(), F_minus.float(), g, log_variance, prior)
        weight = (prior * torch.exp(-log_variance)).detach()  # the per-sample weight of the squared error
        return ObjectiveOutput(loss, {
            "loss": float(loss.detach()), "r": r, "w": float(log_variance.detach().mean()),
            "tangent_rms": float(tangent_rms.mean()), "tangent_rms_max": float(tangent_rms.max()),
            "weight": float(weight.mean()),
        })
