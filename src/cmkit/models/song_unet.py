"""``SongUNet``: the DDPM++ and NCSN++ UNets (Song et al. 2021, appendix H) as EDM re-implements them.

Karras et al. (2022, "Elucidating the Design Space of Diffusion-Based Generative Models", appendix F.2 and
table 7) train their CIFAR-10 models with this network; the consistency-model papers distil or train it
(CM, iCT: NCSN++; ECT: DDPM++). The constructor takes EDM's ``SongUNet`` arguments with the same names and
defaults, and the state-dict keys are EDM's (``map_noise``, ``map_layer0``, ``enc.32x32_block0.conv0``,
``dec.32x32_aux_conv``, ...), so an EDM snapshot's recorded constructor arguments and tensors build and load it
directly (:mod:`cmkit.models.reference_nets`).

Architecture (all blocks are :class:`~cmkit.models.edm_layers.UNetBlock` with additive conditioning, one
attention head, ``skip_scale = sqrt(1/2)`` and GroupNorm eps 1e-6):

* mapping: the noise label ``c_noise`` is embedded with sinusoids (``embedding_type='positional'``, DDPM++) or
  random Fourier features (``'fourier'``, NCSN++), ``[sin, cos]`` order; scaled one-hot class vectors and
  augmentation labels are added through linear maps; two SiLU layers give the block embedding;
* encoder: per level ``model_channels * channel_mult[level]`` channels, a resampling block starting each level
  after the first, ``num_blocks`` blocks, attention at ``attn_resolutions``; ``encoder_type='skip'`` adds the
  box-filtered input at each level, ``'residual'`` (NCSN++) a progressively downsampled input path;
* decoder: the mirror image with ``num_blocks + 1`` blocks per level consuming the encoder's activations,
  attention in a level's last block only; ``decoder_type='skip'`` sums per-level RGB outputs (progressive
  growing), ``'standard'`` reads out after the last level.

cmkit calls it as ``net(sample, timestep, class_labels=None)`` with ``timestep = 250 ln sigma``; the network
embeds ``c_noise = ln(sigma) / 4`` (:class:`~cmkit.models.edm_network.EDMNetwork`). ``target_conditioning=True``
(cmkit's, for TCD) embeds the target time's label with the same features and its own two layers
(``target_embedding``, the second zero at initialisation), added before the mapping's last SiLU.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import check_choice, require_int
from ..config import register_to_config
from .edm_layers import (
    BlockOptions, Conv2d, FourierEmbedding, GroupNorm, Init, Linear, UNetBlock, check_resample_filter,
)
from .edm_network import EDMNetwork, check_probability, check_unet_shape
from .layers import timestep_embedding
from .target_time import EDMTargetEmbedding

EmbeddingType = Literal["positional", "fourier"]
EncoderType = Literal["standard", "skip", "residual"]
DecoderType = Literal["standard", "skip"]


class SongUNet(EDMNetwork):
    """EDM's DDPM++ / NCSN++ UNet; see the module docstring. Arguments as EDM's ``training/networks.py``."""

    saved_class_name = "SongUNet"

    @register_to_config
    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: EmbeddingType = "positional",
        channel_mult_noise: int = 1,
        encoder_type: EncoderType = "standard",
        decoder_type: DecoderType = "standard",
        resample_filter: Sequence[float] = (1, 1),
        target_conditioning: bool = False,
    ) -> None:
        super().__init__()
        resolution, mult, blocks, attn, mc = check_unet_shape(
            img_resolution, channel_mult, num_blocks, attn_resolutions, model_channels)  # fmt: skip
        self.image_channels = require_int("in_channels", in_channels, 1)
        out_channels = require_int("out_channels", out_channels, 1)
        self.label_dim = require_int("label_dim", label_dim, 0, " (0: unconditional)")
        self.augment_dim = require_int("augment_dim", augment_dim, 0, " (0: no augmentation labels)")
        emb_channels = mc * require_int("channel_mult_emb", channel_mult_emb, 1)
        noise_channels = mc * require_int("channel_mult_noise", channel_mult_noise, 1)
        if noise_channels % 2:
            raise ValueError(f"model_channels * channel_mult_noise = {noise_channels} must be even (sin/cos pairs)")
        check_choice("embedding_type", embedding_type, ("positional", "fourier"))
        check_choice("encoder_type", encoder_type, ("standard", "skip", "residual"))
        check_choice("decoder_type", decoder_type, ("standard", "skip"))
        check_choice("target_conditioning", target_conditioning, (False, True))
        taps = check_resample_filter(resample_filter)
        self.label_dropout = check_probability("label_dropout", label_dropout)
        self.require_fits(dict(self.config))
        self.img_resolution = resolution
        self.embedding_type = embedding_type
        self.downsample_factor = 2 ** (len(mult) - 1)

        # EDM's initialisation: Xavier-uniform, the last convolution of each residual path near zero, attention
        # projections at gain sqrt(0.2) (EDM training/networks.py, following Song et al.'s code).
        init = Init("xavier_uniform")
        init_zero = Init("xavier_uniform", weight_gain=1e-5)
        options = BlockOptions(
            emb_channels=emb_channels, num_heads=1, dropout=check_probability("dropout", dropout),
            skip_scale=math.sqrt(0.5), eps=1e-6, resample_filter=taps, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=Init("xavier_uniform", weight_gain=math.sqrt(0.2)),
        )  # fmt: skip

        # Mapping.
        self.map_noise = FourierEmbedding(noise_channels) if embedding_type == "fourier" else None
        self.map_label = Linear(self.label_dim, noise_channels, init=init) if self.label_dim else None
        self.map_augment = Linear(self.augment_dim, noise_channels, bias=False, init=init) if self.augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, init=init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init=init)

        # Encoder.
        self.enc = nn.ModuleDict()
        skips: list[tuple[int, int]] = []  # (channels, level) of each activation handed to the decoder
        cout = caux = self.image_channels
        for level, m in enumerate(mult):
            res = resolution >> level
            if level == 0:
                cout = mc
                self.enc[f"{res}x{res}_conv"] = Conv2d(self.image_channels, cout, 3, init=init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, options, down=True)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=taps)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, init=init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=taps, fused_resample=True, init=init)  # fmt: skip
                    caux = cout
            skips.append((cout, level))
            for idx in range(blocks):
                cin, cout = cout, mc * m
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, options, attention=res in attn)
                skips.append((cout, level))
        self.skip_levels = tuple(skips)

        # Decoder.
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
                self.dec[name] = UNetBlock(cin, cout, options, attention=idx == blocks and res in attn)
                self._takes_skip.add(name)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(mult) - 1:
                    aux_up = Conv2d(out_channels, out_channels, 0, up=True, resample_filter=taps)
                    self.dec[f"{res}x{res}_aux_up"] = aux_up
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, init=init_zero)

        # TCD's target time s (cmkit's), built last so every other tensor is drawn as without it
        self.target_embedding = EDMTargetEmbedding(noise_channels, emb_channels, init) if target_conditioning else None

    def _embed_noise(self, noise_labels: Tensor) -> Tensor:
        """``[sin, cos]`` features of the noise labels: Fourier (NCSN++) or sinusoids of ``noise_channels / 2``
        frequencies ``10000^(-k / (n/2 - 1))`` spanning ``[1e-4, 1]`` end to end (DDPM++)."""
        if self.map_noise is not None:
            return self.map_noise(noise_labels)
        return timestep_embedding(noise_labels, self.map_layer0.in_features, flip_sin_to_cos=False, freq_shift=1)

    def forward_edm(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Optional[Tensor],
        augment_labels: Optional[Tensor],
        target_labels: Optional[Tensor] = None,
    ) -> Tensor:
        """EDM's ``SongUNet.forward(x, noise_labels, class_labels, augment_labels)``, plus TCD's target labels."""
        emb = self._embed_noise(noise_labels)
        if self.map_label is not None:
            assert class_labels is not None
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.target_embedding is not None:
            assert target_labels is not None
            emb = emb + self.target_embedding(self._embed_noise(target_labels))
        emb = F.silu(emb)

        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        out: Optional[Tensor] = None
        tmp: Optional[Tensor] = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                out = block(out)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                out = tmp if out is None else tmp + out
            else:
                if name in self._takes_skip:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        assert out is not None
        return out
