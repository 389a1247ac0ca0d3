"""UNet building blocks: sinusoidal time embedding, residual blocks, spatial self-attention and resampling.

The layers follow the DDPM / ADM UNet (Ho et al. 2020; Dhariwal & Nichol 2021, "Diffusion Models Beat GANs")
used by every published consistency-model checkpoint (Song et al. 2023, appendix C). Parameter names equal
diffusers' (``norm1``, ``conv1``, ``time_emb_proj``, ``to_q``, ``to_out.0``, ...) so state dicts load both ways.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .forward_ad import attention, group_norm
from .prepack import conv2d

ActivationName = Literal["silu", "swish", "mish", "gelu", "relu"]
TimeScaleShift = Literal["default", "scale_shift"]
Resample = Literal["up", "down"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` (case-insensitive: silu/swish, mish, gelu, relu)."""
    cls = _ACTIVATIONS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"act_fn={name!r} is not supported; use one of {sorted(_ACTIVATIONS)}")
    return cls()


def timestep_embedding(
    timesteps: Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0, max_period: float = 10000.0
) -> Tensor:
    """Sinusoidal embedding ``[sin(t w_k), cos(t w_k)]`` of a 1-d batch of (fractional) timesteps, in (at least) float32.

    ``w_k = exp(-ln(max_period) k / (dim/2 - freq_shift))`` for ``k < dim/2`` (Vaswani et al. 2017, sec. 3.5;
    DDPM appendix B). ``flip_sin_to_cos`` puts the cosines first (the OpenAI checkpoints' order).
    An odd ``dim`` is padded with one zero column.
    """
    half = dim // 2
    dtype = torch.promote_types(timesteps.dtype, torch.float32)  # float64 timesteps stay float64
    exponent = (-math.log(max_period)) * torch.arange(half, dtype=dtype, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps.to(dtype)[:, None] * freqs[None, :]
    parts = (torch.cos(args), torch.sin(args)) if flip_sin_to_cos else (torch.sin(args), torch.cos(args))
    emb = torch.cat(parts, dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that also runs under forward-mode AD (:func:`cmkit.models.forward_ad.group_norm`)."""

    def forward(self, x: Tensor) -> Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

class TimestepEmbedding(nn.Module):
    """Two-layer MLP ``linear_2(act(linear_1(e)))`` that lifts a timestep embedding to ``time_embed_dim``."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu") -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, emb: Tensor) -> Tensor:
        """Project ``emb`` of shape ``[B, in_channels]`` to ``[B, time_embed_dim]``."""
        return self.linear_2(self.act(self.linear_1(emb)))


class ResnetBlock2D(nn.Module):
    """Pre-norm residual block with time conditioning (ADM "ResBlock"), optionally resampling by 2.

    ``h = conv1(act(norm1(x)))``; the time embedding is added (``"default"``) or applied as FiLM after the second
    norm, ``norm2(h) (1 + scale) + shift`` (``"scale_shift"``, ADM sec. 3); then ``conv2(dropout(act(.)))`` and the
    (1x1-projected when channels change) skip. ``resample`` nearest-upsamples or 2x2-average-pools both paths.
    The block takes the *already activated* time embedding: the UNet applies ``act`` once per forward.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        groups: int = 32,
        eps: float = 1e-5,
        act_fn: str = "silu",
        time_scale_shift: TimeScaleShift = "default",
        dropout: float = 0.0,
        output_scale_factor: float = 1.0,
        resample: Optional[Resample] = None,
    ) -> None:
        super().__init__()
        if time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(
                f"resnet_time_scale_shift={time_scale_shift!r} is not supported; use 'default' or 'scale_shift'"
            )
        self.time_scale_shift = time_scale_shift
        self.output_scale_factor = float(output_scale_factor)
        self.resample = resample
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        proj_channels = 2 * out_channels if time_scale_shift == "scale_shift" else out_channels
        self.time_emb_proj = nn.Linear(temb_channels, proj_channels)
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = activation(act_fn)
        # a 1x1 projection on the skip path when the channel count changes
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: Tensor, temb_act: Tensor) -> Tensor:
        """Apply the block to ``x`` ``[B, C, H, W]`` given the activated time embedding ``[B, temb_channels]``."""
        h = _act(self.nonlinearity, self.norm1(x))
        if self.resample is not None:
            x = self._resample(x)
            h = self._resample(h)
        h = conv2d(self.conv1, h)
        t = self.time_emb_proj(temb_act)[:, :, None, None]
        if self.time_scale_shift == "scale_shift":
            scale, shift = t.chunk(2, dim=1)
            # norm2(h) (1 + scale) + shift in one pass over h (addcmul) instead of two
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h + t)
        h = conv2d(self.conv2, self.dropout(_act(self.nonlinearity, h)))
        if self.conv_shortcut is not None:
            x = conv2d(self.conv_shortcut, x)
        out = h.add_(x) if _may_overwrite(h) else x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


def _may_overwrite(h: Tensor) -> bool:
    """Whether the intermediate ``h`` may be updated in place: autograd is not tracking it."""
    return not (torch.is_grad_enabled() and h.requires_grad)


def _act(act: nn.Module, h: Tensor) -> Tensor:
    """``act(h)``, overwriting the intermediate ``h`` (no new buffer) when autograd allows and ``act`` is SiLU."""
    if type(act) is nn.SiLU and _may_overwrite(h):
        return F.silu(h, inplace=True)
    return act(h)


class Attention(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions of a feature map, with a residual connection.

    ``out = (x + to_out(softmax(q k^T / sqrt(d)) v)) / rescale_output_factor`` with ``q, k, v`` linear maps of
    the (optionally group-normalised) features (Vaswani et al. 2017; the ADM attention block). ``heads`` heads of
    width ``head_dim``; ``heads * head_dim`` may be smaller than ``channels``. Uses
    :func:`cmkit.models.forward_ad.attention` (the fused kernel, written out when a JVP tangent is traced).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        *,
        norm_groups: Optional[int] = None,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(
                f"attention_head_dim={head_dim} is larger than the {channels} channels of an attention layer; "
                f"use attention_head_dim <= {channels}"
            )
        self.heads = heads
        self.head_dim = head_dim
        self.rescale_output_factor = float(rescale_output_factor)
        inner = heads * head_dim
        self.group_norm = GroupNorm(norm_groups, channels, eps=eps) if norm_groups is not None else None
        self.to_q = nn.Linear(channels, inner)
        self.to_k = nn.Linear(channels, inner)
        self.to_v = nn.Linear(channels, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels)])

    def forward(self, x: Tensor) -> Tensor:
        """Self-attend ``x`` of shape ``[B, C, H, W]``; returns the same shape."""
        b, c, height, width = x.shape
        h = self.group_norm(x) if self.group_norm is not None else x
        # [B, L, C] tokens: a free view of a channels-last feature map (a copy otherwise)
        h = h.permute(0, 2, 3, 1).reshape(b, height * width, c)
        q = self.to_q(h).view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        k = self.to_k(h).view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        v = self.to_v(h).view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        a = attention(q, k, v)
        a = a.transpose(1, 2).reshape(b, height * width, self.heads * self.head_dim)
        # back to [B, C, H, W] as a channels-last view of the [B, L, C] projection
        out = self.to_out[0](a).view(b, height, width, c).permute(0, 3, 1, 2)
        out = out.add_(x) if _may_overwrite(out) else out + x
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution; with ``padding=0`` the input is first padded by one on the right and bottom."""

    def __init__(self, channels: int, padding: int = 1) -> None:
        super().__init__()
        self.padding = int(padding)
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=self.padding)

    def forward(self, x: Tensor) -> Tensor:
        """Halve the spatial size of ``x``."""
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return conv2d(self.conv, x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Double the spatial size of ``x``."""
        return conv2d(self.conv, F.interpolate(x, scale_factor=2.0, mode="nearest"))
