"""Sliced Wasserstein distance (SWD) for low-dimensional samples such as the 2-D toys.

For a unit direction ``theta``, the 1-D Wasserstein-1 distance between two equal-size empirical sets is the
mean absolute difference of their sorted projections ``<x, theta>``. SWD averages it over a fixed set of
random directions (Rabin et al. 2011; Bonneel et al. 2015). cmkit fixes 256 directions drawn from a fixed
seed and compares N samples with a fixed reference set of N data points, so numbers are comparable across
runs. Its noise floor is the SWD of fresh data against the same reference.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

NUM_DIRECTIONS = 256
DIRECTIONS_SEED = 0
REFERENCE_SEED = 0
REFERENCE_SIZE = 10_000

#: draws ``n`` points from a distribution with a torch generator: ``sampler(n, generator) -> [n, D]``.
Sampler = Callable[[int, torch.Generator], Tensor]


def projection_directions(dim: int, num_directions: int = NUM_DIRECTIONS, seed: int = DIRECTIONS_SEED) -> Tensor:
    """``num_directions`` random unit vectors in ``R^dim`` (float64, rows), the same for a given seed."""
    if dim < 1 or num_directions < 1:
        raise ValueError(f"dim and num_directions must be positive, got {dim} and {num_directions}")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(num_directions, dim, generator=generator, dtype=torch.float64)
    return directions / directions.norm(dim=1, keepdim=True)


def sliced_wasserstein(samples: Tensor, reference: Tensor, directions: Tensor | None = None) -> float:
    """Mean over directions of the 1-D Wasserstein-1 distance between projections of two ``[N, D]`` sets."""
    x = torch.as_tensor(samples).detach().cpu().to(torch.float64)  # cast on the CPU: MPS has no float64
    y = torch.as_tensor(reference).detach().cpu().to(torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"samples and reference must both be [N, D] with the same N and D, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}; draw as many samples as the reference holds"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("samples or reference contain NaN or infinite values")
    if directions is None:
        directions = projection_directions(x.shape[1])
    directions = torch.as_tensor(directions, dtype=torch.float64)
    if directions.ndim != 2 or directions.shape[1] != x.shape[1]:
        raise ValueError(f"directions must be [K, {x.shape[1]}], got {tuple(directions.shape)}")
    proj_x = torch.sort(x @ directions.T, dim=0).values
    proj_y = torch.sort(y @ directions.T, dim=0).values
    return float((proj_x - proj_y).abs().mean(dim=0).mean())


def swd_floor(
    sampler: Sampler, reference: Tensor, draws: int = 5, seed: int = REFERENCE_SEED + 1
) -> tuple[float, float]:
    """Mean and standard deviation of the SWD of ``draws`` fresh data sets against ``reference``."""
    if draws < 2:
        raise ValueError(f"the floor needs at least 2 draws for a standard deviation, got {draws}")
    values = []
    for k in range(draws):
        generator = torch.Generator().manual_seed(seed + k)
        values.append(sliced_wasserstein(sampler(reference.shape[0], generator), reference))
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std())


def toy_reference(name: str, n: int = REFERENCE_SIZE, seed: int = REFERENCE_SEED) -> Tensor:
    """The fixed reference set of a 2-D toy distribution (``cmkit.data.toys.sample_toy``)."""
    from ..data.toys import sample_toy

    return sample_toy(name, n, torch.Generator().manual_seed(seed))


def toy_swd(samples: Tensor, name: str) -> float:
    """SWD of ``samples`` (``[N, 2]``) against the fixed ``N``-point reference of toy ``name``."""
    return sliced_wasserstein(samples, toy_reference(name, int(samples.shape[0])))


def toy_swd_floor(name: str, n: int = REFERENCE_SIZE, draws: int = 5) -> tuple[float, float]:
    """Floor of :func:`toy_swd`: fresh draws of toy ``name`` against its fixed reference (mean, std)."""
    from ..data.toys import sample_toy

    return swd_floor(lambda k, g: sample_toy(name, k, g), toy_reference(name, n), draws=draws)
