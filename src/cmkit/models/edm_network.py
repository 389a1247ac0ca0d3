"""What the EDM-family networks share: cmkit's calling convention around the reference forward pass, and checks.

The reference networks (EDM's ``SongUNet``, EDM2's ``UNet``) are called as ``F(x, c_noise, class_vectors)`` with
EDM's noise label ``c_noise = ln(sigma) / 4`` (EDM table 1). cmkit calls every network as
``net(sample, timestep, class_labels=None, return_dict=True)`` with ``timestep = 250 ln sigma``
(:func:`cmkit.karras.sigma_to_timestep`). :class:`EDMNetwork` converts once (:func:`cmkit.karras.edm_noise_label`,
:func:`~cmkit.models.conditioning.class_label_matrix`) and hands the reference's inputs to ``forward_edm``.

``target_conditioning`` (cmkit's, not the references'; default False) adds TCD's target time ``s``:
``forward(..., target_timestep=...)`` hands ``forward_edm`` its EDM label ``ln(sigma_s) / 4`` too, which each network
embeds like its noise label into a ``target_embedding`` that starts at zero (:mod:`cmkit.models.target_time`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .._validate import require_int
from ..config import ConfigMixin
from ..karras import edm_noise_label
from ..limits import MAX_REPEATS, require_parameters_fit
from .conditioning import TimestepLike, batch_timesteps, class_label_matrix
from .modeling import PretrainedMixin
from .target_time import TARGET_EMBEDDING_PREFIX, check_target_timestep
from .unet import UNet2DOutput


def check_unet_shape(
    img_resolution: Any, channel_mult: Any, num_blocks: Any, attn_resolutions: Any, model_channels: Any
) -> tuple[int, tuple[int, ...], int, tuple[int, ...], int]:
    """The UNet shape arguments every EDM network takes, checked: ``(img_resolution, channel_mult, num_blocks,
    attn_resolutions, model_channels)`` as ints. Each level halves the resolution, so there are at most
    ``log2(img_resolution) + 1`` levels."""
    resolution = require_int("img_resolution", img_resolution, 1, " (pixels)")
    channels = require_int("model_channels", model_channels, 1)
    if isinstance(channel_mult, (str, bytes)) or not isinstance(channel_mult, Sequence) or not channel_mult:
        raise ValueError(f"channel_mult must be a non-empty list of positive integers, got {channel_mult!r}")
    mult = tuple(require_int("each channel_mult entry", m, 1) for m in channel_mult)
    if resolution >> (len(mult) - 1) < 1:
        raise ValueError(
            f"channel_mult has {len(mult)} levels, but img_resolution={resolution} can be halved only "
            f"{resolution.bit_length() - 1} times; use at most {resolution.bit_length()} levels"
        )
    blocks = require_int("num_blocks", num_blocks, 1, " (residual blocks per level)", maximum=MAX_REPEATS // len(mult))
    if isinstance(attn_resolutions, (str, bytes)) or not isinstance(attn_resolutions, Sequence):
        raise ValueError(f"attn_resolutions must be a list of resolutions (e.g. [16]), got {attn_resolutions!r}")
    attn = tuple(require_int("each attn_resolutions entry", r, 1) for r in attn_resolutions)
    return resolution, mult, blocks, attn, channels


def check_probability(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


class EDMNetwork(PretrainedMixin, ConfigMixin, nn.Module):
    """Base of :class:`~cmkit.models.song_unet.SongUNet` and :class:`~cmkit.models.edm2_unet.EDM2UNet`.

    Subclasses set ``label_dim``, ``augment_dim``, ``img_resolution``, ``image_channels``, the encoder's skip
    layout ``skip_levels`` (one ``(channels, level)`` per activation the decoder consumes) and ``target_embedding``
    (a module, or None without ``target_conditioning``), and implement :meth:`forward_edm`.
    """

    config_name = "config.json"
    label_dim: int = 0
    augment_dim: int = 0
    img_resolution: int = 0
    image_channels: int = 0
    skip_levels: tuple[tuple[int, int], ...] = ()
    downsample_factor: int = 1
    #: state-dict prefixes of the target-time embedding (``target_conditioning``), keys a teacher's weights lack
    target_embedding_prefixes: tuple[str, ...] = (TARGET_EMBEDDING_PREFIX,)

    @classmethod
    def _handle_unknown_config_keys(cls, unknown: list[str], config: Mapping[str, Any]) -> None:
        """Unknown keys mean a config for another network: refuse rather than build something different."""
        raise ValueError(
            f"config has keys {cls.__name__} does not take: {', '.join(unknown)}. It was probably written for another "
            f"model class; {cls.__name__} takes {', '.join(cls.config_keys())}"
        )

    def require_fits(self, config: Mapping[str, Any]) -> None:
        """Refuse a config whose parameters cannot fit in memory: count them on a meta-device copy first.

        Nothing is counted while already building on the meta device (``from_pretrained``, or this count itself).
        """
        if torch.get_default_device().type == "meta":
            return
        with torch.device("meta"):
            probe = type(self)(**config)
        shown = ", ".join(f"{k}={config[k]!r}" for k in ("model_channels", "channel_mult", "num_blocks") if k in config)
        require_parameters_fit(
            sum(p.numel() for p in probe.parameters()),
            f"a {type(self).__name__} with {shown}",
            "lower model_channels, channel_mult or num_blocks (config.json, or --model-option when training)",
        )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape of one sample, ``(channels, img_resolution, img_resolution)``."""
        return (self.image_channels, self.img_resolution, self.img_resolution)

    @property
    def num_class_embeds(self) -> Optional[int]:
        """The number of classes of a class-conditional network (``label_dim``), else None (the pipeline reads it)."""
        return self.label_dim or None

    def activation_floats(self, sample_shape: Sequence[int]) -> int:
        """Floats one ``(C, H, W)`` sample's forward pass holds at least: the encoder activations the decoder uses."""
        _, height, width = (int(s) for s in sample_shape)
        return sum(c * (height >> level) * (width >> level) for c, level in self.skip_levels)

    def num_parameters(self) -> int:
        """The number of parameters."""
        return sum(p.numel() for p in self.parameters())

    @property
    def accepts_target_timestep(self) -> bool:
        """Whether it takes TCD's target time ``s`` (``target_timestep``; built with ``target_conditioning``)."""
        return getattr(self, "target_embedding", None) is not None

    def forward(
        self,
        sample: Tensor,
        timestep: TimestepLike,
        class_labels: Optional[Tensor] = None,
        augment_labels: Optional[Tensor] = None,
        return_dict: bool = True,
        target_timestep: Optional[TimestepLike] = None,
    ) -> Union[UNet2DOutput, tuple[Tensor]]:
        """``F(sample, c_noise)`` for cmkit's ``timestep = 250 ln sigma``; the network sees ``c_noise = ln(sigma)/4``.

        ``class_labels``: ``[B]`` integer ids or a ``[B, label_dim]`` float matrix (required when ``label_dim > 0``;
        pass zero rows for the unconditional branch of a label-dropout model). ``augment_labels``: EDM's
        ``[B, augment_dim]`` augmentation vector, zeros (no augmentation) when left out. ``target_timestep``: TCD's
        target time ``s`` in ``timestep``'s units, required by (and only by) a ``target_conditioning`` network.
        """
        if sample.ndim != 4 or sample.shape[1] != self.image_channels:
            raise ValueError(
                f"sample must have shape [B, {self.image_channels}, H, W] for this {type(self).__name__}, got "
                f"{tuple(sample.shape)}"
            )
        f = self.downsample_factor
        if sample.shape[-2] % f or sample.shape[-1] % f:
            raise ValueError(
                f"sample height and width must be multiples of {f} (2 ** (len(channel_mult) - 1)) so the decoder "
                f"can match the encoder's skips; got {tuple(sample.shape[-2:])}"
            )
        batch, device = sample.shape[0], sample.device
        noise_labels = self._noise_labels(timestep, batch, device)
        check_target_timestep(type(self).__name__, self.accepts_target_timestep, target_timestep)
        target_labels = None if target_timestep is None else self._noise_labels(target_timestep, batch, device)
        labels = self._class_vectors(class_labels, batch, device)
        if augment_labels is not None:
            if not self.augment_dim:
                raise ValueError(f"augment_labels were given but this {type(self).__name__} has augment_dim=0")
            if tuple(augment_labels.shape) != (batch, self.augment_dim):
                raise ValueError(
                    f"augment_labels must have shape [{batch}, {self.augment_dim}], got {tuple(augment_labels.shape)}"
                )
            augment_labels = augment_labels.to(device=device, dtype=torch.float32)
        elif self.augment_dim:
            # zeros ("not augmented") rather than skipping the map: the same output, and the map's weights take part
            # in every step (DistributedDataParallel requires each parameter to get a gradient)
            augment_labels = torch.zeros(batch, self.augment_dim, device=device)
        out = self.forward_edm(sample, noise_labels, labels, augment_labels, target_labels)
        return UNet2DOutput(sample=out) if return_dict else (out,)

    @staticmethod
    def _noise_labels(timestep: TimestepLike, batch: int, device: torch.device) -> Tensor:
        """EDM's ``c_noise = ln(sigma) / 4`` of cmkit timesteps, ``[B]``, at least float32 (float64 stays float64,
        for exact derivatives in tests)."""
        timesteps = batch_timesteps(timestep, batch, device)
        return edm_noise_label(timesteps.to(torch.promote_types(timesteps.dtype, torch.float32)))

    def _class_vectors(self, class_labels: Optional[Tensor], batch: int, device: torch.device) -> Optional[Tensor]:
        if not self.label_dim:
            if class_labels is not None:
                raise ValueError(
                    f"class_labels were given but this {type(self).__name__} is unconditional (label_dim=0)"
                )
            return None
        if class_labels is None:
            raise ValueError(
                f"this {type(self).__name__} is class-conditional (label_dim={self.label_dim}): pass class_labels as "
                f"ids [B] or a [B, {self.label_dim}] matrix (zero rows for the unconditional branch)"
            )
        return class_label_matrix(class_labels, self.label_dim, batch, device)

    def forward_edm(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Optional[Tensor],
        augment_labels: Optional[Tensor],
        target_labels: Optional[Tensor] = None,
    ) -> Tensor:
        """The reference forward: ``x`` ``[B, C, H, W]``, EDM noise labels ``[B]`` (float32), class vectors
        ``[B, label_dim]`` or None, augmentation vectors ``[B, augment_dim]`` or None; and TCD's target labels
        ``[B]`` (``ln(sigma_s) / 4``) for a ``target_conditioning`` network, else None."""
        raise NotImplementedError

