"""Editing tasks as thin ``(A, Omega, start)`` definitions on top of :func:`cmkit.editing.algorithm.edit`.

Each builder takes images already in [-1, 1] as ``[B, C, H, W]`` tensors (see :mod:`cmkit.editing.inputs`)
and returns an :class:`EditTask`; ``task.run(model, sigmas, generator)`` performs the edit. ``Omega`` is 1
where the model generates and 0 where the reference is kept (CM Algorithm 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validate import require_int
from ..karras import RHO, SIGMA_MAX, SIGMA_MIN, add_noise, karras_sigmas
from ..limits import MAX_GRID_POINTS
from ..rng import GeneratorArg, randn
from ..sampling import cpu_float64
from .algorithm import ConsistencyFn, check_mask, check_sigmas, edit
from .transforms import LUMA_WEIGHTS, ColorTransform, IdentityTransform, OrthogonalTransform, PatchTransform

LatentKind = Literal["noise", "images"]


@dataclass(frozen=True)
class EditTask:
    """The inputs of Algorithm 4 for one task: reference ``y``, transform ``A``, mask ``Omega``, start."""

    reference: Tensor
    transform: OrthogonalTransform
    mask: Tensor
    #: the noisy image at ``sigma_start`` to start from; ``None`` starts from ``A^-1[(A y)(1-Omega)] + sigma_0 z``.
    start: Optional[Tensor] = None
    #: the noise level the task starts at (denoising, SDEdit, interpolation); ``None``: the model's ``sigma_max``.
    sigma_start: Optional[float] = None

    def sigmas(
        self, num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
    ) -> Tensor:
        """The default schedule: ``num_steps`` Karras sigmas from the task's start down to (not incl.) ``sigma_min``."""
        first = self.sigma_start if self.sigma_start is not None else sigma_max
        return editing_sigmas(num_steps, first, sigma_min, sigma_max, rho)

    def run(
        self,
        model: ConsistencyFn,
        sigmas: Tensor,
        generator: GeneratorArg = None,
        class_labels: Optional[Tensor] = None,
        *,
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        clip_denoised: bool = True,
    ) -> Tensor:
        """Run Algorithm 4 for this task with ``model`` over ``sigmas``."""
        s = check_sigmas(sigmas, sigma_min, sigma_max)
        if self.start is not None and self.sigma_start is not None:
            if not math.isclose(float(s[0]), self.sigma_start, rel_tol=1e-4):
                raise ValueError(
                    f"this task starts from an image at noise level {self.sigma_start:g}, so sigmas must begin "
                    f"there; got sigmas[0] = {float(s[0]):g}"
                )
        return edit(
            model, self.reference, self.mask, self.transform, s, generator, class_labels, self.start,
            sigma_min=sigma_min, sigma_max=sigma_max, clip_denoised=clip_denoised,
        )


def editing_sigmas(
    num_steps: int, sigma_start: float, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> Tensor:
    """``num_steps`` descending Karras sigmas from ``sigma_start`` towards ``sigma_min`` (which is left out)."""
    num_steps = require_int("the number of steps", num_steps, 1, " (a positive integer)", MAX_GRID_POINTS)
    check_sigmas(torch.tensor([sigma_start]), sigma_min, sigma_max)
    if num_steps > 1 and sigma_start <= sigma_min:
        raise ValueError(f"cannot take {num_steps} steps down from sigma = {sigma_start:g} = sigma_min; use one step")
    return karras_sigmas(num_steps + 1, sigma_min, sigma_start, rho)[:-1]


def inpainting(image: Tensor, mask: Tensor) -> EditTask:
    """Fill the pixels where ``mask`` is 1 (``A = I``, ``Omega`` = the mask, broadcast over channels)."""
    check_mask(mask, image.shape)
    return EditTask(image, IdentityTransform(), mask.to(image))


def colorization(image: Tensor, luma_weights: tuple[float, float, float] = LUMA_WEIGHTS) -> EditTask:
    """Keep the luma of ``image`` (1 channel: replicated to RGB; 3 channels: its luma) and generate chroma."""
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"colorization takes [B, 1, H, W] grayscale or [B, 3, H, W] RGB images, got {tuple(image.shape)}")
    rgb = image.expand(-1, 3, -1, -1).contiguous() if image.shape[1] == 1 else image
    transform = ColorTransform(luma_weights)
    return EditTask(rgb, transform, transform.first_axis_mask(rgb.shape).to(rgb))


def super_resolution(low_res: Tensor, factor: int) -> EditTask:
    """Upsample ``low_res`` by the integer ``factor``: keep every ``factor x factor`` patch mean, generate the rest."""
    if low_res.ndim != 4:
        raise ValueError(f"super-resolution takes [B, C, h, w] images, got shape {tuple(low_res.shape)}")
    transform = PatchTransform(factor)
    y = low_res.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)  # patch means = low-res pixels
    return EditTask(y, transform, transform.first_axis_mask(y.shape).to(y))


def denoising(noisy: Tensor, sigma: float) -> EditTask:
    """Remove Gaussian noise of known level ``sigma``: start the consistency model at ``sigma`` from ``noisy``."""
    return EditTask(noisy, IdentityTransform(), torch.ones_like(noisy[:1, :1]), start=noisy, sigma_start=float(sigma))


def stroke_editing(strokes: Tensor, sigma: float, generator: GeneratorArg = None) -> EditTask:
    """SDEdit (Meng et al. 2022) with a consistency model: start from ``strokes + sigma z`` and denoise."""
    noise = randn(strokes.shape, generator=generator, device=strokes.device, dtype=strokes.dtype)
    start = add_noise(strokes, float(sigma), noise)
    return EditTask(strokes, IdentityTransform(), torch.ones_like(strokes[:1, :1]), start=start, sigma_start=float(sigma))


def slerp(first: Tensor, second: Tensor, alpha: Tensor) -> Tensor:
    """Spherical interpolation between two same-shape tensors (flattened), one output per value in ``alpha``."""
    if first.shape != second.shape:
        raise ValueError(f"cannot interpolate between shapes {tuple(first.shape)} and {tuple(second.shape)}")
    # in float64 on the CPU (MPS has no float64); the result goes back to the inputs' device and dtype
    a, b = first.flatten().cpu().double(), second.flatten().cpu().double()
    cos = (a @ b) / (a.norm() * b.norm()).clamp_min(1e-30)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    t = cpu_float64(alpha).flatten()[:, None]
    if float(theta.sin()) < 1e-6:  # (anti)parallel: fall back to linear interpolation
        out = (1 - t) * a + t * b
    else:
        out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    return out.to(first.dtype).to(first.device).reshape(-1, *first.shape)


def interpolation(
    first: Tensor,
    second: Tensor,
    num_images: int,
    sigma: float,
    generator: GeneratorArg = None,
    *,
    kind: LatentKind = "noise",
) -> EditTask:
    """``num_images`` samples along a slerp between two latents at noise level ``sigma`` (endpoints included).

    ``kind="noise"``: ``first`` and ``second`` are standard normal noises; the latents are ``sigma z``.
    ``kind="images"``: they are images in [-1, 1]; the latents are ``image + sigma z`` with one shared ``z``.
    Each input is a single ``[1, C, H, W]`` sample.
    """
    if first.ndim != 4 or first.shape[0] != 1 or first.shape != second.shape:
        raise ValueError(
            f"interpolation takes two [1, C, H, W] tensors of one shape, got {tuple(first.shape)} and {tuple(second.shape)}"
        )
    num_images = require_int("num_images", num_images, 2, " (interpolation's two endpoints and those between)")
    if kind == "noise":
        latents = (float(sigma) * first, float(sigma) * second)
    elif kind == "images":
        z = randn(first.shape, generator=generator, device=first.device, dtype=first.dtype)
        latents = (add_noise(first, float(sigma), z), add_noise(second, float(sigma), z))
    else:
        raise ValueError(f"kind must be 'noise' or 'images', got {kind!r}")
    alphas = torch.linspace(0.0, 1.0, num_images)
    start = slerp(latents[0], latents[1], alphas).reshape(num_images, *first.shape[1:])
    reference = torch.zeros_like(start)
    return EditTask(reference, IdentityTransform(), torch.ones_like(start[:1, :1]), start=start, sigma_start=float(sigma))


def downsample(image: Tensor, factor: int) -> Tensor:
    """Average-pool by ``factor``: the low-resolution image whose pixels are the patch means."""
    return F.avg_pool2d(image, factor)
