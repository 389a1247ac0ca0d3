"""Pure samplers, k-diffusion style: ``(model, x, sigmas, generator) -> x``.

``model(x, sigma, class_labels)`` is a denoiser: a consistency function ``f`` or an EDM denoiser ``D``
(see :class:`cmkit.models.denoiser.Denoiser`), where ``sigma`` is a per-sample tensor. ``sigmas`` are plain
descending tensors, e.g. from :func:`cmkit.karras.karras_sigmas`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .karras import SIGMA_MIN, SigmaLike, append_dims, renoise
from .rng import GeneratorArg, randn

DenoiseFn = Callable[..., Tensor]
#: maps a clean estimate onto the set an edit allows, e.g. ``x -> A^-1[(A y)(1 - Omega) + (A x) Omega]``.
Projection = Callable[[Tensor], Tensor]


def _sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    return torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0]).clone()


def cpu_float64(values: Tensor | Sequence[float]) -> Tensor:
    """``values`` (sigmas, interpolation weights) as a float64 CPU tensor, moved before the cast: MPS has no float64."""
    if isinstance(values, Tensor):
        values = values.detach().cpu()
    return torch.as_tensor(values, dtype=torch.float64)


def consistency_step(
    denoised: Tensor,
    sigma_next: Optional[SigmaLike],
    z: Optional[Tensor] = None,
    *,
    sigma_min: float = SIGMA_MIN,
    clip_denoised: bool = False,
    project: Optional[Projection] = None,
) -> Tensor:
    """One step of multistep consistency sampling (CM Algorithm 1) after the network's evaluation.

    ``denoised`` is ``x = f(x_tau, tau)``; it is clamped to [-1, 1] (``clip_denoised``), projected onto an edit's
    known part (``project``, CM Algorithm 4; ``None`` for Omega = all ones), then re-noised to the next level:
    ``x_next = x + sqrt(sigma_next^2 - eps^2) z``. ``sigma_next=None`` ends the chain and returns ``x``.
    """
    if clip_denoised:
        denoised = denoised.clamp(-1.0, 1.0)
    if project is not None:
        denoised = project(denoised)
    if sigma_next is None:
        return denoised
    if z is None:
        raise ValueError(f"a step to sigma_next={float(sigma_next):g} needs its noise: pass z (standard normal)")
    return renoise(denoised, sigma_next, z, sigma_min)


@torch.no_grad()
def sample_consistency(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    generator: GeneratorArg = None,
    *,
    class_labels: Optional[Tensor] = None,
    sigma_min: float = SIGMA_MIN,
    clip_denoised: bool = False,
    s_noise: float = 1.0,
    project: Optional[Projection] = None,
) -> Tensor:
    """Multistep consistency sampling (CM Algorithm 1). ``x`` is already noise at ``sigmas[0]``.

    Each step maps to data with ``f(x, sigma_i)`` and re-noises to ``sigma_{i+1}`` (:func:`consistency_step`),
    drawing ``z`` from ``generator`` scaled by ``s_noise``. One sigma is one-step generation. Zero-shot editing
    (CM Algorithm 4) is this loop with ``project`` = its projection onto the known part of ``A y``.
    """
    sigmas = cpu_float64(sigmas)
    for i, sigma in enumerate(sigmas):
        denoised = model(x, _sigma_batch(float(sigma), x), class_labels)
        if i + 1 == len(sigmas):
            return consistency_step(denoised, None, clip_denoised=clip_denoised, project=project)
        z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * s_noise
        x = consistency_step(
            denoised, float(sigmas[i + 1]), z, sigma_min=sigma_min, clip_denoised=clip_denoised, project=project
        )
    return x


def ode_derivative(model: DenoiseFn, x: Tensor, sigma: Tensor, class_labels: Optional[Tensor] = None) -> Tensor:
    """Probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` (EDM eq. 3 with sigma(t) = t)."""
    return (x - model(x, sigma, class_labels)) / append_dims(sigma, x.ndim)


def euler_step(
    model: DenoiseFn, x: Tensor, sigma: Tensor, sigma_next: Tensor, class_labels: Optional[Tensor] = None
) -> Tensor:
    """One Euler step of the PF-ODE from per-sample ``sigma`` to ``sigma_next``."""
    d = ode_derivative(model, x, sigma, class_labels)
    return x + append_dims(sigma_next - sigma, x.ndim) * d


def heun_step(
    model: DenoiseFn, x: Tensor, sigma: Tensor, sigma_next: Tensor, class_labels: Optional[Tensor] = None
) -> Tensor:
    """One Heun (2nd-order) step of the PF-ODE (EDM Algorithm 1, lines 5-8); Euler where ``sigma_next == 0``.

    Always two network evaluations (the second is discarded for samples with ``sigma_next == 0``): ``sigma_next``
    may differ per sample, and deciding on the host would synchronise with the device. A sampler whose whole
    batch steps to 0 takes :func:`euler_step` instead, as :func:`sample_heun` does.
    """
    d = ode_derivative(model, x, sigma, class_labels)
    dt = append_dims(sigma_next - sigma, x.ndim)
    x_euler = x + dt * d
    safe_next = torch.where(sigma_next > 0, sigma_next, torch.ones_like(sigma_next))
    d_next = ode_derivative(model, x_euler, safe_next, class_labels)
    x_heun = x + dt * 0.5 * (d + d_next)
    return torch.where(append_dims(sigma_next > 0, x.ndim), x_heun, x_euler)


@torch.no_grad()
def sample_heun(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    generator: GeneratorArg = None,
    *,
    class_labels: Optional[Tensor] = None,
) -> Tensor:
    """Deterministic EDM Heun sampler (EDM Algorithm 1, S_churn = 0) over ``sigmas`` ending in 0.

    ``sigmas`` = ``N`` nonzero noise levels then 0 (e.g. :func:`edm_sampling_sigmas`) cost ``2N - 1`` network
    evaluations (18 levels: 35 NFE): a Heun step to each nonzero level, and an Euler step to 0, where EDM
    Algorithm 1 (line 7) skips the correction. ``generator`` is unused (the sampler is deterministic) and kept
    for the common signature.
    """
    del generator
    host = cpu_float64(sigmas).to(torch.float32)  # decides Heun or Euler without a device sync
    sigmas = host.to(x.device)
    for i in range(len(sigmas) - 1):
        step = heun_step if host[i + 1] > 0 else euler_step
        x = step(model, x, _sigma_batch(sigmas[i], x), _sigma_batch(sigmas[i + 1], x), class_labels)
    return x


def edm_sampling_sigmas(num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM's sampling schedule: ``num_steps`` Karras sigmas then 0 (:func:`sample_heun`: ``2 num_steps - 1`` NFE)."""
    from .karras import karras_sigmas

    return torch.cat([karras_sigmas(num_steps, sigma_min, sigma_max, rho), torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def sample_from_noise(
    model: DenoiseFn,
    noise: Tensor,
    generator: GeneratorArg = None,
    *,
    parameterization: str = "consistency",
    class_labels: Optional[Tensor] = None,
    heun_steps: int = 18,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    clip_denoised: bool = False,
) -> Tensor:
    """Evaluation samples from standard-normal ``noise``: the one driver that training reports and metrics share.

    A consistency function takes one step from ``sigma_max`` (CM Algorithm 1 with one sigma); an EDM denoiser
    (``parameterization="edm"``) is integrated by :func:`sample_heun` over ``heun_steps`` Karras levels
    (``2 * heun_steps - 1`` NFE). ``clip_denoised`` clamps the result to [-1, 1] (images).
    """
    x = noise * sigma_max
    if parameterization == "edm":
        out = sample_heun(model, x, edm_sampling_sigmas(heun_steps, sigma_min, sigma_max, rho), class_labels=class_labels)
        return out.clamp(-1.0, 1.0) if clip_denoised else out
    sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    return sample_consistency(
        model, x, sigmas, generator, class_labels=class_labels, sigma_min=sigma_min, clip_denoised=clip_denoised
    )
