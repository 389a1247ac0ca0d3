"""``DhariwalUNet``: the ADM UNet (Dhariwal & Nichol 2021) as EDM re-implements it for ImageNet-64.

Karras et al. (2022, appendix F.2, table 7 "ADM") train their class-conditional ImageNet-64 model, the teacher of
the consistency-distillation papers' ImageNet-64 results, with this network: 192 base channels, multipliers
``[1, 2, 3, 4]``, 3 residual blocks per level, attention at 32, 16 and 8 pixels with 64-channel heads, FiLM
(``adaptive_scale``) conditioning on a 768-wide embedding, dropout 0.10. The constructor takes EDM's
``DhariwalUNet`` arguments and the state-dict keys are EDM's, so an EDM snapshot loads directly.

Why a class of its own and not a :class:`~cmkit.models.unet.UNet2DModel` config: the published layouts agree
(same blocks, same order, same 295,899,267 parameters as the ``imagenet64`` preset, which the tests check), but
EDM's network differs from ``UNet2DModel`` in what diffusers' constructor, which ``UNet2DModel`` must keep
exactly, cannot express:

* its time embedding reads EDM's noise label ``ln(sigma) / 4``, not ``250 ln sigma``, with ``model_channels``
  sinusoids (``UNet2DModel``: ``block_out_channels[0]``), so no diffusers config computes the same function
  and a saved ``DhariwalUNet`` could never be read by diffusers anyway;
* it takes augmentation labels and class *vectors* (a linear map, so soft labels and label dropout work);
* narrow layers use ``min(32, C / 4)`` GroupNorm groups, attention has ``C // 64`` heads of width
  ``C / heads`` and none below 64 channels (``UNet2DModel``: one group count, one head width);
* attention reads one fused ``qkv`` convolution with (head, channel, q/k/v) ordered outputs, and resampling
  skips carry filter buffers, so a converted state dict would need a key and tensor map.

Built from the same :class:`~cmkit.models.edm_layers.UNetBlock` as :class:`~cmkit.models.song_unet.SongUNet`
(EDM's own design: one block for DDPM++, NCSN++ and ADM), the network is exact for every configuration,
loads EDM tensors under their own names, and costs ~100 lines instead of options and converters.

cmkit calls it as ``net(sample, timestep, class_labels=None)`` with ``timestep = 250 ln sigma``; the network
embeds ``c_noise = ln(sigma) / 4`` (:class:`~cmkit.models.edm_network.EDMNetwork`). ``target_conditioning=True``
(cmkit's, for TCD) embeds the target time's label with the same sinusoids and its own two layers
(``target_embedding``, the second zero at initialisation), added to the mapped noise embedding before the class term.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import check_choice, require_int
from ..config import register_to_config
from .edm_layers import BlockOptions, Conv2d, GroupNorm, Init, Linear, UNetBlock
from .edm_network import EDMNetwork, check_probability, check_unet_shape
from .layers import timestep_embedding
from .target_time import EDMTargetEmbedding


class DhariwalUNet(EDMNetwork):
    """EDM's ADM UNet; see the module docstring. Arguments as EDM's ``training/networks.py``."""

    saved_class_name = "DhariwalUNet"

    @register_to_config
    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0,
        target_conditioning: bool = False,
    ) -> None:
        super().__init__()
        resolution, mult, blocks, attn, mc = check_unet_shape(
            img_resolution, channel_mult, num_blocks, attn_resolutions, model_channels)  # fmt: skip
        if mc % 2:
            raise ValueError(f"model_channels must be even (the noise embedding has sin/cos pairs), got {mc}")
        self.image_channels = require_int("in_channels", in_channels, 1)
        out_channels = require_int("out_channels", out_channels, 1)
        self.label_dim = require_int("label_dim", label_dim, 0, " (0: unconditional)")
        self.augment_dim = require_int("augment_dim", augment_dim, 0, " (0: no augmentation labels)")
        emb_channels = mc * require_int("channel_mult_emb", channel_mult_emb, 1)
        self.label_dropout = check_probability("label_dropout", label_dropout)
        check_choice("target_conditioning", target_conditioning, (False, True))
        self.require_fits(dict(self.config))
        self.img_resolution = resolution
        self.downsample_factor = 2 ** (len(mult) - 1)

        # EDM's initialisation: Kaiming-uniform at gain sqrt(1/3) (PyTorch's default), every residual path's last
        # layer and the augmentation map at zero, class vectors mapped with unit-variance weights.
        init = Init("kaiming_uniform", weight_gain=math.sqrt(1 / 3), bias_gain=math.sqrt(1 / 3))
        init_zero = Init("kaiming_uniform", weight_gain=0.0, bias_gain=0.0)
        options = BlockOptions(emb_channels=emb_channels, channels_per_head=64,
                               dropout=check_probability("dropout", dropout), init=init, init_zero=init_zero)

        # Mapping.
        self.map_augment = Linear(self.augment_dim, mc, bias=False, init=init_zero) if self.augment_dim else None
        self.map_layer0 = Linear(mc, emb_channels, init=init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init=init)
        self.map_label = (
            Linear(self.label_dim, emb_channels, bias=False, init=Init("kaiming_normal", math.sqrt(self.label_dim)))
            if self.label_dim else None
        )  # fmt: skip

        # Encoder: a resampling block opens every level after the first.
        self.enc = nn.ModuleDict()
        skips: list[tuple[int, int]] = []
        cout = self.image_channels
        for level, m in enumerate(mult):
            res = resolution >> level
            if level == 0:
                cout = mc * m
                self.enc[f"{res}x{res}_conv"] = Conv2d(self.image_channels, cout, 3, init=init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, options, down=True)
            skips.append((cout, level))
            for idx in range(blocks):
                cin, cout = cout, mc * m
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, options, attention=res in attn)
                skips.append((cout, level))
        self.skip_levels = tuple(skips)

        # Decoder: the two middle blocks, then an upsampling block opening every level; every block at an
        # attention resolution attends.
        self.dec = nn.ModuleDict()
        self._takes_skip: set[str] = set()
        pending = [c for c, _ in skips]
        for level, m in reversed(list(enumerate(mult))):
            res = resolution >> level
            if level == len(mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, options, attention=True)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, options)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, options, up=True)
            for idx in range(blocks + 1):
                cin, cout = cout + pending.pop(), mc * m
                name = f"{res}x{res}_block{idx}"
                self.dec[name] = UNetBlock(cin, cout, options, attention=res in attn)
                self._takes_skip.add(name)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, init=init_zero)

        # TCD's target time s (cmkit's), built last so every other tensor is drawn as without it
        self.target_embedding = EDMTargetEmbedding(mc, emb_channels, init) if target_conditioning else None

    def forward_edm(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Optional[Tensor],
        augment_labels: Optional[Tensor],
        target_labels: Optional[Tensor] = None,
    ) -> Tensor:
        """EDM's ``DhariwalUNet.forward(x, noise_labels, class_labels, augment_labels)``, plus TCD's target labels."""
        emb = self._embed_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.target_embedding is not None:
            assert target_labels is not None
            emb = emb + self.target_embedding(self._embed_noise(target_labels))
        if self.map_label is not None:
            assert class_labels is not None
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for name, block in self.dec.items():
            if name in self._takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))

    def _embed_noise(self, noise_labels: Tensor) -> Tensor:
        """``[cos, sin]`` of ``model_channels / 2`` frequencies ``10000^(-k / (n/2))`` (ADM's timestep embedding)."""
        return timestep_embedding(noise_labels, self.map_layer0.in_features, flip_sin_to_cos=True, freq_shift=0)
