"""Draw samples for evaluation from a pipeline: consistency sampling, or Heun for an EDM teacher.

Samples come back in model space (images in [-1, 1], 2-D points as they are), drawn in batches from one
seeded generator, so the same call always gives the same samples.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from ..models.denoiser import Denoiser
from ..rng import GeneratorArg, randn
from ..sampling import sample_from_noise


def require_samples_fit(pipe, num_samples: int, batch_size: int) -> None:
    """Refuse ``num_samples`` float32 samples (all kept for the metric), or one batch, that cannot fit in memory."""
    from ..limits import require_memory

    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    per_sample = 4 * math.prod(pipe.sample_shape) + 8  # the sample and its class label
    require_memory(num_samples * per_sample, f"{num_samples:,} evaluation samples of shape {pipe.sample_shape}",
                   "evaluate fewer samples (--num-samples, --draws)")
    pipe.require_batch_fits(min(batch_size, num_samples), pipe.sample_shape)


def sampler_configs(
    pipe, steps: Sequence[int], timesteps: Optional[Sequence[int]] = None, heun_steps: Optional[int] = None
) -> list[tuple[str, int, dict[str, Any]]]:
    """``(name, NFE, sample_batch options)`` of each sampler to evaluate: EDM Heun when ``heun_steps`` is given
    (a teacher), else consistency sampling at each of ``steps`` (2 steps name the pipeline's tuned default
    timesteps) and at the explicit ``timesteps``."""
    if heun_steps is not None:
        return [(f"EDM Heun {heun_steps} steps", 2 * heun_steps - 1, {"heun_steps": heun_steps})]
    configs: list[tuple[str, int, dict[str, Any]]] = []
    for n in steps:
        default = pipe.default_timesteps.get(str(n))
        name = f"{n} step{'s' if n > 1 else ''}" + (f" {default}" if default else "")
        configs.append((name, n, {"num_inference_steps": n}))
    if timesteps:
        configs.append((f"timesteps {list(timesteps)}", len(timesteps), {"timesteps": list(timesteps)}))
    return configs


def _batches(num_samples: int, batch_size: int, labels: Optional[Tensor]):
    if labels is not None and len(labels) != num_samples:
        raise ValueError(f"got {len(labels)} class labels for {num_samples} samples; pass one per sample")
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        yield n, (None if labels is None else labels[start : start + n])


@torch.no_grad()
def sample_batch(
    pipe,
    batch_size: int,
    generator: GeneratorArg,
    *,
    class_labels: Optional[Tensor] = None,
    num_inference_steps: Optional[int] = 1,
    timesteps: Optional[Sequence[int]] = None,
    heun_steps: Optional[int] = None,
    eta: Optional[float] = None,
) -> Tensor:
    """One batch of samples in model space (images in [-1, 1]): consistency sampling, or with ``heun_steps`` the
    EDM Heun sampler of a pipeline whose network is an EDM denoiser (``2 * heun_steps - 1`` NFE).

    ``generator`` may be one ``torch.Generator`` or one per sample (then sample ``i`` depends on ``generator[i]``
    alone). Missing class labels of a class-conditional model are drawn from it after the noise, as the pipeline
    draws them.
    """
    if heun_steps is None:
        out = pipe(
            batch_size=batch_size,
            class_labels=class_labels,
            num_inference_steps=None if timesteps is not None else num_inference_steps,
            timesteps=None if timesteps is None else list(timesteps),
            generator=generator,
            output_type="pt",
            **({} if eta is None else {"eta": eta}),
        )
        images = out.images.float()  # images in [0, 1] to model space; other samples are there already
        return images * 2 - 1 if images.ndim == 4 else images
    config = pipe.scheduler.config
    sigma_min, sigma_max = float(config.sigma_min), float(config.sigma_max)
    denoiser = Denoiser(pipe.unet, "edm", sigma_min=sigma_min, sigma_data=float(config.sigma_data))
    noise = randn((batch_size, *pipe.sample_shape), generator=generator, device=pipe.device, dtype=pipe.dtype)
    labels = pipe.prepare_class_labels(batch_size, pipe.device, class_labels, generator)
    sample = sample_from_noise(
        denoiser, noise, parameterization="edm", class_labels=labels, heun_steps=heun_steps, sigma_min=sigma_min,
        sigma_max=sigma_max, rho=float(config.rho), clip_denoised=noise.ndim == 4,
    )
    return sample.float()


@torch.no_grad()
def generate_samples(
    pipe,
    num_samples: int,
    seed: int = 0,
    *,
    num_inference_steps: Optional[int] = 1,
    timesteps: Optional[Sequence[int]] = None,
    class_labels: Optional[Tensor] = None,
    batch_size: int = 1000,
    eta: Optional[float] = None,
) -> Tensor:
    """``num_samples`` consistency samples from ``pipe`` (model space), from ``seed``, in batches (``eta``: TCD's
    gamma, for a pipeline with a ``TCDScheduler``)."""
    require_samples_fit(pipe, num_samples, batch_size)
    generator = torch.Generator().manual_seed(seed)
    parts = [
        sample_batch(pipe, n, generator, class_labels=labels, num_inference_steps=num_inference_steps,
                     timesteps=timesteps, eta=eta)
        for n, labels in _batches(num_samples, batch_size, class_labels)
    ]
    return torch.cat(parts)


@torch.no_grad()
def generate_heun_samples(
    pipe,
    num_samples: int,
    seed: int = 0,
    *,
    heun_steps: int = 18,
    class_labels: Optional[Tensor] = None,
    batch_size: int = 1000,
) -> Tensor:
    """Samples of a pipeline whose network is an EDM denoiser, by the EDM Heun sampler (``2 * heun_steps - 1`` NFE)."""
    require_samples_fit(pipe, num_samples, batch_size)
    generator = torch.Generator().manual_seed(seed)
    parts = [
        sample_batch(pipe, n, generator, class_labels=labels, heun_steps=heun_steps)
        for n, labels in _batches(num_samples, batch_size, class_labels)
    ]
    return torch.cat(parts)
