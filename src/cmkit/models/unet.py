"""``UNet2DModel``: cmkit's own implementation of the diffusers UNet used by every consistency-model checkpoint.

The network is the ADM UNet (Dhariwal & Nichol 2021) that Song et al. (2023, appendix C) use for ImageNet-64 and
LSUN-256: an encoder of residual blocks (with self-attention at low resolutions), a middle block, and a decoder that
concatenates the encoder's skip activations; a sinusoidal time embedding (plus an optional class embedding) conditions
every residual block. The constructor arguments, saved ``config.json``, state-dict keys and outputs equal diffusers'
``UNet2DModel`` (version 0.42), so either library loads the other's directories.

Deliberate differences from diffusers: a Python ``float`` timestep stays fractional (diffusers truncates it to an
int); timesteps are moved to the sample's device; configs this class cannot build exactly, unknown config keys and
spatial sizes the UNet cannot round-trip raise ``ValueError`` instead of building a different network or failing deep
inside the forward pass.

cmkit's one addition, ``target_conditioning`` (default False, the last constructor argument): TCD's target time ``s``
as a second input, ``forward(..., target_timestep=...)`` (:mod:`cmkit.models.target_time`). It embeds ``s`` with the
timestep's projection and a ``TimestepEmbedding`` of its own, ``target_embedding`` (its ``linear_2`` zero at
initialisation), added to the time embedding before the class embedding. A config without it is diffusers' exactly:
the key is written to ``config.json`` only when True, so such directories stay byte-for-byte diffusers' (diffusers
cannot run a target-conditioned UNet: it ignores the key and the ``target_embedding`` weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ..config import ConfigMixin, register_to_config
from .conditioning import batch_timesteps
from .layers import GroupNorm, TimeScaleShift, TimestepEmbedding, activation, timestep_embedding
from .modeling import PretrainedMixin
from .prepack import conv2d
from .target_time import TARGET_EMBEDDING_PREFIX, check_target_timestep
from .unet_blocks import DownStage, MidStage, Stage, StageSettings, UpStage
from .unet_config import DOWN_BLOCKS, IGNORED_CONFIG_KEYS, UP_BLOCKS, block_kind, check_size, validate_config


@dataclass
class UNet2DOutput:
    """The output of :class:`UNet2DModel`: ``.sample``, also reachable as ``out[0]`` or ``out["sample"]``."""

    sample: Tensor

    def __getitem__(self, key: Union[int, str]) -> Tensor:
        if key in (0, "sample"):
            return self.sample
        raise KeyError(f"UNet2DOutput has only 'sample' (index 0), not {key!r}")

    def to_tuple(self) -> tuple[Tensor]:
        """``(sample,)``."""
        return (self.sample,)


class UNet2DModel(PretrainedMixin, ConfigMixin, nn.Module):
    """The diffusers-compatible UNet: ``forward(sample, timestep, class_labels=None, return_dict=True)``."""

    config_name = "config.json"
    saved_class_name = "UNet2DModel"
    #: state-dict prefixes of the target-time embedding (``target_conditioning``), keys a teacher's weights lack
    target_embedding_prefixes: tuple[str, ...] = (TARGET_EMBEDDING_PREFIX,)

    @register_to_config
    def __init__(
        self,
        sample_size: Optional[Union[int, tuple[int, int]]] = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: Optional[int] = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: Optional[str] = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: Optional[int] = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: Optional[int] = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: Optional[str] = None,
        num_class_embeds: Optional[int] = None,
        num_train_timesteps: Optional[int] = None,
        target_conditioning: bool = False,
    ) -> None:
        super().__init__()
        down_block_types, up_block_types = tuple(down_block_types), tuple(up_block_types)
        block_out_channels = tuple(int(c) for c in block_out_channels)
        validate_config(self.config)
        check_size(self.config)
        self._center_input_sample = bool(center_input_sample)
        self._class_embed_type = class_embed_type
        self._flip_sin_to_cos = bool(flip_sin_to_cos)
        self._freq_shift = float(freq_shift)
        self.sample_size = sample_size
        c0 = block_out_channels[0]
        time_embed_dim = time_embedding_dim or c0 * 4

        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=3, padding=1)
        # "positional" has no parameters; "learned" is an embedding table named like diffusers' ``time_proj``.
        self.time_proj = nn.Embedding(num_train_timesteps, c0) if time_embedding_type == "learned" else None
        self.time_embedding = TimestepEmbedding(c0, time_embed_dim)
        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding: Optional[nn.Module] = nn.Embedding(num_class_embeds, time_embed_dim)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(c0, time_embed_dim)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        else:
            self.class_embedding = None
        self.temb_act = activation(act_fn)

        shift: TimeScaleShift = resnet_time_scale_shift  # type: ignore[assignment]  # validated above
        settings = StageSettings(time_embed_dim, norm_num_groups, norm_eps, act_fn, shift, dropout)
        n = len(block_out_channels)
        self.down_blocks = nn.ModuleList()
        out_ch = c0
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            has_attn, resample = block_kind(block_type, DOWN_BLOCKS, "down_block_types")
            self.down_blocks.append(
                DownStage(
                    in_ch,
                    out_ch,
                    layers_per_block,
                    attention_head_dim=(attention_head_dim or out_ch) if has_attn else None,
                    downsample=None if i == n - 1 else (resample or downsample_type),  # type: ignore[arg-type]
                    downsample_padding=downsample_padding,
                    settings=settings,
                )
            )

        self.up_blocks = nn.ModuleList()  # registered before mid_block, as in diffusers (state-dict key order)
        self.mid_block: Optional[MidStage] = None
        if mid_block_type is not None:
            if attn_norm_num_groups is None and resnet_time_scale_shift == "default":
                attn_norm_num_groups = norm_num_groups  # diffusers' rule: only "default" gets a norm by default
            mid_settings = dataclasses.replace(settings, output_scale_factor=float(mid_block_scale_factor))
            self.mid_block = MidStage(
                block_out_channels[-1],
                attention_head_dim=(attention_head_dim or block_out_channels[-1]) if add_attention else None,
                attn_groups=attn_norm_num_groups,
                settings=mid_settings,
            )

        rev = list(reversed(block_out_channels))
        out_ch = rev[0]
        for i, block_type in enumerate(up_block_types):
            prev_ch, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, n - 1)]
            has_attn, resample = block_kind(block_type, UP_BLOCKS, "up_block_types")
            self.up_blocks.append(
                UpStage(
                    in_ch,
                    prev_ch,
                    out_ch,
                    layers_per_block + 1,
                    attention_head_dim=(attention_head_dim or out_ch) if has_attn else None,
                    upsample=None if i == n - 1 else (resample or upsample_type),  # type: ignore[arg-type]
                    settings=settings,
                )
            )

        self.conv_norm_out = GroupNorm(norm_num_groups, c0, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(c0, out_channels, kernel_size=3, padding=1)
        # TCD's target time s, registered last so every other key (and its initial value) is the unconditioned net's
        self.target_embedding: Optional[TimestepEmbedding] = None
        if target_conditioning:
            self.target_embedding = TimestepEmbedding(c0, time_embed_dim)
            nn.init.zeros_(self.target_embedding.linear_2.weight)
            nn.init.zeros_(self.target_embedding.linear_2.bias)
        self._downsample_factor = 2 ** (n - 1)
        self._channels_last_weights()
        # loading with ``assign=True`` (from_pretrained on the meta device) replaces the parameters: redo it
        self.register_load_state_dict_post_hook(lambda module, _keys: module._channels_last_weights())

    def _channels_last_weights(self) -> None:
        """Store convolution kernels channels-last, the layout of the activations, so no call re-lays them out."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d) and not module.weight.is_meta:
                    module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)

    def activation_floats(self, sample_shape: tuple[int, ...]) -> int:
        """Floats one ``(C, H, W)`` sample's forward pass holds at least: the encoder's skip activations.

        They all stay alive until the decoder consumes them: ``conv_in``'s output, every residual block's output
        at each level's resolution ``H / 2^i``, and each downsampler's output.
        """
        _, height, width = (int(s) for s in sample_shape)
        channels = [int(c) for c in self.config.block_out_channels]
        floats = channels[0] * height * width
        for i, c in enumerate(channels):
            h, w = height >> i, width >> i
            floats += int(self.config.layers_per_block) * c * h * w
            if i < len(channels) - 1:
                floats += c * (h >> 1) * (w >> 1)
        return floats

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each residual block and attention layer in the backward pass instead of storing activations."""
        self._set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        """Store activations for the backward pass again (the default)."""
        self._set_gradient_checkpointing(False)

    def _set_gradient_checkpointing(self, value: bool) -> None:
        for module in self.modules():
            if isinstance(module, Stage):
                module.gradient_checkpointing = value

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether activation checkpointing is on (see :meth:`enable_gradient_checkpointing`)."""
        return any(m.gradient_checkpointing for m in self.modules() if isinstance(m, Stage))

    def forward(
        self,
        sample: Tensor,
        timestep: Union[Tensor, float, int],
        class_labels: Optional[Tensor] = None,
        return_dict: bool = True,
        target_timestep: Union[Tensor, float, int, None] = None,
    ) -> Union[UNet2DOutput, tuple[Tensor]]:
        """Predict from a ``[B, C, H, W]`` sample at ``timestep`` (the network's noise input ``c_noise``).

        A ``target_conditioning`` UNet also takes ``target_timestep``, TCD's target time ``s`` in ``timestep``'s units.
        """
        if sample.ndim != 4:
            raise ValueError(f"sample must have shape [B, C, H, W], got {tuple(sample.shape)}")
        f = self._downsample_factor
        if sample.shape[-2] % f or sample.shape[-1] % f:
            raise ValueError(
                f"sample height and width must be multiples of {f} (2 ** (len(block_out_channels) - 1)) so the "
                f"decoder can match the encoder's skips; got {tuple(sample.shape[-2:])}"
            )
        if self._center_input_sample:
            sample = 2 * sample - 1.0
        param_dtype = self.time_embedding.linear_1.weight.dtype
        t = batch_timesteps(timestep, sample.shape[0], sample.device)
        emb = self.time_embedding(self._project_time(t).to(param_dtype))
        check_target_timestep("UNet2DModel", self.target_embedding is not None, target_timestep)
        if self.target_embedding is not None:
            s = batch_timesteps(target_timestep, sample.shape[0], sample.device)  # type: ignore[arg-type]
            emb = emb + self.target_embedding(self._project_time(s).to(param_dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError(
                    "this UNet is class-conditional (num_class_embeds or class_embed_type is set); pass class_labels"
                )
            class_labels = torch.as_tensor(class_labels, device=sample.device)  # labels made on the CPU move too
            if self._class_embed_type == "timestep":
                class_labels = self._project_time(class_labels).to(param_dtype)
            emb = emb + self.class_embedding(class_labels).to(param_dtype)
        elif class_labels is not None:
            raise ValueError("class_labels were given but this UNet is unconditional (num_class_embeds is None)")
        temb_act = self.temb_act(emb)

        # channels-last activations: oneDNN convolutions, GroupNorm and the attention tokens then need no
        # layout copies (measured ~1.4x faster on CPU in float32 and bfloat16; see docs/speed.md)
        h = conv2d(self.conv_in, sample.contiguous(memory_format=torch.channels_last))
        skips = [h]
        for down in self.down_blocks:
            h, res = down(h, temb_act)
            skips.extend(res)
        if self.mid_block is not None:
            h = self.mid_block(h, temb_act)
        for up in self.up_blocks:
            k = len(up.resnets)
            h = up(h, skips[-k:], temb_act)
            skips = skips[:-k]
        h = conv2d(self.conv_out, self.conv_act(self.conv_norm_out(h))).contiguous()
        if not return_dict:
            return (h,)
        return UNet2DOutput(sample=h)

    @property
    def accepts_target_timestep(self) -> bool:
        """Whether the UNet takes TCD's target time ``s`` (``target_timestep``; built with ``target_conditioning``)."""
        return self.target_embedding is not None

    def to_json_dict(self) -> dict[str, Any]:
        """The saved config: diffusers' keys, plus ``target_conditioning`` only when it is on (see the module doc)."""
        config = super().to_json_dict()
        if not config.get("target_conditioning"):
            config.pop("target_conditioning", None)
        return config

    def _project_time(self, t: Tensor) -> Tensor:
        if self.time_proj is not None:
            return self.time_proj(t)
        return timestep_embedding(t, self.conv_in.out_channels, self._flip_sin_to_cos, self._freq_shift)

    @classmethod
    def _handle_unknown_config_keys(cls, unknown: list[str], config: Mapping[str, Any]) -> None:
        """Unknown keys mean a config for another network: refuse rather than build something different."""
        raise ValueError(
            f"config has keys UNet2DModel does not take: {', '.join(unknown)}. It was probably written for another "
            f"model class; UNet2DModel takes {', '.join(cls.config_keys())} "
            f"(plus metadata {', '.join(IGNORED_CONFIG_KEYS)})"
        )

    @classmethod
    def convert_legacy_state_dict(cls, state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """Rename old diffusers attention keys (``query``, ``key``, ``value``, ``proj_attn``) to today's names."""
        renames = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
        out: dict[str, Tensor] = {}
        for name, tensor in state_dict.items():
            prefix, _, leaf = name.rpartition(".")
            path, _, module = prefix.rpartition(".")
            if ".attentions." in f".{path}." and module in renames and leaf in ("weight", "bias"):
                name = f"{path}.{renames[module]}.{leaf}"
            out[name] = tensor
        return out
