"""Editing tasks as (A, Omega, start): sigmas, colorization, super-resolution, denoising, strokes, interpolation."""

import pytest
import torch
from cmkit.editing import (
    colorization,
    denoising,
    downsample,
    editing_sigmas,
    interpolation,
    slerp,
    stroke_editing,
    super_resolution,
)
from cmkit.editing.transforms import LUMA_WEIGHTS
from cmkit.karras import SIGMA_MIN


SIGMAS = torch.tensor([80.0, 5.0, 0.7])


def wiggly(x, sigma, class_labels=None):
    """An arbitrary nonlinear 'model' (its output is unrelated to the known part)."""
    return torch.sin(3 * x) + 0.1 * sigma.reshape(-1, 1, 1, 1)


def test_editing_sigmas():
    s = editing_sigmas(4, 80.0)
    assert s[0].item() == pytest.approx(80.0) and len(s) == 4
    assert bool((s[1:] < s[:-1]).all()) and s[-1] > SIGMA_MIN
    assert editing_sigmas(1, 3.0).tolist() == pytest.approx([3.0])
    with pytest.raises(ValueError, match="outside"):
        editing_sigmas(2, 81.0)
    with pytest.raises(ValueError, match="positive integer"):
        editing_sigmas(0, 1.0)


def test_colorization_keeps_luma():
    g = torch.Generator().manual_seed(6)
    gray = torch.rand(2, 1, 4, 4, generator=g) * 1.6 - 0.8
    task = colorization(gray)
    out = task.run(wiggly, SIGMAS, g)
    w = torch.tensor(LUMA_WEIGHTS)
    luma = torch.einsum("c,bchw->bhw", w, out)[:, None]
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(luma, gray * w.sum(), atol=1e-5)
    assert out.std(dim=1).mean() > 0.05  # not grey: chroma came from the model
    with pytest.raises(ValueError, match="grayscale"):
        colorization(torch.zeros(1, 2, 4, 4))


def test_super_resolution_keeps_patch_means():
    g = torch.Generator().manual_seed(7)
    low = torch.rand(2, 1, 2, 2, generator=g) * 2 - 1
    out = super_resolution(low, 4).run(wiggly, SIGMAS, g)
    assert out.shape == (2, 1, 8, 8)
    assert torch.allclose(downsample(out, 4), low, atol=1e-6)
    assert out.std() > 0.1 and not torch.allclose(out, low.repeat_interleave(4, 2).repeat_interleave(4, 3))


def test_denoising_and_stroke_editing_start_where_asked():
    seen = []

    def spy(x, sigma, cl=None):
        seen.append((x.clone(), float(sigma[0])))
        return torch.zeros_like(x)

    noisy = torch.randn(1, 1, 4, 4)
    task = denoising(noisy, 1.5)
    task.run(spy, task.sigmas(2), torch.Generator().manual_seed(0))
    assert seen[0][1] == pytest.approx(1.5) and torch.equal(seen[0][0], noisy) and len(seen) == 2
    with pytest.raises(ValueError, match="must begin there"):
        task.run(spy, torch.tensor([3.0, 1.0]))

    seen.clear()
    strokes = torch.rand(1, 3, 4, 4)
    task = stroke_editing(strokes, 0.8, torch.Generator().manual_seed(9))
    task.run(spy, task.sigmas(1))
    z = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(seen[0][0], strokes + 0.8 * z) and seen[0][1] == pytest.approx(0.8)


def test_slerp_and_interpolation():
    g = torch.Generator().manual_seed(10)
    a, b = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a, atol=1e-6) and torch.allclose(path[-1], b, atol=1e-6)
    # slerp between equal-norm vectors stays on the sphere (lerp would shrink the midpoint)
    a2, b2 = a / a.norm(), b / b.norm()
    norms = slerp(a2, b2, torch.linspace(0, 1, 5)).flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(5), atol=1e-5)

    task = interpolation(a, b, 5, 80.0)
    assert task.start.shape == (5, 1, 8, 8)
    assert torch.allclose(task.start[0], 80 * a[0], atol=1e-4) and torch.allclose(task.start[-1], 80 * b[0], atol=1e-4)
    c = torch.full((1, 1, 8, 8), 0.3)
    out = task.run(lambda x, s, cl=None: c.expand_as(x), task.sigmas(2), g)
    assert torch.allclose(out, c.expand(5, 1, 8, 8))

    img = interpolation(-torch.ones(1, 1, 8, 8), torch.ones(1, 1, 8, 8), 3, 0.5, torch.Generator().manual_seed(1),
                        kind="images")
    z = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(img.start[0], -1 + 0.5 * z[0], atol=1e-5)
    with pytest.raises(ValueError, match="num_images"):
        interpolation(a, b, 1, 80.0)
    with pytest.raises(ValueError, match="one shape"):
        interpolation(a, torch.zeros(1, 1, 4, 4), 3, 80.0)
