"""2-D toy distributions with exact definitions, for fast training and the SWD quality benchmark.

All samplers draw from a ``torch.Generator`` (float64 internally, float32 out) in the order documented
below, so a seed fixes the points.

* ``"8gaussians"``: ``k ~ U{0, ..., 7}``, then the point ``(cos 2 pi k/8, sin 2 pi k/8) + N(0, 0.1^2 I)``
  (eight Gaussians of std 0.1 on the unit circle). Draw order: ``k`` [n], then the noise [n, 2].
* ``"moons"``: two interleaved half circles. ``theta ~ U(0, pi)`` [n]; ``u ~ U(0, 1)`` [n] picks the arc
  (upper if ``u < 1/2``): upper ``(cos theta, sin theta)``, lower ``(1 - cos theta, 0.5 - sin theta)``.
  Subtract ``(0.5, 0.25)`` to centre it, then add ``N(0, 0.05^2 I)`` [n, 2].
* ``"swissroll"``: ``u ~ U(0, 1)`` [n], ``t = 1.5 pi (1 + 2 u)`` (so t in [1.5 pi, 4.5 pi], 1.5 turns),
  the point ``(t cos t, t sin t) / 10 + N(0, 0.05^2 I)`` [n, 2] (radius 0.47 to 1.41).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, get_args

import torch
from torch import Tensor

ToyName = Literal["8gaussians", "moons", "swissroll"]
TOY_NAMES: tuple[str, ...] = get_args(ToyName)


def _check_n(n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"the number of points must be a positive integer, got {n!r}")


def eight_gaussians(n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` points of eight Gaussians (std 0.1) at angles ``2 pi k/8`` on the unit circle."""
    _check_n(n)
    k = torch.randint(0, 8, (n,), generator=generator).to(torch.float64)
    angle = 2.0 * math.pi * k / 8.0
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (centres + 0.1 * noise).float()


def two_moons(n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` points of two moons (noise std 0.05), centred by subtracting ``(0.5, 0.25)``."""
    _check_n(n)
    theta = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    x = torch.where(upper, torch.cos(theta), 1.0 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    points = torch.stack([x - 0.5, y - 0.25], dim=1)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (points + 0.05 * noise).float()


def swiss_roll(n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` points of a 2-D Swiss roll: ``(t cos t, t sin t)/10`` for ``t ~ U(1.5 pi, 4.5 pi)``, noise std 0.05."""
    _check_n(n)
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator, dtype=torch.float64))
    points = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 10.0
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (points + 0.05 * noise).float()


_SAMPLERS = {"8gaussians": eight_gaussians, "moons": two_moons, "swissroll": swiss_roll}


def sample_toy(name: ToyName, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` points ``[n, 2]`` (float32) of the toy distribution ``name``."""
    try:
        sampler = _SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_NAMES)}") from None
    return sampler(n, generator)
