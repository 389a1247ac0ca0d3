"""Preconditioning: wrap a raw network ``F`` into a consistency function or an EDM denoiser.

``D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), class_labels)``
(EDM eq. 7; CM appendix C). The network sees exactly what the diffusers pipeline feeds the UNet
(``scale_model_input`` = ``c_in x`` and ``timestep`` = ``c_noise``), so a trained consistency model is
sampled by the ordinary :class:`~cmkit.ConsistencyModelPipeline` with ``CMStochasticIterativeScheduler``.

``parameterization="trigflow"`` is sCM's (Lu & Song 2024, eq. 8): the wrapper still takes EDM's ``(x_sigma, sigma)``
and returns the clean estimate, through ``t = arctan(sigma / sigma_d)``, ``x_t = cos(t) x_sigma`` and
``f = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, 1000 t)`` (:mod:`cmkit.trigflow`), so every sigma-space sampler
and editor works on TrigFlow models unchanged. :meth:`Denoiser.trigflow_F` exposes the raw ``F`` in TrigFlow time
for the sCT / sCD objectives (which differentiate it with ``torch.func.jvp``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .._validate import check_choice
from ..karras import (
    PARAMETERIZATIONS,
    SIGMA_DATA,
    SIGMA_MIN,
    Parameterization,
    append_dims,
    c_in,
    output_scalings,
    sigma_to_timestep,
)
from ..trigflow import (
    edm_to_trigflow_x,
    sigma_to_t,
    t_to_sigma,
    trigflow_consistency,
    trigflow_F_from_denoised,
    TIME_INPUTS,
    TimeInput,
    trigflow_network_input,
    trigflow_to_edm_x,
)

#: ``model(x_sigma, sigma, class_labels) -> clean estimate`` (a Denoiser, an EDM teacher, a consistency function).
DenoiseFn = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]
#: ``F(x_t, t, class_labels) -> F`` in TrigFlow time (e.g. ``Denoiser.trigflow_F``).
TrigFlowFn = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


def call_network(
    net: nn.Module, x: Tensor, timestep: Tensor, class_labels: Optional[Tensor], target_timestep: Optional[Tensor] = None
) -> Tensor:
    """Call a UNet2DModel-like network (``net(sample, timestep, class_labels=..., return_dict=False)``); a TCD
    network that takes its target time (``accepts_target_timestep``) also gets ``target_timestep``."""
    if target_timestep is not None and getattr(net, "accepts_target_timestep", False):
        out = net(x, timestep, class_labels=class_labels, return_dict=False, target_timestep=target_timestep)
    else:
        out = net(x, timestep, class_labels=class_labels, return_dict=False)
    return out[0] if isinstance(out, (tuple, list)) else out


class Denoiser(nn.Module):
    """A network ``F`` preconditioned as a consistency function ``f``, an EDM denoiser ``D`` or an sCM ``f``."""

    def __init__(
        self,
        net: nn.Module,
        parameterization: Parameterization = "consistency",
        sigma_min: float = SIGMA_MIN,
        sigma_data: float = SIGMA_DATA,
        trigflow_time_input: TimeInput = "trigflow",
    ) -> None:
        super().__init__()
        check_choice("trigflow_time_input", trigflow_time_input, TIME_INPUTS)
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {', '.join(map(repr, PARAMETERIZATIONS))}, got {parameterization!r}"
            )
        self.net = net
        self.parameterization: Parameterization = parameterization
        self.sigma_min = float(sigma_min)
        self.sigma_data = float(sigma_data)
        #: the network's time input for "trigflow" (:func:`cmkit.trigflow.trigflow_network_input`)
        self.trigflow_time_input: TimeInput = trigflow_time_input

    def forward(
        self, x: Tensor, sigma: Tensor, class_labels: Optional[Tensor] = None, target_sigma: Optional[Tensor] = None
    ) -> Tensor:
        """``f(x, sigma)`` for per-sample ``sigma`` of shape ``[B]`` (a scalar is broadcast).

        ``target_sigma`` is TCD's target time ``s`` (:mod:`cmkit.vp`) for a network that takes it
        (``accepts_target_timestep``); it reaches the network as ``c_noise(sigma_s)``, in the units of ``sigma``'s.
        A ``"tcd"`` denoiser maps to ``sigma_min`` (the VP schedule's timestep 0, where its sampling ends) by default.
        """
        if target_sigma is None and self.parameterization == "tcd" and self.accepts_target_sigma:
            target_sigma = self.sigma_min
        sigma = self._per_sample_sigma(sigma, x)
        if self.parameterization == "trigflow":
            return denoised_of_trigflow(self.trigflow_F, x, sigma, class_labels, self.sigma_data)
        c_skip, c_out = output_scalings(sigma, self.parameterization, self.sigma_min, self.sigma_data)
        x_in = x * append_dims(c_in(sigma, self.sigma_data), x.ndim).to(x.dtype)
        target = None if target_sigma is None else sigma_to_timestep(self._per_sample_sigma(target_sigma, x))
        f = call_network(self.net, x_in, sigma_to_timestep(sigma), class_labels, target)
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * f.to(x.dtype)

    @staticmethod
    def _per_sample_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma

    @property
    def accepts_target_sigma(self) -> bool:
        """Whether the network takes TCD's target time (``target_sigma`` reaches it; else it is ignored)."""
        return bool(getattr(self.net, "accepts_target_timestep", False))

    def trigflow_F(self, x_t: Tensor, t: Tensor, class_labels: Optional[Tensor] = None) -> Tensor:
        """The raw network output ``F_theta(x_t / sigma_d, c_noise(t))`` at TrigFlow time ``t`` (sCM eq. 8).

        ``t`` is per sample (``[B]``; a scalar is broadcast), in radians; the network receives
        ``timestep = 1000 t`` (or EDM's ``c_noise`` with ``trigflow_time_input="edm"``,
        :func:`cmkit.trigflow.trigflow_network_input`). Pure tensor ops, so ``torch.func.jvp`` may carry tangents in
        both ``x_t`` and ``t``. Only for ``parameterization="trigflow"``.
        """
        if self.parameterization != "trigflow":
            raise ValueError(
                f"trigflow_F needs a Denoiser built with parameterization='trigflow', this one is "
                f"{self.parameterization!r}; view an EDM or consistency model in TrigFlow time with "
                "cmkit.models.denoiser.trigflow_F_of(model, x_t, t, class_labels, sigma_data)"
            )
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        timestep, sign = trigflow_network_input(t, self.trigflow_time_input, self.sigma_data)
        out = call_network(self.net, x_t / self.sigma_data, timestep, class_labels)
        return out if sign == 1.0 else -out


def trigflow_F_of(
    model: DenoiseFn, x_t: Tensor, t: Tensor, class_labels: Optional[Tensor] = None, sigma_data: float = SIGMA_DATA
) -> Tensor:
    """Any sigma-space model viewed as a TrigFlow model: its ``F`` at ``0 < t < pi/2`` (sCM sec. 2).

    ``F = (cos(t) x_t - D(x_t / cos t, sigma_d tan t)) / (sin(t) sigma_d)``, where ``D`` is ``model`` (an EDM
    denoiser, a CM consistency function, or a TrigFlow Denoiser). The TrigFlow consistency function of this ``F``
    reproduces ``D`` (:func:`denoised_of_trigflow`); an EDM teacher's ``sigma_d F`` is its PF-ODE velocity
    ``dx_t/dt`` (the sCD target).
    """
    sigma = t_to_sigma(t, sigma_data)
    denoised = model(trigflow_to_edm_x(x_t, t.to(x_t.dtype)), sigma, class_labels)
    return trigflow_F_from_denoised(x_t, t, denoised.to(x_t.dtype), sigma_data)


def denoised_of_trigflow(
    trigflow_F: TrigFlowFn,
    x_sigma: Tensor,
    sigma: Tensor,
    class_labels: Optional[Tensor] = None,
    sigma_data: float = SIGMA_DATA,
) -> Tensor:
    """A TrigFlow ``F`` viewed in EDM's sigma space: ``D(x_sigma, sigma) = f(cos(t) x_sigma, t)``, ``t = arctan(sigma / sigma_d)``."""
    t = sigma_to_t(sigma, sigma_data)
    x_t = edm_to_trigflow_x(x_sigma, t.to(x_sigma.dtype))
    return trigflow_consistency(x_t, t, trigflow_F(x_t, t, class_labels).to(x_sigma.dtype), sigma_data)
