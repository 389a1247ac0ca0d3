"""EDM's layers: initialisation statistics, the resampling filters, the GroupNorm group rule."""

import pytest
import torch
import torch.nn.functional as F

from cmkit.models.edm_layers import Conv2d, GroupNorm, resample_kernel, weight_init


@pytest.mark.parametrize("mode, variance", [
    ("xavier_uniform", 2 / 700), ("xavier_normal", 2 / 700), ("kaiming_uniform", 1 / 300), ("kaiming_normal", 1 / 300),
])  # fmt: skip
def test_weight_init_has_the_papers_variance(mode, variance):
    torch.manual_seed(0)
    w = weight_init([400, 300], mode, fan_in=300, fan_out=400, gain=2.0)
    assert abs(float(w.var()) / (4 * variance) - 1) < 0.02 and abs(float(w.mean())) < 1e-3
    if mode.endswith("uniform"):
        assert float(w.abs().max()) <= (3 * 4 * variance) ** 0.5
    assert torch.equal(weight_init([3, 2], mode, 2, 3, gain=0.0), torch.zeros(3, 2))
    with torch.device("meta"):
        assert weight_init([3, 2], mode, 2, 3).is_meta
    with pytest.raises(ValueError, match="unknown init mode"):
        weight_init([1], "he_uniform", 1, 1)  # type: ignore[arg-type]


def test_resampling_filters():
    assert torch.equal(resample_kernel([1, 1]), torch.full((1, 1, 2, 2), 0.25))
    assert torch.equal(resample_kernel([1, 3, 3, 1])[0, 0, 1], torch.tensor([3.0, 9.0, 9.0, 3.0]) / 64)
    x = torch.randn(2, 3, 4, 4)
    up = Conv2d(3, 3, 0, up=True)  # [1, 1]: nearest-neighbour upsampling
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2.0, mode="nearest"))
    down = Conv2d(3, 3, 0, down=True)  # [1, 1]: 2x2 average pooling
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))
    assert Conv2d(3, 5, 3).resample_filter is None and "resample_filter" in down.state_dict()


def test_group_norm_gives_narrow_layers_fewer_groups():
    assert GroupNorm(256).num_groups == 32 and GroupNorm(64).num_groups == 16 and GroupNorm(3).num_groups == 1
    with pytest.raises(ValueError, match="cannot use 32 groups"):
        GroupNorm(136)
