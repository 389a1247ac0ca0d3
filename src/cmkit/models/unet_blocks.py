"""The three kinds of UNet stage: an encoder level, the middle block and a decoder level.

Each diffusers block type is one of these with fixed options (see ``DOWN_BLOCKS`` / ``UP_BLOCKS`` in
:mod:`cmkit.models.unet_config`): with or without self-attention after every residual block, and a downsampler /
upsampler that is a strided convolution (``"conv"``) or a resampling residual block (``"resnet"``, ADM's
``resblock_updown``). Submodule names (``resnets``, ``attentions``, ``downsamplers``, ``upsamplers``) equal
diffusers' so state dicts are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layers import Attention, Downsample2D, Resample, ResnetBlock2D, TimeScaleShift, Upsample2D

ResampleKind = Literal["conv", "resnet"]


@dataclass(frozen=True)
class StageSettings:
    """Options shared by every residual block and attention layer of a UNet."""

    temb_channels: int
    groups: int
    eps: float
    act_fn: str
    time_scale_shift: TimeScaleShift
    dropout: float
    output_scale_factor: float = 1.0

    def resnet(self, in_channels: int, out_channels: int, resample: Optional[Resample] = None) -> ResnetBlock2D:
        """A residual block with these settings."""
        return ResnetBlock2D(
            in_channels,
            out_channels,
            self.temb_channels,
            groups=self.groups,
            eps=self.eps,
            act_fn=self.act_fn,
            time_scale_shift=self.time_scale_shift,
            dropout=self.dropout,
            output_scale_factor=self.output_scale_factor,
            resample=resample,
        )

    def attention(self, channels: int, head_dim: int, norm_groups: Optional[int]) -> Attention:
        """A self-attention layer with ``channels // head_dim`` heads."""
        return Attention(
            channels,
            heads=channels // head_dim,
            head_dim=head_dim,
            norm_groups=norm_groups,
            eps=self.eps,
            rescale_output_factor=self.output_scale_factor,
        )


class Stage(nn.Module):
    """Base of the stages: runs a layer directly or, with ``gradient_checkpointing``, recomputed in backward."""

    #: set by ``UNet2DModel.enable_gradient_checkpointing``: trade compute for activation memory in training.
    gradient_checkpointing: bool = False

    def run(self, layer: nn.Module, *args: Tensor) -> Tensor:
        """``layer(*args)``; under checkpointing its activations are recomputed in backward instead of stored."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)


class DownStage(Stage):
    """``num_layers`` residual blocks (each optionally followed by attention), then an optional downsampler."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        *,
        attention_head_dim: Optional[int],
        downsample: Optional[ResampleKind],
        downsample_padding: int = 1,
        settings: StageSettings,
    ) -> None:
        super().__init__()
        self.has_attention = attention_head_dim is not None
        if attention_head_dim is not None:  # registered first, as diffusers does, so state dicts list keys alike
            self.attentions = nn.ModuleList(
                settings.attention(out_channels, attention_head_dim, settings.groups) for _ in range(num_layers)
            )
        self.resnets = nn.ModuleList(
            settings.resnet(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)
        )
        self.downsample = downsample
        if downsample == "conv":
            self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=downsample_padding)])
        elif downsample == "resnet":
            self.downsamplers = nn.ModuleList([settings.resnet(out_channels, out_channels, "down")])

    def forward(self, h: Tensor, temb_act: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Return the stage output and the skip activations it hands to the decoder."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = self.run(resnet, h, temb_act)
            if self.has_attention:
                h = self.run(self.attentions[i], h)
            skips.append(h)
        if self.downsample == "conv":
            h = self.downsamplers[0](h)
            skips.append(h)
        elif self.downsample == "resnet":
            h = self.run(self.downsamplers[0], h, temb_act)
            skips.append(h)
        return h, skips


class MidStage(Stage):
    """Residual block, then ``attention + residual block`` (diffusers' ``UNetMidBlock2D`` with one layer)."""

    def __init__(
        self,
        channels: int,
        *,
        attention_head_dim: Optional[int],
        attn_groups: Optional[int],
        settings: StageSettings,
    ) -> None:
        super().__init__()
        self.has_attention = attention_head_dim is not None
        if attention_head_dim is not None:
            self.attentions = nn.ModuleList([settings.attention(channels, attention_head_dim, attn_groups)])
        self.resnets = nn.ModuleList([settings.resnet(channels, channels), settings.resnet(channels, channels)])

    def forward(self, h: Tensor, temb_act: Tensor) -> Tensor:
        """Apply the middle block."""
        h = self.run(self.resnets[0], h, temb_act)
        if self.has_attention:
            h = self.run(self.attentions[0], h)
        return self.run(self.resnets[1], h, temb_act)


class UpStage(Stage):
    """``num_layers`` residual blocks on ``cat(h, skip)`` (each optionally followed by attention), then an upsampler."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        num_layers: int,
        *,
        attention_head_dim: Optional[int],
        upsample: Optional[ResampleKind],
        settings: StageSettings,
    ) -> None:
        super().__init__()
        self.has_attention = attention_head_dim is not None
        if attention_head_dim is not None:
            self.attentions = nn.ModuleList(
                settings.attention(out_channels, attention_head_dim, settings.groups) for _ in range(num_layers)
            )
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            resnets.append(settings.resnet(resnet_in + skip_channels, out_channels))
        self.resnets = nn.ModuleList(resnets)
        self.upsample = upsample
        if upsample == "conv":
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels)])
        elif upsample == "resnet":
            self.upsamplers = nn.ModuleList([settings.resnet(out_channels, out_channels, "up")])

    def forward(self, h: Tensor, skips: list[Tensor], temb_act: Tensor) -> Tensor:
        """Consume ``skips`` from the last one backwards, one per residual block."""
        n = len(skips)
        for i, resnet in enumerate(self.resnets):
            h = self.run(resnet, torch.cat([h, skips[n - 1 - i]], dim=1), temb_act)
            if self.has_attention:
                h = self.run(self.attentions[i], h)
        if self.upsample == "conv":
            h = self.upsamplers[0](h)
        elif self.upsample == "resnet":
            h = self.run(self.upsamplers[0], h, temb_act)
        return h
