"""Tune the intermediate timestep of 2-step consistency sampling by ternary search over grid indices.

2-step sampling (CM Algorithm 1) runs ``f(sigma_max z, sigma_max)``, re-noises to ``tau`` and applies ``f``
again; in the pipeline's convention that is ``timesteps=[i, 0]`` with ``tau`` the ``i``-th point of the
scheduler's N-point Karras grid. Like the ternary search over ``--ts`` that OpenAI ran for FID (Song et al.
2023, sec. 6), :func:`ternary_search` shrinks an integer interval by thirds, assuming the metric is unimodal in
``i``; an optional coarse grid first guards against the metric's noise. Each evaluation samples with the same
seed, so the objective is a deterministic function of ``i``. The winner can be saved as the pipeline's default
for ``num_inference_steps=2`` (``cmkit_default_timesteps`` in ``model_index.json``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
from torch import Tensor

from .karras import karras_grid_sigmas
from .metrics.generate import generate_samples

#: ``metric(samples, labels) -> float`` (lower is better); samples are in model space ([-1, 1] for images).
MetricFn = Callable[[Tensor, Optional[Tensor]], float]
MetricName = Literal["fd_digits"]


@dataclass(frozen=True)
class SearchResult:
    """The best index, its objective value, and every evaluation made (index -> value, in order)."""

    best: int
    value: float
    evaluations: dict[int, float] = field(default_factory=dict)


def ternary_search(
    objective: Callable[[int], float], low: int, high: int, coarse_points: int = 0
) -> SearchResult:
    """Minimise ``objective`` over the integers in ``[low, high]``, assuming it is unimodal there.

    With ``coarse_points >= 3``, the objective is first evaluated at that many evenly spaced indices and the
    search continues between the neighbours of the best of them. Each index is evaluated at most once; the
    result is the best index among all evaluations.
    """
    if low > high:
        raise ValueError(f"empty search interval [{low}, {high}]")
    if coarse_points and coarse_points < 3:
        raise ValueError(f"coarse_points must be 0 (off) or at least 3, got {coarse_points}")
    evaluations: dict[int, float] = {}

    def f(i: int) -> float:
        if i not in evaluations:
            value = float(objective(i))
            if math.isnan(value):
                raise ValueError(f"the objective returned NaN at index {i}")
            evaluations[i] = value
        return evaluations[i]

    if coarse_points and high - low + 1 > coarse_points:
        grid = sorted({round(low + k * (high - low) / (coarse_points - 1)) for k in range(coarse_points)})
        j = min(range(len(grid)), key=lambda k: f(grid[k]))
        low, high = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
    while high - low > 2:
        third = (high - low) // 3
        m1, m2 = low + third, high - third
        v1, v2 = f(m1), f(m2)
        if v1 < v2:
            high = m2 - 1
        elif v1 > v2:
            low = m1 + 1
        else:
            low, high = m1, m2
    for i in range(low, high + 1):
        f(i)
    best = min(evaluations, key=lambda i: (evaluations[i], i))
    return SearchResult(best=best, value=evaluations[best], evaluations=dict(evaluations))


def fd_digits_metric(samples: Tensor, labels: Optional[Tensor]) -> float:
    """Mean FD-digits over draws of 360 samples (the number of samples must be a multiple of 360)."""
    from .metrics.fd_digits import DRAW_SIZE, evaluate_digits

    if samples.shape[0] % DRAW_SIZE:
        raise ValueError(f"FD-digits tuning needs a multiple of {DRAW_SIZE} samples, got {samples.shape[0]}")
    return evaluate_digits(samples, draws=samples.shape[0] // DRAW_SIZE).fd_mean


def _resolve_metric(metric: MetricName | MetricFn) -> MetricFn:
    if callable(metric):
        return metric
    if metric == "fd_digits":
        return fd_digits_metric
    raise ValueError(f"metric must be 'fd_digits' or a callable metric(samples, labels) -> float, got {metric!r}")


def default_labels(pipe, num_samples: int) -> Optional[Tensor]:
    """Equal runs of each class within every FD draw of 360 (36 per class each), else None if unconditional."""
    from .metrics.fd_digits import DRAW_SIZE

    num_classes = pipe.num_classes
    if num_classes is None:
        return None
    if num_samples % num_classes:
        raise ValueError(f"num_samples must be a multiple of the {num_classes} classes, got {num_samples}")
    draw = DRAW_SIZE if num_samples % DRAW_SIZE == 0 and DRAW_SIZE % num_classes == 0 else num_samples
    return torch.arange(num_classes).repeat_interleave(draw // num_classes).repeat(num_samples // draw)


@dataclass(frozen=True)
class TimestepTuning:
    """A tuned 2-step schedule: ``timesteps=[index, 0]``, its sigma (tau), value, and all evaluations."""

    index: int
    tau: float
    value: float
    num_train_timesteps: int
    evaluations: dict[int, float]

    @property
    def timesteps(self) -> list[int]:
        """The pipeline's 2-step ``timesteps`` argument."""
        return [self.index, 0]


def tune_two_step_timestep(
    pipe,
    metric: MetricName | MetricFn = "fd_digits",
    num_samples: int = 720,
    seed: int = 0,
    coarse_points: int = 0,
    low: int = 1,
    high: Optional[int] = None,
    batch_size: int = 1000,
    on_evaluation: Optional[Callable[[int, float, float], None]] = None,
) -> TimestepTuning:
    """Search the grid index ``i`` minimising ``metric`` of ``pipe(timesteps=[i, 0])`` samples from one seed.

    ``low``/``high`` bound the search (default: every interior grid index, 1..N-2). ``on_evaluation(i, tau,
    value)`` is called after each new evaluation (e.g. to print progress).
    """
    metric_fn = _resolve_metric(metric)
    n_train = int(pipe.scheduler.config.num_train_timesteps)
    sigma_min, sigma_max = float(pipe.scheduler.config.sigma_min), float(pipe.scheduler.config.sigma_max)
    rho = float(pipe.scheduler.config.rho)
    high = n_train - 2 if high is None else high
    if not 1 <= low <= high <= n_train - 1:
        raise ValueError(
            f"the search interval [{low}, {high}] must lie inside the grid's indices 1..{n_train - 1} "
            f"(num_train_timesteps={n_train}; index 0 is sigma_max, the first step)"
        )
    labels = default_labels(pipe, num_samples)

    def tau(i: int) -> float:
        return float(karras_grid_sigmas([i], n_train, sigma_min, sigma_max, rho)[0])

    def objective(i: int) -> float:
        samples = generate_samples(
            pipe, num_samples, seed, timesteps=[i, 0], class_labels=labels, batch_size=batch_size
        )
        value = float(metric_fn(samples, labels))
        if on_evaluation is not None:
            on_evaluation(i, tau(i), value)
        return value

    result = ternary_search(objective, low, high, coarse_points)
    return TimestepTuning(result.best, tau(result.best), result.value, n_train, result.evaluations)


def save_default_timesteps(pipeline_dir: str | os.PathLike, timesteps: list[int]) -> Path:
    """Record ``timesteps`` in ``pipeline_dir/model_index.json`` as the default for ``len(timesteps)`` steps."""
    import json

    from .io.atomic import atomic_write_text
    from .pipeline_io import DEFAULT_TIMESTEPS_KEY, MODEL_INDEX, parse_default_timesteps, read_model_index

    directory = Path(pipeline_dir)
    index = read_model_index(directory)
    defaults = parse_default_timesteps(index.get(DEFAULT_TIMESTEPS_KEY), str(directory / MODEL_INDEX))
    defaults.update(parse_default_timesteps({str(len(timesteps)): [int(t) for t in timesteps]}, "timesteps"))
    index[DEFAULT_TIMESTEPS_KEY] = dict(sorted(defaults.items()))
    path = directory / MODEL_INDEX
    atomic_write_text(path, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path
