"""Forward-mode AD (``torch.func.jvp``) through cmkit's networks, as continuous-time consistency training needs.

The JVP of ``F(x, c)`` along ``(dx, 0)`` must equal the central finite difference
``(F(x + h dx, c) - F(x - h dx, c)) / 2h`` in float64: with ``h = 1e-6`` the truncation error is O(h^2) ~ 1e-12
and the rounding error about 1e-16 / h ~ 1e-10, so a tolerance of 1e-6 (relative to the largest entry) can only
fail on a wrong derivative. Along the time input ``(0, dc)`` the UNets compute their noise embeddings in float32
by design, so there the step is ``h = 1e-3`` and the tolerance 1e-2 (float32 rounding / h ~ 1e-4, plus O(h^2)).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmkit.models import forward_ad as attention_module
from cmkit.models.dhariwal_unet import DhariwalUNet
from cmkit.models.edm2_unet import EDM2UNet
from cmkit.models.mlp import MLPNet
from cmkit.models.song_unet import SongUNet
from cmkit.models.unet import UNet2DModel

#: (finite-difference step, tolerance relative to the largest entry) along the sample and along the time input
FD_SAMPLE = (1e-6, 1e-6)
FD_TIME = (1e-3, 1e-2)


def _mlp():
    return MLPNet(sample_shape=(2,), width=16, num_blocks=2, embedding_dim=8)


def _unet():
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8,
    )  # fmt: skip


def _song():
    return SongUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1, 2],
                    num_blocks=1, attn_resolutions=[4], dropout=0.0)  # fmt: skip


def _ncsnpp():  # Fourier time embedding, residual encoder, FIR resampling
    return SongUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1, 2],
                    num_blocks=1, attn_resolutions=[4], dropout=0.0, embedding_type="fourier", channel_mult_noise=2,
                    encoder_type="residual", decoder_type="standard", resample_filter=[1, 3, 3, 1])  # fmt: skip


def _dhariwal():  # EDM's ADM attends with C // 64 heads: 64 channels for one head
    return DhariwalUNet(img_resolution=4, in_channels=1, out_channels=1, model_channels=64, channel_mult=[1],
                        channel_mult_emb=1, num_blocks=1, attn_resolutions=[4], dropout=0.0)  # fmt: skip


def _edm2():
    return EDM2UNet(img_resolution=8, img_channels=1, label_dim=0, model_channels=8, channel_mult=[1, 1],
                    num_blocks=1, attn_resolutions=[4], channels_per_head=8, dropout=0.0)  # fmt: skip


NETWORKS = {"mlp": (_mlp, (2,)), "unet2d": (_unet, (1, 8, 8)), "song_unet": (_song, (1, 8, 8)),
            "song_unet_ncsnpp": (_ncsnpp, (1, 8, 8)), "dhariwal_unet": (_dhariwal, (1, 4, 4)),
            "edm2_unet": (_edm2, (1, 8, 8))}  # fmt: skip


def _randomised(net):
    """``net`` with every weight perturbed: output layers start at zero, which would make every derivative zero."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def _call(net, x, c):
    out = net(x, c, class_labels=None, return_dict=False)
    return out[0] if isinstance(out, (tuple, list)) else out


def _inputs(shape, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, *shape, generator=g, dtype=dtype)
    c = torch.rand(3, generator=g, dtype=dtype) + 0.2
    dx = torch.randn(3, *shape, generator=g, dtype=dtype)
    dc = torch.randn(3, generator=g, dtype=dtype)
    return x, c, dx, dc


@pytest.mark.parametrize("direction", ["sample", "time"])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_jvp_matches_central_finite_differences_in_float64(name, direction):
    build, shape = NETWORKS[name]
    net = _randomised(build()).double().eval()
    x, c, dx, dc = _inputs(shape, torch.float64)
    if direction == "sample":
        dc, (step, tolerance) = torch.zeros_like(dc), FD_SAMPLE
    else:
        dx, (step, tolerance) = torch.zeros_like(dx), FD_TIME
    with torch.no_grad():
        _, tangent = torch.func.jvp(lambda a, b: _call(net, a, b), (x, c), (dx, dc))
        fd = (_call(net, x + step * dx, c + step * dc) - _call(net, x - step * dx, c - step * dc)) / (2 * step)
    assert fd.abs().max() > 1e-4  # a real derivative, not an all-zero one
    torch.testing.assert_close(tangent, fd, rtol=0, atol=tolerance * float(fd.abs().max()))


@pytest.mark.parametrize("name", ["unet2d", "song_unet", "dhariwal_unet"])
def test_fused_attention_is_used_without_a_tangent_and_written_out_with_one(name, monkeypatch):
    build, shape = NETWORKS[name]
    calls = []
    fused = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", spy)
    net = _randomised(build()).eval()
    x, c, dx, dc = _inputs(shape, torch.float32)
    with torch.no_grad():
        plain = _call(net, x, c)
        assert len(calls) > 0  # ordinary forwards take the fused kernel
        calls.clear()
        primal, _ = torch.func.jvp(lambda a, b: _call(net, a, b), (x, c), (dx, dc))
    assert calls == []  # the traced forward wrote attention out
    torch.testing.assert_close(primal, plain, rtol=1e-5, atol=1e-5)  # and the two paths agree


def test_has_tangent_sees_jvp_and_forward_ad_duals():
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(3)
    assert not attention_module.has_tangent(x)
    seen = []
    torch.func.jvp(lambda a: seen.append(attention_module.has_tangent(a)) or a, (x,), (x,))
    with fwAD.dual_level():
        seen.append(attention_module.has_tangent(fwAD.make_dual(x, x)))
    assert seen == [True, True]


@pytest.mark.parametrize("name", ["unet2d", "song_unet", "edm2_unet"])
def test_jvp_under_bf16_autocast_is_finite_and_close(name):
    build, shape = NETWORKS[name]
    net = _randomised(build()).eval()
    x, c, dx, dc = _inputs(shape, torch.float32)
    with torch.no_grad():
        _, exact = torch.func.jvp(lambda a, b: _call(net, a, b), (x, c), (dx, dc))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, tangent = torch.func.jvp(lambda a, b: _call(net, a, b), (x, c), (dx, dc))
    assert torch.isfinite(tangent).all()
    # bf16 keeps 8 bits of mantissa: the tangent is right to a few percent of its scale
    assert float((tangent.float() - exact).abs().max()) < 0.1 * float(exact.abs().max())
