"""Evaluation metrics: FD-digits (with its floor and class accuracy), SWD for 2-D toys, Fréchet distance, FID.

FID needs the optional ``fid`` extra and a local Inception-v3 weights file (see :mod:`cmkit.metrics.fid`).
"""

from __future__ import annotations

from .classifier import DigitsClassifier, load_digits_classifier
from .fd_digits import (
    DigitsEvaluation,
    balanced_class_labels,
    classifier_accuracy,
    digits_features,
    evaluate_digits,
    fd_digits,
    fd_digits_floor,
)
from .frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from .swd import projection_directions, sliced_wasserstein, swd_floor, toy_reference, toy_swd, toy_swd_floor
