"""The layers of EDM's networks (Karras et al. 2022, appendix F.2), with the reference code's parameter names.

EDM re-implements the DDPM++ / NCSN++ UNets of Song et al. (2021, "Score-Based Generative Modeling through
Stochastic Differential Equations", appendix H) and the ADM UNet of Dhariwal & Nichol (2021) from one set of
layers. cmkit's :class:`~cmkit.models.song_unet.SongUNet` and :class:`~cmkit.models.dhariwal_unet.DhariwalUNet` are
built from these, so an EDM snapshot's tensors (``weight``, ``bias``, ``resample_filter``, ``freqs``) load under
their recorded names:

* :class:`Linear` and :class:`Conv2d`: plain layers whose weights are drawn by :func:`weight_init` (EDM's
  initialisers: Xavier / Kaiming, uniform or normal, times a gain). :class:`Conv2d` may resample by 2 with a
  separable FIR filter ``f f^T / (sum f)^2`` (``[1, 1]``: box / nearest; ``[1, 3, 3, 1]``: the NCSN++ filter of
  StyleGAN2, Karras et al. 2020), before the convolution, or fused with it (``fused_resample``).
* :class:`GroupNorm`: ``min(num_groups, C // min_channels_per_group)`` groups (narrow layers get fewer).
* :class:`UNetBlock`: a pre-norm residual block conditioned on an embedding (added, or FiLM ``adaptive_scale``),
  optionally resampling, optionally followed by multi-head self-attention; both sums are scaled by
  ``skip_scale`` (``sqrt(1/2)`` in DDPM++ / NCSN++).
* :class:`FourierEmbedding`: NCSN++'s random Fourier features of the noise label (Tancik et al. 2020).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .forward_ad import attention, group_norm

InitMode = Literal["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]


def building_on_meta() -> bool:
    """Whether modules are being built on the meta device (to count or to load weights): values drawn there are
    discarded, and drawing them runs torch's Python meta decompositions (seconds on first use)."""
    return torch.get_default_device().type == "meta"


def weight_init(shape: Sequence[int], mode: InitMode, fan_in: int, fan_out: int, gain: float = 1.0) -> Tensor:
    """A tensor drawn as EDM draws weights, times ``gain``: Xavier (Glorot & Bengio 2010) or Kaiming (He et al.
    2015), variance ``2 / (fan_in + fan_out)`` resp. ``1 / fan_in``, from a uniform or a normal distribution.

    On the meta device only the shape is made."""
    family, _, distribution = mode.partition("_")
    variance = {"xavier": 2 / (fan_in + fan_out), "kaiming": 1 / fan_in}.get(family)
    if variance is None or distribution not in ("uniform", "normal"):
        raise ValueError(
            f"unknown init mode {mode!r}; use xavier_uniform, xavier_normal, kaiming_uniform or kaiming_normal"
        )
    std = gain * math.sqrt(variance)
    if building_on_meta():
        return torch.empty(*shape)
    if std == 0:
        return torch.zeros(*shape)
    if distribution == "uniform":
        return torch.empty(*shape).uniform_(-math.sqrt(3) * std, math.sqrt(3) * std)  # variance bound^2 / 3
    return torch.empty(*shape).normal_(0.0, std)


@dataclass(frozen=True)
class Init:
    """How a layer's parameters are drawn: ``weight_init(mode) * weight_gain`` and ``weight_init(mode) * bias_gain``."""

    mode: InitMode = "kaiming_normal"
    weight_gain: float = 1.0
    bias_gain: float = 0.0

    def draw(self, shape: Sequence[int], fan_in: int, fan_out: int, gain: float) -> nn.Parameter:
        """A parameter of ``shape`` drawn with this mode, times ``gain``."""
        return nn.Parameter(weight_init(shape, self.mode, fan_in, fan_out, gain))


class Linear(nn.Module):
    """``y = x W^T + b``, its parameters in the module's dtype cast to the input's."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: Init = Init()) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = init.draw([out_features, in_features], in_features, out_features, init.weight_gain)
        self.bias = init.draw([out_features], in_features, out_features, init.bias_gain) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer to ``[..., in_features]``."""
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


def check_resample_filter(resample_filter: Sequence[float]) -> tuple[float, ...]:
    """The 1-d taps of a resampling filter: an even number of them (the layer pads symmetrically) with a nonzero sum."""
    ok = isinstance(resample_filter, Sequence) and not isinstance(resample_filter, (str, bytes))
    numbers_only = ok and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in resample_filter)
    taps = tuple(float(t) for t in resample_filter) if numbers_only else ()
    if not taps or len(taps) % 2 or sum(taps) == 0:
        raise ValueError(f"resample_filter must be an even number of taps with a nonzero sum (e.g. [1, 1] or "
                         f"[1, 3, 3, 1]), got {resample_filter!r}")  # fmt: skip
    return taps


def resample_kernel(taps: Sequence[float], device: Optional[torch.device] = None) -> Tensor:
    """The separable 2-d FIR kernel ``f f^T / (sum f)^2`` of 1-d taps ``f``, shaped ``[1, 1, n, n]``."""
    total = float(sum(taps)) ** 2
    rows = [[float(a) * float(b) / total for b in taps] for a in taps]
    return torch.tensor([[rows]], dtype=torch.float32, device=device)


def resample_by_two(x: Tensor, kernel: Tensor, mode: Literal["up", "down"], padding: int) -> Tensor:
    """Filter every channel of ``x`` with ``kernel`` ``[1, 1, n, n]`` at stride 2: a strided convolution (down) or a
    stride-2 transposed convolution with 4x the kernel (up; ``[1, 1]`` taps give nearest-neighbour upsampling)."""
    channels = x.shape[1]
    k = kernel.to(x.dtype)
    if mode == "up":
        return F.conv_transpose2d(x, (k * 4).tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding)
    return F.conv2d(x, k.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding)


class Conv2d(nn.Module):
    """A ``kernel x kernel`` convolution (``kernel = 0``: none, only resampling), optionally up/downsampling by 2.

    Resampling filters every channel with :func:`resample_kernel` at stride 2 (down) or as a stride-2 transposed
    convolution with 4x the kernel (up; ``[1, 1]`` is then nearest-neighbour upsampling), before the convolution;
    with ``fused_resample`` the downsampling filter runs after the convolution and the upsampling one before it,
    each with the padding the pair needs. The kernel is kept as the ``resample_filter`` buffer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init: Init = Init(),
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a Conv2d resamples up or down, not both")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = init.draw(shape, fan_in, fan_out, init.weight_gain) if kernel else None
        self.bias = init.draw([out_channels], fan_in, fan_out, init.bias_gain) if kernel and bias else None
        self.register_buffer("resample_filter", resample_kernel(resample_filter) if up or down else None)

    def forward(self, x: Tensor) -> Tensor:
        """Resample and convolve ``[B, in_channels, H, W]``."""
        w = self.weight.to(x.dtype) if self.weight is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (self.resample_filter.shape[-1] - 1) // 2 if self.resample_filter is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = resample_by_two(x, self.resample_filter, "up", max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = resample_by_two(x, self.resample_filter, "down", 0)
        else:
            if self.up:
                x = resample_by_two(x, self.resample_filter, "up", f_pad)
            if self.down:
                x = resample_by_two(x, self.resample_filter, "down", f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation (Wu & He 2018) over ``min(num_groups, num_channels // min_channels_per_group)`` groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = max(1, min(num_groups, num_channels // min_channels_per_group))
        if num_channels % self.num_groups:
            raise ValueError(
                f"a GroupNorm over {num_channels} channels cannot use {self.num_groups} groups (min({num_groups}, "
                f"{num_channels} // {min_channels_per_group})); choose model_channels so every width divides evenly"
            )
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``[B, C, H, W]``."""
        return group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


@dataclass(frozen=True)
class BlockOptions:
    """What every :class:`UNetBlock` of one network shares."""

    emb_channels: int
    num_heads: Optional[int] = None  # None: out_channels // channels_per_head heads
    channels_per_head: int = 64
    dropout: float = 0.0
    skip_scale: float = 1.0
    eps: float = 1e-5
    resample_filter: tuple[float, ...] = (1, 1)
    resample_proj: bool = False  # a 1x1 convolution on a resampling skip path even when the width stays
    adaptive_scale: bool = True  # FiLM ``norm(h) (1 + scale) + shift`` instead of ``norm(h + emb)``
    init: Init = Init()
    init_zero: Init = Init(weight_gain=0.0)
    init_attn: Optional[Init] = None  # None: ``init``


class UNetBlock(nn.Module):
    """EDM's residual block: ``h = conv1(dropout(act(cond(norm1(conv0(act(norm0(x))))))))``, then
    ``x = (h + skip(x)) * skip_scale``; with attention, ``x = (proj(attn(norm2(x))) + x) * skip_scale``.

    ``cond`` adds the projected embedding before ``norm1`` or, with ``adaptive_scale``, applies it as
    ``norm1(h) (1 + scale) + shift`` (ADM's FiLM). ``up`` / ``down`` resample inside ``conv0`` and on the skip
    path. Attention has ``num_heads`` heads over the ``H W`` positions, fed by one 1x1 ``qkv`` convolution whose
    output channels are ordered (head, channel, q/k/v).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        options: BlockOptions,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
    ) -> None:
        super().__init__()
        o = options
        self.in_channels = in_channels
        self.out_channels = out_channels
        heads = o.num_heads if o.num_heads is not None else out_channels // o.channels_per_head
        self.num_heads = heads if attention else 0
        self.skip_scale = float(o.skip_scale)
        self.adaptive_scale = o.adaptive_scale
        resample = dict(up=up, down=down, resample_filter=o.resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=o.eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, init=o.init, **resample)
        self.affine = Linear(o.emb_channels, out_channels * (2 if o.adaptive_scale else 1), init=o.init)
        self.norm1 = GroupNorm(out_channels, eps=o.eps)
        self.drop = nn.Dropout(o.dropout)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init=o.init_zero)
        self.skip: Optional[Conv2d] = None
        if out_channels != in_channels or up or down:
            kernel = 1 if o.resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, init=o.init, **resample)
        if self.num_heads:
            if out_channels % self.num_heads:
                raise ValueError(f"{self.num_heads} attention heads do not divide {out_channels} channels")
            self.norm2 = GroupNorm(out_channels, eps=o.eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, init=o.init_attn or o.init)
            self.proj = Conv2d(out_channels, out_channels, 1, init=o.init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Apply the block to ``x`` ``[B, in_channels, H, W]`` given the embedding ``[B, emb_channels]``."""
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(self.drop(x))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attend(self.norm2(x))) + x) * self.skip_scale
        return x

    def _attend(self, h: Tensor) -> Tensor:
        """Multi-head softmax attention ``softmax(q^T k / sqrt(d)) v`` over the positions (Vaswani et al. 2017)."""
        b, c, height, width = h.shape
        d = c // self.num_heads
        qkv = self.qkv(h).reshape(b, self.num_heads, d, 3, height * width)
        q, k, v = (qkv[:, :, :, i].transpose(-1, -2) for i in range(3))  # [B, heads, HW, d] each
        a = attention(q, k, v)
        return a.transpose(-1, -2).reshape(b, c, height, width)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[sin(2 pi f c), cos(2 pi f c)]`` of a noise label ``c``, ``f ~ N(0, scale^2)``
    fixed at construction (NCSN++; Tancik et al. 2020). The frequencies are the ``freqs`` buffer."""

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        shape = [num_channels // 2]
        self.register_buffer("freqs", torch.empty(shape) if building_on_meta() else torch.randn(shape) * scale)

    def forward(self, x: Tensor) -> Tensor:
        """Embed a ``[B]`` batch of noise labels as ``[B, num_channels]``."""
        args = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([args.sin(), args.cos()], dim=1)
