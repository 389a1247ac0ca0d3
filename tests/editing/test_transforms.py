"""Orthogonal transforms A of zero-shot editing: orthonormal bases, luma and patch-mean axes, shape errors."""

import math
import pytest
import torch
from cmkit.editing import (
    ColorTransform,
    IdentityTransform,
    PatchTransform,
    downsample,
    orthonormal_basis,
)
from cmkit.editing.transforms import LUMA_WEIGHTS


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
