"""Zero-shot editing with a consistency model: Song et al. (2023), Algorithm 4, in one function.

Given a reference ``y``, an orthogonal transform ``A`` and a 0/1 mask ``Omega`` in ``A``'s domain
(1 = generate, 0 = keep), every step keeps the known part of ``A y`` and takes the rest from the model:

1. ``y <- A^-1[(A y) * (1 - Omega)]``; ``x <- y + sigma_0 z`` (or a given ``start``);
2. for each ``sigma_i``: re-noise ``x <- x + sqrt(sigma_i^2 - eps^2) z`` (``i > 0``), ``x <- f(x, sigma_i)``,
   then project ``x <- A^-1[(A y) * (1 - Omega) + (A x) * Omega]``.

The loop is :func:`cmkit.sampling.sample_consistency` with this projection: with ``Omega`` all ones it is
multistep consistency sampling (CM Algorithm 1) from ``start``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..karras import SIGMA_MAX, SIGMA_MIN, add_noise
from ..rng import GeneratorArg, randn
from ..sampling import cpu_float64, sample_consistency
from .transforms import OrthogonalTransform

ConsistencyFn = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]

#: relative slack when checking sigmas against the model's range (float32 round-trips of the bounds).
_RANGE_RTOL = 1e-5


def check_sigmas(sigmas: Tensor, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> Tensor:
    """Validate a strictly descending, non-empty 1-d sigma sequence inside ``[sigma_min, sigma_max]``; float64."""
    s = cpu_float64(sigmas)
    if s.ndim != 1 or s.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-d sequence, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"sigmas must be finite, got {s.tolist()}")
    lo, hi = sigma_min * (1 - _RANGE_RTOL), sigma_max * (1 + _RANGE_RTOL)
    bad = [float(v) for v in s if v < lo or v > hi]
    if bad:
        raise ValueError(
            f"sigma values {bad} lie outside the model's range [{sigma_min:g}, {sigma_max:g}]; choose sigmas in "
            "that range (the model was trained only there)"
        )
    if s.numel() > 1 and not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"sigmas must be strictly descending, got {s.tolist()}")
    return s


def check_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    """Validate a 0/1 float mask that broadcasts to ``shape``; returns it unchanged."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(shape):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the images' shape {tuple(shape)}; give the "
            "mask the images' height and width"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(
            "the mask must be binary (0 = keep, 1 = generate); threshold it first, e.g. (mask >= 0.5).float()"
        )
    return mask


@torch.no_grad()
def edit(
    model: ConsistencyFn,
    y: Tensor,
    mask: Tensor,
    transform: OrthogonalTransform,
    sigmas: Tensor,
    generator: GeneratorArg = None,
    class_labels: Optional[Tensor] = None,
    start: Optional[Tensor] = None,
    *,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    clip_denoised: bool = True,
) -> Tensor:
    """Edit ``y`` zero-shot with the consistency function ``model(x, sigma, class_labels)`` (CM Algorithm 4).

    ``mask`` is ``Omega`` in ``transform``'s domain (1 = generate, 0 = keep ``A y``), broadcastable to
    ``y``; ``sigmas`` is strictly descending in ``[sigma_min, sigma_max]``. ``start``, if given, replaces the
    initial ``A^-1[(A y)(1 - Omega)] + sigma_0 z`` (e.g. a noisy image for denoising or SDEdit).
    """
    if y.ndim != 4:
        raise ValueError(f"y must be a [B, C, H, W] image batch, got shape {tuple(y.shape)}")
    transform.check(y.shape)
    mask = check_mask(mask, y.shape).to(device=y.device, dtype=y.dtype)
    sigmas = check_sigmas(sigmas, sigma_min, sigma_max)
    if start is not None and start.shape != y.shape:
        raise ValueError(f"start has shape {tuple(start.shape)} but y has {tuple(y.shape)}; they must match")
    for label, value in (("the image", y), ("the starting (noisy) image", start)):
        if value is not None and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{label} contains NaN or infinite values; pass finite pixels")

    keep = 1.0 - mask
    known = transform.forward(y) * keep

    def project(x: Tensor) -> Tensor:
        return transform.inverse(known + transform.forward(x) * mask)

    if start is None:
        z = randn(y.shape, generator, device=y.device, dtype=y.dtype)
        x = add_noise(transform.inverse(known), float(sigmas[0]), z)
    else:
        x = start.to(device=y.device, dtype=y.dtype)
    generate_all = bool((mask == 1).all())  # Omega = all ones: Algorithm 1, nothing to project
    return sample_consistency(
        model, x, sigmas, generator, class_labels=class_labels,
        sigma_min=sigma_min, clip_denoised=clip_denoised, project=None if generate_all else project,
    )
