"""FD-digits: the Fréchet distance between generated digits and the held-out digits, in classifier features.

The features are the penultimate layer of the shipped :class:`~cmkit.metrics.classifier.DigitsClassifier`.
Generated samples are compared with the 360 held-out images of the fixed split (36 per class), like FID
(Heusel et al. 2017) but in a feature space that suits 8x8 digits. Scores are reported as the mean and
(sample) standard deviation over draws of 360 samples, beside the noise floor: class-balanced subsets of
360 *training* images against the same held-out set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from ..data.digits import HELD_OUT_PER_CLASS, NUM_CLASSES, load_digits
from .classifier import DigitsClassifier, load_digits_classifier, to_classifier_input
from .frechet import frechet_distance_from_features

#: samples per draw, the size of the held-out set.
DRAW_SIZE = NUM_CLASSES * HELD_OUT_PER_CLASS
FLOOR_SEED = 0


def balanced_class_labels(num_samples: int = DRAW_SIZE) -> Tensor:
    """Labels ``0..9`` in equal runs (36 of each for 360), the class mix of the held-out set."""
    if num_samples < 1 or num_samples % NUM_CLASSES:
        raise ValueError(f"num_samples must be a positive multiple of {NUM_CLASSES}, got {num_samples}")
    return torch.arange(NUM_CLASSES).repeat_interleave(num_samples // NUM_CLASSES)


def _device_of(model: DigitsClassifier) -> torch.device:
    """Where the classifier's weights are: samples generated on another device are moved there."""
    return next(model.parameters()).device


@torch.no_grad()
def digits_features(images: Tensor, classifier: DigitsClassifier | None = None, batch_size: int = 1024) -> Tensor:
    """Penultimate classifier features ``[N, D]`` of ``[N, 1, H, W]`` images in [-1, 1]."""
    model = classifier or load_digits_classifier()
    x = to_classifier_input(images).to(_device_of(model))
    return torch.cat([model.features(chunk) for chunk in x.split(batch_size)]) if len(x) else x.new_zeros(0, 0)


@torch.no_grad()
def classifier_accuracy(samples: Tensor, labels: Tensor, classifier: DigitsClassifier | None = None) -> float:
    """Fraction of ``samples`` that the classifier assigns to the requested class ``labels``."""
    model = classifier or load_digits_classifier()
    device = _device_of(model)
    labels = torch.as_tensor(labels).to(device=device, dtype=torch.int64).flatten()
    x = to_classifier_input(samples).to(device)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"got {x.shape[0]} samples but {labels.shape[0]} labels; pass one label per sample")
    if x.shape[0] == 0:
        raise ValueError("classifier_accuracy needs at least one sample")
    predictions = torch.cat([model(chunk).argmax(dim=1) for chunk in x.split(1024)])
    return int((predictions == labels).sum()) / x.shape[0]  # counted exactly, no float64 on the device


@lru_cache(maxsize=2)
def fd_digits(samples: Tensor, classifier: DigitsClassifier | None = None) -> float:
    """FD-digits of one set of generated samples ``[N, 1, H, W]`` in [-1, 1] against the held-out set."""
    if samples.shape[0] < 2:
        raise ValueError(f"FD-digits needs at least 2 samples (360 are standard), got {samples.shape[0]}")
    held_out, _ = load_digits("test")
    return frechet_distance_from_features(digits_features(samples, classifier), digits_features(held_out, classifier))


def _class_balanced_subset(labels: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    picks = []
    for c in range(NUM_CLASSES):
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(picks)


@lru_cache(maxsize=8)
def fd_digits_floor(
    n: int = DRAW_SIZE, draws: int = 5, seed: int = FLOOR_SEED, classifier: DigitsClassifier | None = None
) -> tuple[float, float]:
    """Noise floor: FD-digits of ``draws`` class-balanced subsets of ``n`` training images (mean, std)."""
    if n % NUM_CLASSES or n < NUM_CLASSES:
        raise ValueError(f"n must be a positive multiple of {NUM_CLASSES}, got {n}")
    if draws < 2:
        raise ValueError(f"the floor needs at least 2 draws for a standard deviation, got {draws}")
    images, labels = load_digits("train")
    generator = torch.Generator().manual_seed(seed)
    picks = [_class_balanced_subset(labels, n // NUM_CLASSES, generator) for _ in range(draws)]
    values = [fd_digits(images[idx], classifier) for idx in picks]
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std())


@dataclass(frozen=True)
class DigitsEvaluation:
    """FD-digits over draws, its floor, their ratio, and class accuracy (None without labels)."""

    fd_mean: float
    fd_std: float
    fd_draws: tuple[float, ...]
    floor_mean: float
    floor_std: float
    accuracy: float | None
    num_samples: int

    @property
    def ratio(self) -> float:
        """``fd_mean / floor_mean``: 1 means as close to the held-out set as real training images."""
        return self.fd_mean / self.floor_mean


def evaluate_digits(samples: Tensor, labels: Tensor | None = None, draws: int = 5) -> DigitsEvaluation:
    """FD-digits of ``samples`` split into ``draws`` equal draws (360 each is standard), floor and accuracy."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    total = int(samples.shape[0])
    if total % draws or total // draws < 2:
        raise ValueError(
            f"{total} samples cannot be split into {draws} equal draws; generate draws * 360 samples "
            f"(here {draws * DRAW_SIZE})"
        )
    size = total // draws
    values = [fd_digits(chunk) for chunk in samples.split(size)]
    fd = torch.tensor(values, dtype=torch.float64)
    floor_n = size - size % NUM_CLASSES if size >= NUM_CLASSES else NUM_CLASSES
    floor_mean, floor_std = fd_digits_floor(floor_n)
    accuracy = classifier_accuracy(samples, labels) if labels is not None else None
    return DigitsEvaluation(
        fd_mean=float(fd.mean()),
        fd_std=float(fd.std()) if draws > 1 else 0.0,
        fd_draws=tuple(values),
        floor_mean=floor_mean,
        floor_std=floor_std,
        accuracy=accuracy,
        num_samples=total,
    )
