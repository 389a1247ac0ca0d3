"""Algorithm 4 (zero-shot editing), its transforms and presets, checked with analytic consistency functions."""

import math

import pytest
import torch

from cmkit.editing import (
    ColorTransform,
    IdentityTransform,
    PatchTransform,
    check_sigmas,
    colorization,
    denoising,
    downsample,
    edit,
    editing_sigmas,
    inpainting,
    interpolation,
    orthonormal_basis,
    slerp,
    stroke_editing,
    super_resolution,
)
from cmkit.editing.transforms import LUMA_WEIGHTS
from cmkit.karras import SIGMA_MIN
from cmkit.sampling import sample_consistency

SIGMAS = torch.tensor([80.0, 5.0, 0.7])


def gaussian_cm(scale: float = 0.5):
    """The exact consistency function of data ~ N(0, scale^2 I): x sqrt(scale^2 + eps^2) / sqrt(scale^2 + sigma^2)."""

    def f(x, sigma, class_labels=None):
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return x * math.sqrt(scale**2 + SIGMA_MIN**2) / (scale**2 + s**2).sqrt()

    return f


def wiggly(x, sigma, class_labels=None):
    """An arbitrary nonlinear 'model' (its output is unrelated to the known part)."""
    return torch.sin(3 * x) + 0.1 * sigma.reshape(-1, 1, 1, 1)


def transform_matrix(transform, shape):
    """The dense matrix of a linear image transform, column j = A e_j."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape[1:])
    return transform.forward(basis).reshape(n, n).T


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9, 16])
def test_orthonormal_basis(n):
    v = torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64) + 0.1
    q = orthonormal_basis(v)
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(q[0], v / v.norm(), atol=1e-12)
    with pytest.raises(ValueError, match="non-zero"):
        orthonormal_basis(torch.zeros(n))


@pytest.mark.parametrize(
    "transform, shape",
    [(IdentityTransform(), (1, 2, 4, 4)), (ColorTransform(), (1, 3, 2, 3)), (PatchTransform(2), (1, 2, 4, 6)),
     (PatchTransform(3), (1, 1, 6, 3))],
)
def test_transforms_are_orthogonal(transform, shape):
    a = transform_matrix(transform, shape)
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    assert torch.allclose(a @ a.T, eye, atol=1e-12)  # A A^T = I
    x = torch.randn(3, *shape[1:], dtype=torch.float64)
    assert torch.allclose(transform.inverse(transform.forward(x)), x, atol=1e-12)  # A^-1 = A^T


def test_first_axes_are_luma_and_patch_mean():
    color = ColorTransform()
    w = torch.tensor(LUMA_WEIGHTS, dtype=torch.float64)
    assert torch.allclose(color.matrix[0], w / w.norm())
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    luma = torch.einsum("c,bchw->bhw", w, x) / w.norm()
    assert torch.allclose(color.forward(x)[:, 0], luma)
    patch = PatchTransform(2)
    z = patch.forward(x)
    assert torch.allclose(z[:, :, ::2, ::2], 2 * downsample(x, 2))  # s * patch mean, at each patch's top-left
    assert patch.first_axis_mask(x.shape).sum() == 3 * 16 - 3 * 4


def test_transform_shape_errors():
    with pytest.raises(ValueError, match="3-channel"):
        ColorTransform().forward(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="divisible by 3"):
        PatchTransform(3).forward(torch.zeros(1, 1, 4, 6))
    with pytest.raises(ValueError, match="positive integer"):
        PatchTransform(0)


@pytest.mark.parametrize("transform", [IdentityTransform(), ColorTransform(), PatchTransform(2)])
def test_empty_mask_returns_input(transform):
    y = torch.rand(2, 3, 4, 4) * 2 - 1
    out = edit(wiggly, y, torch.zeros(1, 1, 1, 1), transform, SIGMAS, torch.Generator().manual_seed(0))
    if isinstance(transform, IdentityTransform):
        assert torch.equal(out, y)
    else:
        assert torch.allclose(out, y, atol=1e-6)


@pytest.mark.parametrize("transform", [IdentityTransform(), ColorTransform(), PatchTransform(2)])
def test_known_part_kept_in_transform_domain(transform):
    g = torch.Generator().manual_seed(1)
    y = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    mask = (torch.rand(1, 3, 4, 4, generator=g) > 0.5).float()
    out = edit(wiggly, y, mask, transform, SIGMAS, g)
    keep = mask == 0
    ay, aout = transform.forward(y), transform.forward(out)
    assert torch.allclose(aout[keep.expand_as(ay)], ay[keep.expand_as(ay)], atol=1e-6)
    # ... while the generated part really comes from the model (it differs from y).
    assert (aout - ay)[(~keep).expand_as(ay)].abs().max() > 0.1


def test_generated_region_is_the_model_output():
    c = torch.full((1, 1, 4, 4), 0.25)
    point_mass = lambda x, s, cl=None: c.expand_as(x)  # noqa: E731  the ideal f for data = {c}
    y = -torch.ones(3, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, :] = 1
    out = inpainting(y, mask).run(point_mass, SIGMAS, torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.where(mask.bool(), c, y))


def test_full_mask_is_multistep_sampling():
    f = gaussian_cm()
    x0 = torch.randn(2, 1, 4, 4) * 80
    y = torch.zeros_like(x0)
    out = edit(f, y, torch.ones(1, 1, 1, 1), IdentityTransform(), SIGMAS, torch.Generator().manual_seed(3), start=x0)
    ref = sample_consistency(f, x0, SIGMAS, torch.Generator().manual_seed(3), clip_denoised=True)
    assert torch.equal(out, ref)


def test_edit_is_the_one_consistency_sampling_loop_with_a_projection(monkeypatch):
    import cmkit.editing.algorithm as algorithm

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("project"))
        return sample_consistency(*args, **kwargs)

    monkeypatch.setattr(algorithm, "sample_consistency", spy)
    y, f = torch.zeros(1, 1, 4, 4), gaussian_cm()
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    edit(f, y, mask, IdentityTransform(), SIGMAS, torch.Generator().manual_seed(0))
    edit(f, y, torch.ones(1, 1, 1, 1), IdentityTransform(), SIGMAS, torch.Generator().manual_seed(0))
    assert len(calls) == 2 and callable(calls[0]) and calls[1] is None  # Omega = all ones projects nothing


def test_noise_levels_of_each_step():
    seen = []

    def spy(x, sigma, cl=None):
        seen.append((x.clone(), float(sigma[0])))
        return torch.zeros_like(x)

    y = torch.full((1, 1, 64, 64), 0.5)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 32:] = 1
    g = torch.Generator().manual_seed(4)
    edit(spy, y, mask, IdentityTransform(), torch.tensor([10.0, 2.0]), g)
    z = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    first, sigma0 = seen[0]
    assert sigma0 == 10.0
    assert torch.allclose(first, torch.where(mask.bool(), 0.0, y) + 10.0 * z)  # y' + sigma_max z
    second, sigma1 = seen[1]
    assert sigma1 == 2.0
    # after f = 0 and projection, the known half is y again; then sqrt(tau^2 - eps^2) z is added
    assert second[..., :32].mean().item() == pytest.approx(0.5, abs=0.1)
    assert second.std().item() == pytest.approx((4 - SIGMA_MIN**2) ** 0.5, rel=0.05)


def test_gaussian_cm_inpainting_statistics():
    # The exact CM of N(0, 0.5^2): generated pixels are a shrunk version of the noise, known pixels stay.
    y = torch.full((256, 1, 8, 8), 0.9)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    out = edit(gaussian_cm(), y, mask, IdentityTransform(), torch.tensor([80.0]), torch.Generator().manual_seed(5),
               clip_denoised=False)
    gen = out[..., :4]
    assert gen.std().item() == pytest.approx(0.5 * 80 / (0.25 + 6400) ** 0.5, rel=0.05)
    assert torch.equal(out[..., 4:], y[..., 4:])


def test_bad_inputs_raise():
    y = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="binary"):
        edit(wiggly, y, torch.full((1, 1, 4, 4), 0.3), IdentityTransform(), SIGMAS)
    with pytest.raises(ValueError, match="does not broadcast"):
        edit(wiggly, y, torch.zeros(1, 1, 5, 4), IdentityTransform(), SIGMAS)
    with pytest.raises(ValueError, match="outside the model's range"):
        edit(wiggly, y, torch.zeros(1, 1, 4, 4), IdentityTransform(), torch.tensor([100.0, 1.0]))
    with pytest.raises(ValueError, match="outside the model's range"):
        check_sigmas(torch.tensor([1.0, 0.001]))
    with pytest.raises(ValueError, match=r"\[0.01, 20\]"):
        check_sigmas(torch.tensor([40.0]), sigma_min=0.01, sigma_max=20.0)
    with pytest.raises(ValueError, match="strictly descending"):
        check_sigmas(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="start has shape"):
        edit(wiggly, y, torch.ones(1, 1, 4, 4), IdentityTransform(), SIGMAS, start=torch.zeros(2, 1, 4, 4))


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
