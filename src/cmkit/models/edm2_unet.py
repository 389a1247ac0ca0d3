"""``EDM2UNet``: the magnitude-preserving UNet of EDM2 (Karras et al. 2024, sec. 3 and figure 21).

The ImageNet networks of EDM2, and those of the continuous-time consistency models trained on them (sCM, Lu & Song
2024; ECT's ImageNet-64 runs), are this UNet. The constructor takes the arguments of EDM2's ``UNet``
(``training/networks_edm2.py``) with the same names and defaults, its block options (``dropout``,
``res_balance``, ...) spelled out, and the state-dict keys are EDM2's (``emb_fourier.freqs``, ``emb_noise.weight``,
``enc.64x64_block0.conv_res0.weight``, ``out_gain``, ...). ``logvar_channels > 0`` adds the uncertainty head that
EDM2 keeps in its ``Precond`` wrapper (``logvar_fourier``, ``logvar_linear``; eq. 21's ``u(sigma)``), read through
:meth:`EDM2UNet.logvar`; it is not part of the denoiser's output, so it stays off (0) unless a loss uses it.
``dropout_res`` is ECT's addition to this constructor (Geng et al. 2024, locuslab/ect's ImageNet branch): the blocks
of a level whose feature resolution exceeds it get no dropout (None: every block has ``dropout``, as EDM2).

Architecture, all layers magnitude-preserving (:mod:`cmkit.models.mp_layers`), no biases, no normalisation layers:

* embedding: Fourier features of ``c_noise``, a linear map, ``mp_sum`` with the mapped (scaled one-hot) class
  vector at ``label_balance``, ``mp_silu``;
* the input gets a constant channel of ones (it lets the first convolution learn a bias), then an encoder of
  residual blocks that pixel-normalise their input, a decoder that ``mp_cat``-s the encoder's activations at
  ``concat_balance``; each block's residual branch is ``conv(mp_silu(conv(mp_silu(x)) * (1 + g emb)))`` joined at
  ``res_balance``, optional cosine attention (pixel-normalised q, k, v) joined at ``attn_balance``, and activations
  clipped to ``+-clip_act``;
* the output convolution is scaled by the learned ``out_gain`` (zero at initialisation).

cmkit calls it as ``net(sample, timestep, class_labels=None)`` with ``timestep = 250 ln sigma``; the network
embeds ``c_noise = ln(sigma) / 4`` (:class:`~cmkit.models.edm_network.EDMNetwork`). ``target_conditioning=True``
(cmkit's, for TCD) maps the target time's Fourier features (the same ``emb_fourier``) through a linear layer of its
own with a learned gain that starts at zero (``target_embedding``), added to ``emb_noise``'s output before the class
embedding is mixed in.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .._validate import check_choice, require_int, require_positive
from ..config import register_to_config
from ..karras import edm_noise_label
from .conditioning import TimestepLike, batch_timesteps
from .edm_layers import check_resample_filter, resample_by_two, resample_kernel
from .edm_network import EDMNetwork, check_probability, check_unet_shape
from .mp_layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize
from .target_time import MPTargetEmbedding

Flavor = Literal["enc", "dec"]
ResampleMode = Literal["keep", "up", "down"]


class Block(nn.Module):
    """EDM2's encoder / decoder block (figure 21); see the module docstring."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: Flavor,
        resample_mode: ResampleMode,
        resample_filter: Sequence[float],
        attention: bool,
        channels_per_head: int,
        dropout: float,
        res_balance: float,
        attn_balance: float,
        clip_act: Optional[float],
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_mode = resample_mode
        self.resample_filter = tuple(resample_filter)
        self.num_heads = out_channels // channels_per_head if attention else 0
        if self.num_heads and out_channels % self.num_heads:
            raise ValueError(
                f"{self.num_heads} attention heads (channels_per_head={channels_per_head}) do not divide a block's "
                f"{out_channels} channels; choose channels_per_head or model_channels so they do"
            )
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.drop = nn.Dropout(dropout)
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Apply the block to ``x`` given the embedding ``[B, emb_channels]``."""
        if self.resample_mode != "keep":
            kernel, pad = resample_kernel(self.resample_filter, x.device), (len(self.resample_filter) - 1) // 2
            x = resample_by_two(x, kernel, self.resample_mode, pad)  # type: ignore[arg-type]
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=[1])  # pixel norm
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        y = self.conv_res1(self.drop(y))
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self.attn_proj(self._attend(x)), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x

    def _attend(self, x: Tensor) -> Tensor:
        """Cosine attention: pixel-normalised ``q``, ``k``, ``v`` per head, ``softmax(q^T k / sqrt(d)) v``. Written
        out rather than through fused kernels, which have no forward-mode derivative (``torch.func.jvp``)."""
        b, c, height, width = x.shape
        y = self.attn_qkv(x).reshape(b, self.num_heads, -1, 3, height * width)
        q, k, v = normalize(y, dim=[2]).unbind(3)  # [B, heads, d, HW] each
        w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
        return torch.einsum("nhqk,nhck->nhcq", w, v).reshape(b, c, height, width)


class EDM2UNet(EDMNetwork):
    """EDM2's UNet; see the module docstring. Arguments as EDM2's ``UNet`` and its ``Block``, plus ECT's
    ``dropout_res``."""

    saved_class_name = "EDM2UNet"

    @register_to_config
    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_noise: Optional[int] = None,
        channel_mult_emb: Optional[int] = None,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (16, 8),
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        dropout_res: Optional[float] = None,
        resample_filter: Sequence[float] = (1, 1),
        channels_per_head: int = 64,
        dropout: float = 0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: Optional[float] = 256,
        logvar_channels: int = 0,
        target_conditioning: bool = False,
    ) -> None:
        super().__init__()
        resolution, mult, blocks, attn, mc = check_unet_shape(
            img_resolution, channel_mult, num_blocks, attn_resolutions, model_channels)  # fmt: skip
        self.image_channels = require_int("img_channels", img_channels, 1)
        self.label_dim = require_int("label_dim", label_dim, 0, " (0: unconditional)")
        cblock = [mc * m for m in mult]
        cnoise = mc * require_int("channel_mult_noise", channel_mult_noise, 1) if channel_mult_noise else cblock[0]
        cemb = mc * require_int("channel_mult_emb", channel_mult_emb, 1) if channel_mult_emb else max(cblock)
        for name, value in (("label_balance", label_balance), ("concat_balance", concat_balance),
                            ("res_balance", res_balance), ("attn_balance", attn_balance)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if clip_act is not None and not (isinstance(clip_act, (int, float)) and clip_act > 0):
            raise ValueError(f"clip_act must be a positive number or None (no clipping), got {clip_act!r}")
        dropout = check_probability("dropout", dropout)
        if dropout_res is not None:
            require_positive("dropout_res", dropout_res, " (a feature resolution, e.g. 16; None: every block)")
        block_options = dict(
            resample_filter=check_resample_filter(resample_filter),
            channels_per_head=require_int("channels_per_head", channels_per_head, 1),
            res_balance=float(res_balance), attn_balance=float(attn_balance),
            clip_act=None if clip_act is None else float(clip_act),
        )  # fmt: skip
        logvar_channels = require_int("logvar_channels", logvar_channels, 0, " (0: no uncertainty head)")
        check_choice("target_conditioning", target_conditioning, (False, True))
        self.require_fits(dict(self.config))
        self.img_resolution = resolution
        self.downsample_factor = 2 ** (len(mult) - 1)
        self.label_balance = float(label_balance)
        self.concat_balance = float(concat_balance)
        self.out_gain = nn.Parameter(torch.zeros([]))

        # Embedding.
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(self.label_dim, cemb, kernel=[]) if self.label_dim else None

        def block(
            cin: int, cout: int, res: int, flavor: Flavor, mode: ResampleMode = "keep", attention: bool = False
        ) -> Block:
            # ECT's dropout_res: no dropout in the blocks of a level whose resolution exceeds it.
            p = dropout if dropout_res is None or res <= dropout_res else 0.0
            return Block(cin, cout, cemb, flavor, mode, attention=attention, dropout=p,
                         **block_options)  # type: ignore[arg-type]

        # Encoder.
        self.enc = nn.ModuleDict()
        skips: list[tuple[int, int]] = []
        cout = self.image_channels + 1  # the constant channel
        for level, channels in enumerate(cblock):
            res = resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, res, "enc", "down")
            skips.append((cout, level))
            for idx in range(blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = block(cin, cout, res, "enc", attention=res in attn)
                skips.append((cout, level))
        self.skip_levels = tuple(skips)

        # Decoder.
        self.dec = nn.ModuleDict()
        pending = [c for c, _ in skips]
        for level, channels in reversed(list(enumerate(cblock))):
            res = resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, res, "dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, res, "dec")
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, res, "dec", "up")
            for idx in range(blocks + 1):
                cin, cout = cout + pending.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = block(cin, cout, res, "dec", attention=res in attn)
        self.out_conv = MPConv(cout, self.image_channels, kernel=[3, 3])

        if logvar_channels:
            self.logvar_fourier = MPFourier(logvar_channels)
            self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

        # TCD's target time s (cmkit's), built last so every other tensor is drawn as without it
        self.target_embedding = MPTargetEmbedding(cnoise, cemb) if target_conditioning else None

    def forward_edm(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Optional[Tensor],
        augment_labels: Optional[Tensor],
        target_labels: Optional[Tensor] = None,
    ) -> Tensor:
        """EDM2's ``UNet.forward(x, noise_labels, class_labels)`` (it takes no augmentation labels), plus TCD's target
        labels."""
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.target_embedding is not None:
            assert target_labels is not None
            emb = emb + self.target_embedding(self.emb_fourier(target_labels))
        if self.emb_label is not None:
            assert class_labels is not None
            label_emb = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, label_emb, t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, layer in self.enc.items():
            x = layer(x) if isinstance(layer, MPConv) else layer(x, emb)
            skips.append(x)
        for name, layer in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = layer(x, emb)
        return self.out_conv(x, gain=self.out_gain)

    def logvar(self, timestep: Union[TimestepLike, Tensor], batch: Optional[int] = None) -> Tensor:
        """The learned uncertainty ``u(sigma)`` (EDM2 eq. 21) at cmkit ``timestep``s, ``[B]``; needs
        ``logvar_channels > 0``. ``batch`` broadcasts a scalar timestep."""
        if not hasattr(self, "logvar_linear"):
            raise ValueError("this EDM2UNet has no uncertainty head; build it with logvar_channels=128 (EDM2's value)")
        device = self.out_gain.device
        t = torch.as_tensor(timestep, device=device)
        n = batch if batch is not None else (t.shape[0] if t.ndim else 1)
        noise_labels = edm_noise_label(batch_timesteps(t, n, device).float())
        return self.logvar_linear(self.logvar_fourier(noise_labels)).reshape(-1)
