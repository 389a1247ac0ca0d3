"""Orthogonal linear transforms ``A`` for zero-shot editing (CM Algorithm 4).

Each transform maps an image batch ``[B, C, H, W]`` to coefficients of the same shape, so a mask ``Omega`` in
the transform's domain is just an image-shaped 0/1 tensor. Every ``A`` here is orthogonal, so its inverse is
its transpose: ``A^-1 = A^T``.

* :class:`IdentityTransform`: ``A = I`` (inpainting, denoising, SDEdit, interpolation).
* :class:`ColorTransform`: a per-pixel 3x3 orthonormal colour basis whose first axis is luma
  ``(0.2989, 0.5870, 0.1140)`` normalised (colorization).
* :class:`PatchTransform`: a per-patch ``s*s x s*s`` orthonormal basis whose first axis is the patch mean
  (super-resolution by an integer factor ``s``). Coefficient ``k`` of a patch is stored at row ``k // s``,
  column ``k % s`` of that patch, so the mean coefficient sits at each patch's top-left pixel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from .._validate import require_int

#: ITU-R BT.601 luma weights (R, G, B), the first axis of the colour basis.
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)


def orthonormal_basis(first_axis: Tensor) -> Tensor:
    """An orthogonal ``n x n`` matrix whose first row is ``first_axis / |first_axis|`` (rows are the axes).

    Built as the Householder reflection ``H = I - 2 u u^T / (u^T u)`` with ``u = e_1 - v``, which swaps ``e_1``
    and the unit vector ``v``; ``H`` is symmetric, so its first row is ``v``.
    """
    v = torch.as_tensor(first_axis, dtype=torch.float64).flatten()
    norm = v.norm()
    if v.numel() < 1 or norm == 0 or not torch.isfinite(norm):
        raise ValueError(f"the first axis must be a finite non-zero vector, got {v.tolist()}")
    v = v / norm
    n = v.numel()
    e1 = torch.zeros(n, dtype=torch.float64)
    e1[0] = 1.0
    u = e1 - v
    uu = u @ u
    if uu < 1e-24:  # v is already e_1
        return torch.eye(n, dtype=torch.float64)
    return torch.eye(n, dtype=torch.float64) - 2.0 * torch.outer(u, u) / uu


class OrthogonalTransform(ABC):
    """An orthogonal linear map ``A`` on ``[B, C, H, W]`` images; coefficients have the input's shape."""

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``A x``."""

    @abstractmethod
    def inverse(self, z: Tensor) -> Tensor:
        """``A^-1 z = A^T z``."""

    def check(self, shape: torch.Size | tuple[int, ...]) -> None:
        """Raise ``ValueError`` if images of ``shape`` cannot be transformed (default: any 4-d shape)."""
        if len(shape) != 4:
            raise ValueError(f"editing transforms take [B, C, H, W] images, got shape {tuple(shape)}")

    def first_axis_mask(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """``Omega`` of shape ``[1, C, H, W]`` that keeps the first axis of ``A`` and generates the rest."""
        raise ValueError(f"{type(self).__name__} has no distinguished first axis")


class IdentityTransform(OrthogonalTransform):
    """``A = I``: the mask is given directly in pixel space."""

    def forward(self, x: Tensor) -> Tensor:
        """``x`` itself."""
        return x

    def inverse(self, z: Tensor) -> Tensor:
        """``z`` itself."""
        return z


class MatrixTransform(OrthogonalTransform):
    """``A`` given by an orthogonal ``matrix`` (rows are the axes) that :meth:`_apply` applies to each group of
    values (a pixel's channels, a patch's pixels); ``A^-1`` applies ``matrix^T``."""

    matrix: Tensor

    @abstractmethod
    def _apply(self, x: Tensor, matrix: Tensor) -> Tensor:
        """``matrix`` applied to each group of values of ``x``."""

    def forward(self, x: Tensor) -> Tensor:
        """The coefficients ``A x``."""
        return self._apply(x, self.matrix)

    def inverse(self, z: Tensor) -> Tensor:
        """The images ``A^T z`` of coefficients ``z``."""
        return self._apply(z, self.matrix.T)


class ColorTransform(MatrixTransform):
    """Per-pixel orthonormal colour basis; coefficients ``(luma, chroma_1, chroma_2)``: axis 0 is normalised luma,
    axes 1-2 span the chroma plane."""

    def __init__(self, luma_weights: tuple[float, float, float] = LUMA_WEIGHTS) -> None:
        self.matrix = orthonormal_basis(torch.tensor(luma_weights, dtype=torch.float64))

    def check(self, shape: torch.Size | tuple[int, ...]) -> None:
        """Colour transforms need 3-channel (RGB) images."""
        super().check(shape)
        if shape[1] != 3:
            raise ValueError(
                f"the colour transform needs 3-channel RGB images, got {shape[1]} channel(s); colorization needs a "
                "model trained on RGB images"
            )

    def _apply(self, x: Tensor, matrix: Tensor) -> Tensor:
        self.check(x.shape)
        return torch.einsum("ij,bjhw->bihw", matrix.to(device=x.device, dtype=x.dtype), x)

    def first_axis_mask(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """Keep luma, generate both chroma axes."""
        self.check(shape)
        mask = torch.ones(1, 3, shape[2], shape[3])
        mask[:, 0] = 0.0
        return mask


class PatchTransform(MatrixTransform):
    """Per-channel, per ``s x s`` patch orthonormal basis whose first axis is the (scaled) patch mean; coefficient
    ``k`` of a patch sits at its row ``k // s``, column ``k % s`` (the first, ``s`` times the mean, top-left)."""

    def __init__(self, factor: int) -> None:
        self.factor = require_int("the patch factor", factor, 1, " (a positive integer)")
        self.matrix = orthonormal_basis(torch.ones(factor * factor, dtype=torch.float64))

    def check(self, shape: torch.Size | tuple[int, ...]) -> None:
        """Height and width must be multiples of the factor."""
        super().check(shape)
        s = self.factor
        if shape[2] % s or shape[3] % s:
            raise ValueError(
                f"a {s}x{s} patch transform needs height and width divisible by {s}, got {shape[2]}x{shape[3]}"
            )

    def _apply(self, x: Tensor, matrix: Tensor) -> Tensor:
        self.check(x.shape)
        b, c, h, w = x.shape
        s = self.factor
        patches = x.reshape(b, c, h // s, s, w // s, s).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // s, w // s, s * s)
        out = patches @ matrix.to(device=x.device, dtype=x.dtype).T
        return out.reshape(b, c, h // s, w // s, s, s).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)

    def first_axis_mask(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """Keep every patch mean, generate the other ``s*s - 1`` coefficients."""
        self.check(shape)
        mask = torch.ones(1, shape[1], shape[2], shape[3])
        mask[:, :, :: self.factor, :: self.factor] = 0.0
        return mask
