"""Named UNet2DModel configurations: small ones for tests and toy data, and the two published architectures.

All presets use the ADM layout of the consistency-model checkpoints (Song et al. 2023, appendix C): residual
down/up-sampling blocks, self-attention at all but the highest resolution, and FiLM ("scale_shift") time
conditioning, except where the published LSUN-256 config says otherwise.

===========  ======  ==========  ====================================================
name         params  sample      use
===========  ======  ==========  ====================================================
tiny         0.83 M  8 x 8       tests, 8x8 digits
small        8.0 M   32 x 32     small image data sets
base         45 M    64 x 64     medium experiments
imagenet64   296 M   64 x 64     the published cd/ct_imagenet64 UNet (1000 classes)
lsun256      526 M   256 x 256   the published cd/ct_bedroom256 and cat256 UNet
===========  ======  ==========  ====================================================
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from .unet import UNet2DModel

PresetName = Literal["tiny", "small", "base", "imagenet64", "lsun256"]
UNET_PRESETS: tuple[str, ...] = get_args(PresetName)


def _adm(channels: tuple[int, ...], layers: int, head_dim: int, groups: int, sample_size: int) -> dict[str, Any]:
    """An ADM-style config: a plain first level, attention levels after it, residual resampling, FiLM."""
    n = len(channels)
    return {
        "sample_size": sample_size,
        "block_out_channels": list(channels),
        "layers_per_block": layers,
        "attention_head_dim": head_dim,
        "norm_num_groups": groups,
        "attn_norm_num_groups": groups,
        "down_block_types": ["ResnetDownsampleBlock2D"] + ["AttnDownBlock2D"] * (n - 1),
        "up_block_types": ["AttnUpBlock2D"] * (n - 1) + ["ResnetUpsampleBlock2D"],
        "resnet_time_scale_shift": "scale_shift",
        "downsample_type": "resnet",
        "upsample_type": "resnet",
    }


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _adm((32, 64), layers=1, head_dim=16, groups=8, sample_size=8),
    "small": _adm((64, 128, 128), layers=2, head_dim=32, groups=32, sample_size=32),
    "base": _adm((128, 256, 256, 256), layers=2, head_dim=64, groups=32, sample_size=64),
    # openai/diffusers-{cd,ct}_imagenet64_*: the published unet/config.json values.
    "imagenet64": {
        "sample_size": 64,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 3,
        "num_class_embeds": 1000,
        "block_out_channels": [192, 384, 576, 768],
        "attention_head_dim": 64,
        "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
        "resnet_time_scale_shift": "scale_shift",
        "attn_norm_num_groups": 32,
        "downsample_type": "resnet",
        "upsample_type": "resnet",
    },
    # openai/diffusers-{cd,ct}_{bedroom,cat}256_*: unconditional, "default" time conditioning.
    "lsun256": {
        "sample_size": 256,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 2,
        "num_class_embeds": None,
        "block_out_channels": [256, 256, 512, 512, 1024, 1024],
        "attention_head_dim": 64,
        "down_block_types": ["ResnetDownsampleBlock2D"] * 3 + ["AttnDownBlock2D"] * 3,
        "up_block_types": ["AttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"] * 3,
        "resnet_time_scale_shift": "default",
        "downsample_type": "resnet",
        "upsample_type": "resnet",
    },
}


def unet_preset_config(name: PresetName, **overrides: Any) -> dict[str, Any]:
    """The UNet2DModel constructor arguments of preset ``name``, with ``overrides`` applied."""
    if name not in _PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose one of {list(UNET_PRESETS)}")
    allowed = set(UNet2DModel.config_keys())
    unknown = sorted(k for k in overrides if k not in allowed)
    if unknown:
        raise ValueError(f"unknown UNet2DModel argument(s) {unknown} in overrides; valid ones: {sorted(allowed)}")
    config = {k: (list(v) if isinstance(v, list) else v) for k, v in _PRESETS[name].items()}
    config.update(overrides)
    return config


def unet_preset(name: PresetName, **overrides: Any) -> UNet2DModel:
    """A freshly initialised UNet2DModel of preset ``name`` (e.g. ``unet_preset("tiny", in_channels=1)``)."""
    return UNet2DModel(**unet_preset_config(name, **overrides))
