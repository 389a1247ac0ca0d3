"""FID as the EDM / consistency-model papers report it: 50,000 samples, per-seed noise, 8-bit images, min of 3.

The protocol of EDM (Karras et al. 2022, ``generate.py`` and ``fid.py``; also used by iCT and ECT):

* **samples**: ``N = 50,000`` per run; sample ``i`` of a run is drawn with seed ``s_i`` alone (its own
  ``torch.Generator``), so it does not depend on the batch size or on which other samples share its batch;
* **class labels** of a class-conditional model: drawn per seed, uniformly over the classes, from that seed's
  generator after the noise (EDM's default, ``--labels random``), or ``s_i mod num_classes`` (``balanced``);
* **quantisation**: every sample becomes the uint8 image of its PNG, ``floor(127.5 x + 128)`` clipped to
  [0, 255] (:func:`cmkit.metrics.fid.quantize_uint8`), before the feature network sees it;
* **features**: the 2048-d pool features of the FID Inception-v3 (on the uint8 images, greyscale repeated to
  RGB), moments accumulated in float64 (:mod:`cmkit.metrics.fid_stats`);
* **reference**: the statistics of the training set (EDM's ``fid-refs/*.npz``, or computed from the dataset);
* **three runs** on the disjoint seed ranges ``[s0, s0 + N)``, ``[s0 + N, s0 + 2N)``, ``[s0 + 2N, s0 + 3N)``
  (EDM: 0-49999, 50000-99999, 100000-149999); the paper number is the **minimum** of the three.

Memory stays bounded: one batch of samples and one batch of features at a time, plus the ``D x D`` moments.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import torch
from torch import Tensor

from .._validate import check_choice, require_int
from .fid import INCEPTION, FeatureExtractor, extract_features, quantize_uint8
from .fid_stats import FeatureMoments, FidStats, check_compatible
from .frechet import frechet_distance
from .generate import sample_batch

#: samples per run in the papers
PAPER_NUM_SAMPLES = 50_000
#: runs (disjoint seed ranges) whose minimum the papers report
PAPER_RUNS = 3
LabelMode = Literal["random", "balanced"]
LABEL_MODES: tuple[str, ...] = ("random", "balanced")
PathLike = Union[str, os.PathLike]


def seed_ranges(num_samples: int, runs: int = PAPER_RUNS, first_seed: int = 0) -> list[range]:
    """The disjoint seed ranges of ``runs`` runs of ``num_samples`` each, starting at ``first_seed``."""
    n = require_int("num_samples", num_samples, 2, " (FID needs at least 2 samples per run)")
    r = require_int("runs", runs, 1)
    s0 = require_int("first_seed", first_seed, 0)
    return [range(s0 + k * n, s0 + (k + 1) * n) for k in range(r)]


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed (``seed mod 2^32``, as EDM's ``StackedRandomGenerator`` seeds them)."""
    return [torch.Generator().manual_seed(int(s) % (1 << 32)) for s in seeds]


def labels_for_seeds(seeds: Sequence[int], num_classes: Optional[int], mode: LabelMode) -> Optional[Tensor]:
    """Class labels of ``seeds`` for ``balanced`` mode (``seed mod num_classes``); None when they are drawn per
    seed by the sampler (``random``) or the model is unconditional."""
    check_choice("labels", mode, LABEL_MODES)
    if num_classes is None or mode == "random":
        return None
    return torch.tensor([int(s) % num_classes for s in seeds], dtype=torch.long)


def small_sample_note(num_samples: int) -> Optional[str]:
    """The warning for runs below the papers' 50,000 samples (FID is biased upward at small N), else None."""
    if num_samples >= PAPER_NUM_SAMPLES:
        return None
    return (
        f"FID from {num_samples:,} samples per run is biased upward (more so the smaller N is) and is not "
        f"comparable to published numbers, which use {PAPER_NUM_SAMPLES:,}; compare it only with runs at the same N"
    )


def _save_pngs(pixels: Tensor, seeds: Sequence[int], directory: Path) -> None:
    """EDM's layout: ``directory/<seed rounded down to 1000, 6 digits>/<seed, 6 digits>.png``."""
    from PIL import Image

    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    for seed, image in zip(seeds, array):
        folder = directory / f"{seed - seed % 1000:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{seed:06d}.png")


@torch.no_grad()
def generated_stats(
    pipe: Any,
    seeds: Sequence[int],
    extractor: FeatureExtractor,
    extractor_name: str = INCEPTION,
    *,
    sampler: Optional[dict[str, Any]] = None,
    labels: LabelMode = "random",
    batch_size: int = 250,
    feature_batch_size: int = 64,
    device: Union[str, torch.device, None] = None,
    save_images: Optional[PathLike] = None,
) -> FidStats:
    """Feature statistics of one sample per seed, drawn in batches and quantised to uint8 before the features.

    ``sampler`` holds :func:`cmkit.metrics.generate.sample_batch` options (``num_inference_steps``,
    ``timesteps`` or ``heun_steps``); ``save_images`` writes each sample's PNG (EDM's folder layout).
    """
    if len(pipe.sample_shape) != 3:
        raise ValueError(f"FID measures images [C, H, W]; this model makes samples of shape {pipe.sample_shape}")
    batch_size = require_int("batch_size", batch_size, 1)
    feature_batch_size = require_int("feature_batch_size", feature_batch_size, 1)
    pipe.require_batch_fits(min(batch_size, len(seeds)), pipe.sample_shape)
    device = pipe.device if device is None else torch.device(device)
    moments = FeatureMoments()
    for start in range(0, len(seeds), batch_size):
        batch_seeds = [int(s) for s in seeds[start : start + batch_size]]
        class_labels = labels_for_seeds(batch_seeds, pipe.num_classes, labels)
        samples = sample_batch(pipe, len(batch_seeds), seed_generators(batch_seeds), class_labels=class_labels,
                               **(sampler or {}))
        pixels = quantize_uint8(samples)
        if save_images is not None:
            _save_pngs(pixels, batch_seeds, Path(save_images))
        for chunk in pixels.split(feature_batch_size):
            moments.add(extract_features(extractor, chunk, device))
    return moments.stats(extractor_name)


@dataclass(frozen=True)
class FidRun:
    """One run: its seeds ``[first, last]``, its FID and the seconds it took (sampling and features)."""

    first_seed: int
    last_seed: int
    fid: float
    seconds: float


@dataclass(frozen=True)
class FidResult:
    """The runs of one sampler; :attr:`fid` is their minimum, the number the papers report."""

    runs: tuple[FidRun, ...]
    num_samples: int
    extractor: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fid(self) -> float:
        """The minimum over runs."""
        return min(r.fid for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: every run, the minimum, N and the feature network."""
        return {
            "fid_min": self.fid, "num_samples": self.num_samples, "extractor": self.extractor,
            "runs": [{"seeds": [r.first_seed, r.last_seed], "fid": r.fid, "seconds": r.seconds} for r in self.runs],
            "notes": list(self.notes),
        }


def paper_fid(
    pipe: Any,
    reference: FidStats,
    extractor: FeatureExtractor,
    extractor_name: str = INCEPTION,
    *,
    num_samples: int = PAPER_NUM_SAMPLES,
    runs: int = PAPER_RUNS,
    first_seed: int = 0,
    save_images: Optional[PathLike] = None,
    **options: Any,
) -> FidResult:
    """FID of ``pipe`` against ``reference`` by the papers' protocol (module docstring): ``runs`` runs of
    ``num_samples`` on disjoint seed ranges, each against the same reference; the result keeps every run and
    reports their minimum. ``options`` go to :func:`generated_stats` (``sampler``, ``labels``, batch sizes,
    ``device``). Below 50,000 samples a warning says the value is not comparable to papers.
    """
    check_compatible(reference, extractor_name)
    ranges = seed_ranges(num_samples, runs, first_seed)
    note = small_sample_note(num_samples)
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    results = []
    for seeds in ranges:
        t0 = time.perf_counter()
        stats = generated_stats(pipe, seeds, extractor, extractor_name, save_images=save_images, **options)
        check_compatible(reference, extractor_name, stats.dim)
        value = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
        results.append(FidRun(seeds[0], seeds[-1], value, time.perf_counter() - t0))
    return FidResult(tuple(results), int(num_samples), extractor_name, (note,) if note else ())

