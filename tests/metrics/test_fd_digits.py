from pathlib import Path

import pytest
import torch

from cmkit.data.digits import load_digits
from cmkit.metrics import (
    balanced_class_labels,
    classifier_accuracy,
    evaluate_digits,
    fd_digits,
    fd_digits_floor,
)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- FD-digits
def test_fd_digits_orders_real_noisy_and_gaussian_samples():
    test_x, _ = load_digits("test")
    train_x, _ = load_digits("train")
    assert fd_digits(test_x) == pytest.approx(0.0, abs=1e-6)
    floor_mean, floor_std = fd_digits_floor()
    assert floor_mean > 0 and floor_std > 0
    g = torch.Generator().manual_seed(0)
    noisy = train_x[:360] + 0.2 * torch.randn(train_x[:360].shape, generator=g)
    flat = train_x.flatten(1)
    gaussian = (flat.mean(0) + flat.std(0) * torch.randn(360, 64, generator=g)).reshape(-1, 1, 8, 8).clamp(-1, 1)
    assert floor_mean < fd_digits(noisy) < fd_digits(gaussian)
    assert fd_digits(gaussian) > 10 * floor_mean


def test_evaluate_digits_splits_into_draws():
    x, y = load_digits("train")
    idx = torch.cat([torch.nonzero(y == c).flatten()[:36] for c in range(10)] * 2)
    samples, labels = x[idx], y[idx]
    result = evaluate_digits(samples, labels, draws=2)
    assert len(result.fd_draws) == 2 and result.num_samples == 720
    assert result.fd_draws[0] == pytest.approx(fd_digits(samples[:360]))
    assert result.accuracy == pytest.approx(classifier_accuracy(samples, labels))
    assert result.ratio == pytest.approx(result.fd_mean / result.floor_mean)
    assert (result.floor_mean, result.floor_std) == fd_digits_floor()
    assert evaluate_digits(samples, draws=2).accuracy is None
    with pytest.raises(ValueError, match="equal draws"):
        evaluate_digits(samples[:700], draws=3)


def test_balanced_class_labels():
    labels = balanced_class_labels(360)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 36))
    with pytest.raises(ValueError, match="multiple of 10"):
        balanced_class_labels(355)
