"""Algorithm 4 (zero-shot editing), its transforms and presets, checked with analytic consistency functions."""

import math

import pytest
import torch

from cmkit.editing import (
    ColorTransform,
    IdentityTransform,
    PatchTransform,
    check_sigmas,
    edit,
    inpainting,
)
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


