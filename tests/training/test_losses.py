import math
import sys
import types

import pytest
import torch
from torch import nn

from cmkit.training.losses import (
    LPIPSDistance,
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


def test_lpips_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    torch.save({}, path)
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` raise ImportError
    with pytest.raises(ImportError, match=r"cmkit\[lpips\]"):
        LPIPSDistance(path)


class _FakeLPIPS(nn.Module):
    """Stands in for lpips.LPIPS: records the input size and returns the mean squared difference."""

    seen: list = []

    def __init__(self, pretrained=True, net="alex", pnet_rand=False, verbose=True):
        super().__init__()
        assert pretrained is False and pnet_rand is True  # nothing may be downloaded
        self.lin = nn.Linear(1, 1)

    def forward(self, x, y):
        _FakeLPIPS.seen.append(tuple(x.shape))
        return (x - y).pow(2).mean(dim=(1, 2, 3), keepdim=True)


def test_lpips_loads_local_weights_and_upsamples_to_224(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=_FakeLPIPS))
    path = tmp_path / "lpips_vgg.pt"
    torch.save(_FakeLPIPS(pretrained=False, pnet_rand=True).state_dict(), path)
    dist = make_distance("lpips", lpips_weights=path)
    x = torch.zeros(2, 1, 8, 8)
    y = torch.ones(2, 1, 8, 8)
    d = dist(x, y)
    assert d.shape == (2,)
    assert _FakeLPIPS.seen[-1] == (2, 3, 224, 224)
    torch.save({"other": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an LPIPS"):
        LPIPSDistance(tmp_path / "bad.pt")
