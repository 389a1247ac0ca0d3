"""Magnitude-preserving layers of EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", sec. 2 and appendix B), with the reference code's parameter names.

Every operation keeps unit-variance inputs at unit variance in expectation, so activations and weights neither
grow nor shrink during training:

* :func:`normalize`: ``x / (eps + ||x|| / sqrt(N))``, unit mean square over the given dims (eq. 66's ``norm``);
* :func:`mp_silu`: ``SiLU(x) / 0.596`` (eq. 81), 0.596 being SiLU's output RMS for standard normal input;
* :func:`mp_sum`: ``((1 - t) a + t b) / sqrt((1 - t)^2 + t^2)`` (eq. 88);
* :func:`mp_cat`: concatenation weighted so the result has unit variance and the two parts contribute
  ``1 - t`` and ``t`` (eq. 103);
* :class:`MPFourier`: ``sqrt(2) cos(2 pi (f c + phi))`` with fixed random ``f``, ``phi`` (eq. 75);
* :class:`MPConv`: a convolution or linear layer whose weight is normalised per output channel on every use
  and scaled by ``gain / sqrt(fan_in)`` (eq. 47), and, in training mode, *forced* back to unit norm in place
  before each use (eq. 66), so the learning rate acts on the weight's direction only.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .edm_layers import building_on_meta


def normalize(x: Tensor, dim: Optional[Sequence[int]] = None, eps: float = 1e-4) -> Tensor:
    """``x`` scaled to unit mean square over ``dim`` (default: all but the first), with ``eps`` on the norm."""
    dims = list(range(1, x.ndim)) if dim is None else list(dim)
    # at least float32 (bf16/fp16 inputs), float64 stays float64 (vector_norm refuses a narrowing dtype)
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32))
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: Tensor) -> Tensor:
    """Magnitude-preserving SiLU, ``silu(x) / 0.596`` (EDM2 eq. 81)."""
    return F.silu(x) / 0.596


def mp_sum(a: Tensor, b: Tensor, t: float = 0.5) -> Tensor:
    """Magnitude-preserving weighted sum, ``lerp(a, b, t) / sqrt((1 - t)^2 + t^2)`` (EDM2 eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: Tensor, b: Tensor, dim: int = 1, t: float = 0.5) -> Tensor:
    """Magnitude-preserving concatenation along ``dim`` with balance ``t`` between ``a`` (0) and ``b`` (1) (EDM2
    eq. 103): ``[w_a a, w_b b]`` with ``w = C (1 - t) / sqrt(N_a)``, ``C t / sqrt(N_b)``, ``C = sqrt((N_a + N_b) /
    ((1 - t)^2 + t^2))``."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (c / math.sqrt(na) * (1 - t)), b * (c / math.sqrt(nb) * t)], dim=dim)


class MPFourier(nn.Module):
    """Magnitude-preserving Fourier features ``sqrt(2) cos(f c + phi)`` of a ``[B]`` batch ``c`` (EDM2 eq. 75),
    with ``freqs = 2 pi N(0, bandwidth^2)`` and ``phases = 2 pi U(0, 1)`` drawn once (the two buffers)."""

    def __init__(self, num_channels: int, bandwidth: float = 1) -> None:
        super().__init__()
        if building_on_meta():
            freqs, phases = torch.empty(num_channels), torch.empty(num_channels)
        else:
            freqs = 2 * math.pi * torch.randn(num_channels) * bandwidth
            phases = 2 * math.pi * torch.rand(num_channels)
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, x: Tensor) -> Tensor:
        """``[B]`` -> ``[B, num_channels]``, computed in (at least) float32 and returned in ``x``'s dtype."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        y = torch.outer(x.to(dtype), self.freqs.to(dtype)) + self.phases.to(dtype)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (``kernel`` ``[k, k]``) or linear layer (``kernel`` ``[]``), no bias.

    ``y = conv(x, normalize(W) gain / sqrt(fan_in))`` (EDM2 eq. 47); in training mode ``W`` is first overwritten by
    ``normalize(W)`` (forced weight normalisation, eq. 66), without gradient.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: Tensor, gain: Union[float, Tensor] = 1) -> Tensor:
        """Apply the layer to ``[B, C, H, W]`` (a convolution) or ``[B, C]`` (a linear layer)."""
        w = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))
        w = normalize(w)
        w = (w * (gain / math.sqrt(w[0].numel()))).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)
