"""Named network configurations: ``cmkit train --model NAME`` and ``build_preset(NAME, **overrides)``.

A preset names a network class and its constructor arguments. The image shape and the class count are the data's
(:func:`build_preset_for_data`); every other argument can be overridden (``--model-option key=value``).

The UNet2DModel presets use the ADM layout of the consistency-model checkpoints (Song et al. 2023, appendix C):
residual down/up-sampling blocks, self-attention at all but the highest resolution, and FiLM ("scale_shift") time
conditioning, except where the published LSUN-256 config says otherwise. The EDM presets are the networks of
Karras et al. 2022 (``train.py --arch``) and 2024 (``train_edm2.py --preset``) with the published arguments.

==============  ============  ======  ==========  =====================================================
name            class         params  sample      use
==============  ============  ======  ==========  =====================================================
tiny            UNet2DModel   0.83 M  8 x 8       tests, 8x8 digits
small           UNet2DModel   8.0 M   32 x 32     small image data sets
base            UNet2DModel   45 M    64 x 64     medium experiments
imagenet64      UNet2DModel   296 M   64 x 64     the published cd/ct_imagenet64 UNet (1000 classes)
lsun256         UNet2DModel   526 M   256 x 256   the published cd/ct_bedroom256 and cat256 UNet
ddpmpp          SongUNet      55.7 M  32 x 32     EDM's CIFAR-10 DDPM++ (ECT), unconditional
ncsnpp          SongUNet      56.4 M  32 x 32     EDM's CIFAR-10 NCSN++ (CD, CT, iCT), unconditional
adm-imagenet64  DhariwalUNet  296 M   64 x 64     EDM's ImageNet-64 ADM (the CD teacher), 1000 classes
edm2-img64-s    EDM2UNet      280 M   64 x 64     EDM2 ImageNet-64 S (sCM), 1000 classes
edm2-img64-m    EDM2UNet      498 M   64 x 64     EDM2 ImageNet-64 M
edm2-img64-l    EDM2UNet      777 M   64 x 64     EDM2 ImageNet-64 L
edm2-img64-xl   EDM2UNet      1119 M  64 x 64     EDM2 ImageNet-64 XL
==============  ============  ======  ==========  =====================================================

The parameter counts are those of the reference implementations for the same arguments (pinned by the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, get_args

from torch import nn

from .dhariwal_unet import DhariwalUNet
from .edm2_unet import EDM2UNet
from .song_unet import SongUNet
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


@dataclass(frozen=True)
class NetworkPreset:
    """A named configuration: the network class and its constructor arguments (shape arguments included)."""

    network: type[nn.Module]
    config: Mapping[str, Any]


#: EDM's CIFAR-10 SongUNet (``train.py --arch ddpmpp|ncsnpp``; network defaults otherwise): 128 base channels,
#: multipliers [2, 2, 2], 4 blocks per level, attention at 16 px, dropout 0.13, and the 9 augmentation labels of
#: the published edm-cifar10-32x32 snapshots (augment probability 0.12).
_SONG = {"img_resolution": 32, "in_channels": 3, "out_channels": 3, "label_dim": 0, "augment_dim": 9,
         "model_channels": 128, "channel_mult": [2, 2, 2], "channel_mult_emb": 4, "num_blocks": 4,
         "attn_resolutions": [16], "dropout": 0.13, "label_dropout": 0}  # fmt: skip
_DDPMPP = {"embedding_type": "positional", "channel_mult_noise": 1, "encoder_type": "standard",
           "decoder_type": "standard", "resample_filter": [1, 1]}  # fmt: skip
_NCSNPP = {"embedding_type": "fourier", "channel_mult_noise": 2, "encoder_type": "residual",
           "decoder_type": "standard", "resample_filter": [1, 3, 3, 1]}  # fmt: skip
#: EDM2's ImageNet-64 presets (``train_edm2.py``, edm2-img64-*): base channels and dropout; UNet defaults otherwise.
_EDM2_IMG64 = {"s": (192, 0.0), "m": (256, 0.10), "l": (320, 0.10), "xl": (384, 0.10)}

NETWORK_PRESETS: dict[str, NetworkPreset] = {
    **{name: NetworkPreset(UNet2DModel, config) for name, config in _PRESETS.items()},
    "ddpmpp": NetworkPreset(SongUNet, {**_SONG, **_DDPMPP}),
    "ncsnpp": NetworkPreset(SongUNet, {**_SONG, **_NCSNPP}),
    # EDM's imagenet-64x64-cond-adm: train.py --arch adm --dropout 0.10 --augment 0
    "adm-imagenet64": NetworkPreset(DhariwalUNet, {
        "img_resolution": 64, "in_channels": 3, "out_channels": 3, "label_dim": 1000, "augment_dim": 0,
        "model_channels": 192, "channel_mult": [1, 2, 3, 4], "channel_mult_emb": 4, "num_blocks": 3,
        "attn_resolutions": [32, 16, 8], "dropout": 0.10, "label_dropout": 0}),
    **{f"edm2-img64-{size}": NetworkPreset(EDM2UNet, {
        "img_resolution": 64, "img_channels": 3, "label_dim": 1000, "model_channels": channels, "dropout": dropout})
       for size, (channels, dropout) in _EDM2_IMG64.items()},
}  # fmt: skip


def _data_shape(network: type[nn.Module], resolution: int, channels: int, num_classes: Optional[int]) -> dict[str, Any]:
    """The constructor arguments of ``network`` that the data decide: image size, channels, class count."""
    if network is UNet2DModel:
        return {"sample_size": resolution, "in_channels": channels, "out_channels": channels,
                "num_class_embeds": num_classes or None}  # fmt: skip
    if network is EDM2UNet:
        return {"img_resolution": resolution, "img_channels": channels, "label_dim": num_classes or 0}
    return {"img_resolution": resolution, "in_channels": channels, "out_channels": channels,
            "label_dim": num_classes or 0}  # fmt: skip


def preset_config(name: str, **overrides: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The network class of preset ``name`` and its constructor arguments with ``overrides`` applied."""
    preset = NETWORK_PRESETS.get(name)
    if preset is None:
        raise ValueError(f"unknown network preset {name!r}; choose one of {', '.join(NETWORK_PRESETS)}")
    allowed = set(preset.network.config_keys())  # type: ignore[attr-defined]
    unknown = sorted(k for k in overrides if k not in allowed)
    if unknown:
        raise ValueError(
            f"unknown {preset.network.__name__} argument(s) {unknown} for preset {name!r}; "
            f"valid ones: {sorted(allowed)}"
        )
    config = {k: (list(v) if isinstance(v, list) else v) for k, v in preset.config.items()}
    config.update(overrides)
    return preset.network, config


def build_preset(name: str, **overrides: Any) -> nn.Module:
    """A freshly initialised network of preset ``name`` (e.g. ``build_preset("ddpmpp", model_channels=32)``)."""
    network, config = preset_config(name, **overrides)
    return network(**config)


def build_preset_for_data(
    name: str, resolution: int, channels: int, num_classes: Optional[int], **options: Any
) -> nn.Module:
    """Preset ``name`` for square images of ``resolution`` pixels with ``channels`` channels and ``num_classes``
    classes (None: unconditional), with ``options`` overriding the other arguments."""
    network, _ = preset_config(name)
    return build_preset(name, **{**_data_shape(network, resolution, channels, num_classes), **options})
