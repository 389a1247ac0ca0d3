"""The size of a :class:`~cmkit.models.unet.UNet2DModel` from its config alone: parameters and residual blocks.

The UNet checks these against :mod:`cmkit.limits` before building anything, so a hostile or mistaken
``config.json`` (``layers_per_block`` = 10^7, channels of 10^6) is refused at once instead of allocating without
bound or building modules for hours. Layer sizes: a k x k convolution has ``c_in c_out k^2 + c_out`` parameters,
a linear layer ``c_in c_out + c_out``, a GroupNorm ``2 c``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

#: (has self-attention, resampler kind; None = the config's ``downsample_type`` / ``upsample_type``)
BlockKind = tuple[bool, Optional[str]]


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def _linear(c_in: int, c_out: int) -> int:
    return c_in * c_out + c_out


def _resnet(c_in: int, c_out: int, temb: int, scale_shift: bool) -> int:
    """norm1, conv1, time projection, norm2, conv2 and the 1x1 shortcut of a ResnetBlock2D."""
    shortcut = _conv(c_in, c_out, 1) if c_in != c_out else 0
    proj = _linear(temb, 2 * c_out if scale_shift else c_out)
    return 2 * c_in + _conv(c_in, c_out, 3) + proj + 2 * c_out + _conv(c_out, c_out, 3) + shortcut


def _attention(channels: int, head_dim: int, norm: bool) -> int:
    inner = (channels // head_dim) * head_dim
    return (2 * channels if norm else 0) + 3 * _linear(channels, inner) + _linear(inner, channels)


def unet_size(cfg: Mapping[str, Any], down: Sequence[BlockKind], up: Sequence[BlockKind]) -> tuple[int, int]:
    """``(parameters, residual blocks)`` of the UNet2DModel a validated config builds, computed without building it.

    ``down`` / ``up`` give each level's ``(has attention, resampler kind or None for the config's)``. The count
    mirrors the constructor stage by stage and equals ``sum(p.numel())`` (the tests check it).
    """
    channels = [int(c) for c in cfg["block_out_channels"]]
    n, layers, c0 = len(channels), int(cfg["layers_per_block"]), channels[0]
    temb = int(cfg["time_embedding_dim"] or 4 * c0)
    ss = cfg["resnet_time_scale_shift"] == "scale_shift"
    head = cfg["attention_head_dim"]
    total = _conv(int(cfg["in_channels"]), c0, 3) + _linear(c0, temb) + _linear(temb, temb)
    total += 2 * c0 + _conv(c0, int(cfg["out_channels"]), 3)  # conv_norm_out, conv_out
    if cfg["time_embedding_type"] == "learned":
        total += int(cfg["num_train_timesteps"]) * c0
    if cfg["class_embed_type"] is None and cfg["num_class_embeds"] is not None:
        total += int(cfg["num_class_embeds"]) * temb
    elif cfg["class_embed_type"] == "timestep":
        total += _linear(c0, temb) + _linear(temb, temb)
    if cfg.get("target_conditioning"):  # TCD's target-time embedding, a second TimestepEmbedding
        total += _linear(c0, temb) + _linear(temb, temb)
    blocks = 0
    out_ch = c0
    for i, (has_attn, resample) in enumerate(down):
        in_ch, out_ch = out_ch, channels[i]
        total += sum(_resnet(in_ch if j == 0 else out_ch, out_ch, temb, ss) for j in range(layers))
        total += layers * _attention(out_ch, head or out_ch, True) if has_attn else 0
        blocks += layers
        if i < n - 1:
            kind = resample or cfg["downsample_type"]
            total += _conv(out_ch, out_ch, 3) if kind == "conv" else _resnet(out_ch, out_ch, temb, ss)
            blocks += 1
    if cfg["mid_block_type"] is not None:
        c = channels[-1]
        attn_groups = cfg["attn_norm_num_groups"]
        if attn_groups is None and cfg["resnet_time_scale_shift"] == "default":
            attn_groups = cfg["norm_num_groups"]
        total += 2 * _resnet(c, c, temb, ss)
        total += _attention(c, head or c, attn_groups is not None) if cfg["add_attention"] else 0
        blocks += 2
    rev = channels[::-1]
    out_ch = rev[0]
    for i, (has_attn, resample) in enumerate(up):
        prev_ch, out_ch, in_ch = out_ch, rev[i], rev[min(i + 1, n - 1)]
        for j in range(layers + 1):
            skip = in_ch if j == layers else out_ch
            total += _resnet((prev_ch if j == 0 else out_ch) + skip, out_ch, temb, ss)
        total += (layers + 1) * _attention(out_ch, head or out_ch, True) if has_attn else 0
        blocks += layers + 1
        if i < n - 1:
            kind = resample or cfg["upsample_type"]
            total += _conv(out_ch, out_ch, 3) if kind == "conv" else _resnet(out_ch, out_ch, temb, ss)
            blocks += 1
    return total, blocks
