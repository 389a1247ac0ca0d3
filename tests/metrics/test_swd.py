"""Sliced Wasserstein distance: fixed directions, shifts, floors."""

import importlib.util
import pytest
import torch
from cmkit.metrics import (
    projection_directions,
    sliced_wasserstein,
    swd_floor,
)


def test_swd_directions_are_fixed_unit_vectors():
    d = projection_directions(2)
    assert d.shape == (256, 2)
    assert torch.allclose(d.norm(dim=1), torch.ones(256, dtype=torch.float64))
    assert torch.equal(d, projection_directions(2))
    assert not torch.equal(d, projection_directions(2, seed=1))


def test_swd_of_a_shift_is_the_mean_projected_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.2], dtype=torch.float64)
    expected = float((projection_directions(2) @ shift).abs().mean())
    assert sliced_wasserstein(x + shift, x) == pytest.approx(expected, rel=1e-12)
    assert sliced_wasserstein(x, x) == 0.0
    y = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(2 * x, 2 * y) == pytest.approx(2 * sliced_wasserstein(x, y), rel=1e-12)


def test_swd_rejects_unequal_sets():
    with pytest.raises(ValueError, match="same N"):
        sliced_wasserstein(torch.zeros(10, 2), torch.zeros(11, 2))


def test_swd_floor_is_small_against_a_shifted_model():
    def gaussian(n, g):
        return torch.randn(n, 2, generator=g)

    reference = gaussian(4000, torch.Generator().manual_seed(0))
    floor_mean, floor_std = swd_floor(gaussian, reference, draws=3)
    shifted = gaussian(4000, torch.Generator().manual_seed(99)) + torch.tensor([0.2, 0.0])
    assert 0 < floor_mean < 0.05 and floor_std > 0
    assert sliced_wasserstein(shifted, reference) > 3 * floor_mean


@pytest.mark.skipif(importlib.util.find_spec("cmkit.data.toys") is None, reason="2-D toys not available")
def test_toy_swd_floor_and_a_bad_model():
    from cmkit.data.toys import sample_toy
    from cmkit.metrics import toy_reference, toy_swd, toy_swd_floor

    floor_mean, _ = toy_swd_floor("8gaussians", n=2000, draws=2)
    assert torch.equal(toy_reference("8gaussians", 2000), toy_reference("8gaussians", 2000))
    blurred = sample_toy("8gaussians", 2000, torch.Generator().manual_seed(5)) * 1.3
    assert toy_swd(blurred, "8gaussians") > 3 * floor_mean
