"""Pre-packed oneDNN convolution kernels: same numbers as nn.Conv2d, rebuilt when the weights change."""

import pytest
import torch

from cmkit.models import prepack
from cmkit.models.prepack import conv2d, drop_packed_weights

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs a oneDNN CPU build")

CL = torch.channels_last


def _conv(dtype, **kw):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, kernel_size=3, **kw).to(dtype)
    conv.weight.data = conv.weight.data.contiguous(memory_format=CL)
    return conv


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kw", [dict(padding=1), dict(padding=1, stride=2), dict(padding=0, bias=False)])
def test_packed_convolution_equals_module(dtype, kw):
    conv = _conv(dtype, **kw)
    x = torch.randn(2, 8, 8, 8, dtype=dtype).contiguous(memory_format=CL)
    with torch.no_grad():
        out = conv2d(conv, x)
        assert (conv in prepack._CACHE) == prepack.packs(dtype)  # packed where this CPU can, else the plain op
        expected = conv(x)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6 if dtype == torch.float32 else 1e-2)
    assert out.is_contiguous(memory_format=CL)
    drop_packed_weights(conv)
    assert conv not in prepack._CACHE


def test_cache_follows_weight_updates_and_shapes():
    conv = _conv(torch.float32, padding=1)
    x = torch.randn(1, 8, 8, 8).contiguous(memory_format=CL)
    with torch.no_grad():
        before = conv2d(conv, x)
        conv.weight.mul_(2)  # an in-place update, as an optimizer or EMA makes: the version counter moves
        after = conv2d(conv, x)
        torch.testing.assert_close(after - conv.bias[:, None, None], 2 * (before - conv.bias[:, None, None]))
        wide = torch.randn(3, 8, 4, 4).contiguous(memory_format=CL)
        torch.testing.assert_close(conv2d(conv, wide), conv(wide))


def test_dtype_round_trip_repacks():
    # .to() replaces the parameter's data; a new tensor must never hit the old tensor's cache entry
    conv = _conv(torch.float32, padding=1)
    x = torch.randn(1, 8, 8, 8).contiguous(memory_format=CL)
    with torch.no_grad():
        conv2d(conv, x)
        for _ in range(3):
            conv.to(torch.bfloat16).to(torch.float32)
            torch.testing.assert_close(conv2d(conv, x), conv(x), rtol=0, atol=0)


def test_autograd_and_standard_layout_use_the_module():
    conv = _conv(torch.float32, padding=1)
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        conv2d(conv, x)  # contiguous (not channels-last) input
    assert conv not in prepack._CACHE
    out = conv2d(conv, x.contiguous(memory_format=CL))  # grad enabled: the ordinary differentiable path
    out.sum().backward()
    assert conv.weight.grad is not None and conv not in prepack._CACHE
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast chooses the dtype per op
        assert conv2d(conv, x.contiguous(memory_format=CL)).dtype == torch.bfloat16
    assert conv not in prepack._CACHE


def test_models_with_packed_kernels_deep_copy():
    import copy

    conv = _conv(torch.float32, padding=1)
    with torch.no_grad():
        conv2d(conv, torch.randn(1, 8, 4, 4).contiguous(memory_format=CL))
    twin = copy.deepcopy(conv)
    assert torch.equal(twin.weight, conv.weight)
