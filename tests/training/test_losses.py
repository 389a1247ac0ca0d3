import math

import pytest
import torch

from cmkit.training.losses import (
    l1_distance,
    l2_distance,
    make_distance,
    pseudo_huber_c,
    pseudo_huber_distance,
)


def test_pseudo_huber_c():
    assert pseudo_huber_c(3 * 32 * 32) == pytest.approx(0.00054 * math.sqrt(3072))
    assert pseudo_huber_c(1 * 64 * 64) == pytest.approx(0.03456, abs=1e-9)  # 0.00054 * 64
    assert pseudo_huber_c(2) == pytest.approx(0.00054 * math.sqrt(2))


def test_pseudo_huber_uses_the_per_sample_norm_not_per_entry():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    y = torch.zeros(2, 2)
    d = pseudo_huber_distance(x, y, c=0.0)
    assert d.tolist() == pytest.approx([5.0, 0.0])
    # diffusers' example applies it per entry: mean(sqrt(diff^2 + c^2) - c) = 3.5 here. We must not.
    per_entry = (torch.sqrt((x - y) ** 2 + 0.0) - 0.0).mean(dim=1)
    assert per_entry[0].item() == pytest.approx(3.5)
    assert d[0].item() != pytest.approx(per_entry[0].item())
    c = 0.5
    assert pseudo_huber_distance(x, y, c=c)[0].item() == pytest.approx(math.sqrt(25 + c * c) - c)


def test_pseudo_huber_default_c_from_sample_size():
    x = torch.zeros(1, 3, 4, 4)
    y = torch.full((1, 3, 4, 4), 0.01)
    c = 0.00054 * math.sqrt(48)
    expected = math.sqrt(48 * 0.01**2 + c * c) - c
    assert pseudo_huber_distance(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_l2_l1_per_sample():
    x = torch.tensor([[1.0, -3.0], [2.0, 2.0]])
    y = torch.zeros(2, 2)
    assert l2_distance(x, y).tolist() == pytest.approx([5.0, 4.0])
    assert l1_distance(x, y).tolist() == pytest.approx([2.0, 2.0])
    with pytest.raises(ValueError, match="equal shapes"):
        l2_distance(x, torch.zeros(2, 3))


def test_make_distance_errors():
    with pytest.raises(ValueError, match="lpips_weights"):
        make_distance("lpips")
    with pytest.raises(ValueError, match="loss must be one of"):
        make_distance("l3")  # type: ignore[arg-type]


def test_lpips_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="LPIPS weights not found"):
        make_distance("lpips", lpips_weights=tmp_path / "nope.pt")
    (tmp_path / "vgg16.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"LPIPS weights not found at .*heads\.pth"):
        make_distance("lpips", lpips_weights=[tmp_path / "vgg16.pth", tmp_path / "heads.pth"])
