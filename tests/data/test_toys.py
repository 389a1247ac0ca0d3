import math

import pytest
import torch

from cmkit.data.toys import TOY_NAMES, sample_toy


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_shape_dtype_and_determinism(name):
    a = sample_toy(name, 1000, _gen(3))
    b = sample_toy(name, 1000, _gen(3))
    assert a.shape == (1000, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_toy(name, 1000, _gen(4)))


def test_eight_gaussians_definition():
    x = sample_toy("8gaussians", 20_000, _gen()).double()
    angles = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    centres = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    d = torch.cdist(x, centres)
    nearest = d.argmin(dim=1)
    offsets = x - centres[nearest]
    assert offsets.std(dim=0).tolist() == pytest.approx([0.1, 0.1], abs=0.004)
    counts = torch.bincount(nearest, minlength=8).double() / len(x)
    assert counts.tolist() == pytest.approx([1 / 8] * 8, abs=0.01)
    # the draw order is documented: k first, then the noise
    g = _gen(7)
    k = torch.randint(0, 8, (5,), generator=g).double()
    noise = torch.randn(5, 2, generator=g, dtype=torch.float64)
    expected = torch.stack([torch.cos(2 * math.pi * k / 8), torch.sin(2 * math.pi * k / 8)], 1) + 0.1 * noise
    assert torch.allclose(sample_toy("8gaussians", 5, _gen(7)), expected.float())


def test_two_moons_definition():
    g = _gen(11)
    theta = math.pi * torch.rand(4, generator=g, dtype=torch.float64)
    upper = torch.rand(4, generator=g, dtype=torch.float64) < 0.5
    noise = torch.randn(4, 2, generator=g, dtype=torch.float64)
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta)) - 0.5
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta)) - 0.25
    expected = torch.stack([x, y], 1) + 0.05 * noise
    assert torch.allclose(sample_toy("moons", 4, _gen(11)), expected.float())
    big = sample_toy("moons", 50_000, _gen()).double()
    assert big.mean(dim=0).tolist() == pytest.approx([0.0, 0.0], abs=0.01)  # centred by construction


def test_swiss_roll_radius_range():
    x = sample_toy("swissroll", 20_000, _gen()).double()
    r = x.norm(dim=1)
    assert 0.3 < float(r.min()) < 0.5 and 1.4 < float(r.max()) < 1.6
    assert x.mean(dim=0).abs().max() < 0.5


def test_bad_input():
    with pytest.raises(ValueError, match="unknown toy"):
        sample_toy("circles", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive integer"):
        sample_toy("moons", 0)
