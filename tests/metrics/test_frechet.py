"""The Frechet distance: scipy agreement, singular covariances, closed forms, bad input."""

import numpy as np
import pytest
import torch
from cmkit.metrics import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
)
from builders import scipy_frechet


def test_frechet_matches_scipy_on_random_features():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 24))
    b = rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24)) * 0.5 + 0.3
    ours = frechet_distance_from_features(torch.from_numpy(a), b)
    assert ours == pytest.approx(scipy_frechet(a, b), rel=1e-9)


def test_frechet_singular_covariances_match_eigenvalue_formula():
    # Fewer samples than dimensions: both covariances are singular.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 48)), rng.normal(size=(30, 48)) + 0.1
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance_from_features(a, b) == pytest.approx(expected, rel=1e-7)


def test_frechet_closed_forms():
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2; identical statistics give 0.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    mu, sigma = feature_statistics(torch.randn(50, 5, generator=torch.Generator().manual_seed(0)))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-10)


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        frechet_distance([0.0, 1.0], np.eye(2), [0.0], np.eye(1))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(torch.zeros(1, 3))
