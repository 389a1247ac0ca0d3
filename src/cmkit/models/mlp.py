"""A small residual MLP network for vector data (2-D toys, flattened 8x8 digits), UNet-compatible in its call.

``net(x, timestep, class_labels=None, return_dict=False)`` has the UNet2DModel signature, so
:class:`cmkit.models.denoiser.Denoiser` wraps it exactly like the UNet: the net sees ``c_in(sigma) x`` and
``timestep = c_noise(sigma) = 250 ln(sigma)``. Inside, ``timestep / 250 = ln(sigma)`` is embedded with
sinusoids of geometrically spaced frequencies (Transformer / DDPM style positional features), passed
through a two-layer MLP, optionally summed with a class embedding, and added into every residual block:

    h <- h + W2 dropout(SiLU(W1 SiLU(LayerNorm(h)) + E_b(emb)))

Samples of any shape are flattened (``sample_shape``, e.g. ``(2,)`` or ``(1, 8, 8)``) and reshaped back.
With the defaults (width 128, 3 blocks, 64 embedding features) the net has 175,106 parameters.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import require_int
from ..config import ConfigMixin, register_to_config
from ..limits import MAX_REPEATS, require_parameters_fit
from .modeling import PretrainedMixin

#: divides the network's timestep input (``250 ln sigma``) back to ``ln sigma``.
TIMESTEP_PER_LOG_SIGMA = 250.0


def sinusoidal_embedding(log_sigma: Tensor, dim: int, min_freq: float, max_freq: float) -> Tensor:
    """``[cos(w_j s), sin(w_j s)]`` of ``s = log_sigma`` for ``dim/2`` frequencies ``w_j`` spaced geometrically."""
    half = dim // 2
    dtype = torch.promote_types(log_sigma.dtype, torch.float32)  # at least float32; float64 stays float64
    freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), half, device=log_sigma.device, dtype=dtype))
    args = log_sigma.to(dtype)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def mlp_parameter_count(
    features: int, width: int, num_blocks: int, embedding_dim: int, num_classes: int = 0, target_conditioning: bool = False
) -> int:
    """The exact parameter count of :class:`MLPNet` (``features`` = the product of ``sample_shape``), from its sizes.

    Time MLP ``E W + W + W^2 + W``; class table ``n W``; input and output layers ``F W + W`` and ``W F + F``;
    the final LayerNorm ``2 W``; each residual block ``3 (W^2 + W) + 2 W`` (LayerNorm, fc1, emb, fc2); a target
    embedding (``target_conditioning``) is a second time MLP.
    """
    w = width
    time_mlp = embedding_dim * w + w + w * w + w
    block = 3 * (w * w + w) + 2 * w
    return (2 if target_conditioning else 1) * time_mlp + num_classes * w + (features * w + w) + num_blocks * block + 2 * w + (w * features + features)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        y = self.fc1(F.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.dropout(F.silu(y)))


class MLPNet(PretrainedMixin, ConfigMixin, nn.Module):
    """Residual MLP ``F(c_in x, c_noise)`` for flat data; see the module docstring for the architecture."""

    config_name = "config.json"
    saved_class_name = "MLPNet"
    load_in_eval_mode = False  # its from_pretrained has always returned it in train mode
    #: state-dict prefixes of the target-time embedding (``target_conditioning``), keys a teacher's weights lack
    target_embedding_prefixes: tuple[str, ...] = ("target_mlp.",)

    @register_to_config
    def __init__(
        self,
        sample_shape: Sequence[int] = (2,),
        width: int = 128,
        num_blocks: int = 3,
        embedding_dim: int = 64,
        num_class_embeds: Optional[int] = None,
        dropout: float = 0.0,
        min_frequency: float = 0.1,
        max_frequency: float = 30.0,
        target_conditioning: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(sample_shape, (str, bytes)) or not hasattr(sample_shape, "__len__") or not len(sample_shape):
            raise ValueError(f"sample_shape must be a non-empty tuple of positive sizes, got {sample_shape!r}")
        shape = tuple(require_int("each sample_shape entry", s, 1) for s in sample_shape)
        width = require_int("width", width, 1)
        num_blocks = require_int("num_blocks", num_blocks, 0, " (residual blocks)", maximum=MAX_REPEATS)
        embedding_dim = require_int("embedding_dim", embedding_dim, 2)
        if embedding_dim % 2:
            raise ValueError(f"embedding_dim must be an even number >= 2, got {embedding_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if not 0.0 < min_frequency <= max_frequency:
            raise ValueError(f"need 0 < min_frequency <= max_frequency, got {min_frequency}, {max_frequency}")
        if num_class_embeds is not None:
            num_class_embeds = require_int("num_class_embeds", num_class_embeds, 1, " (or None)")
        self._sample_shape = shape
        features = math.prod(shape)
        count = mlp_parameter_count(features, width, num_blocks, embedding_dim, num_class_embeds or 0, bool(target_conditioning))
        require_parameters_fit(
            count,
            f"an MLPNet with sample_shape={shape}, width={width}, num_blocks={num_blocks}, "
            f"embedding_dim={embedding_dim}, num_class_embeds={num_class_embeds}",
            "lower width or num_blocks (config.json, or --model-option when training)",
        )
        self.embedding_dim = embedding_dim
        self.min_frequency = float(min_frequency)
        self.max_frequency = float(max_frequency)
        self.time_mlp = nn.Sequential(nn.Linear(embedding_dim, width), nn.SiLU(), nn.Linear(width, width))
        #: TCD's target time s (the time f(x_t, t, s) maps to): a second time embedding added to t's, its last
        #: layer zero-initialised so a student built from a teacher starts as exactly the teacher
        self.target_mlp = None
        if target_conditioning:
            self.target_mlp = nn.Sequential(nn.Linear(embedding_dim, width), nn.SiLU(), nn.Linear(width, width))
            nn.init.zeros_(self.target_mlp[2].weight)
            nn.init.zeros_(self.target_mlp[2].bias)
        self.class_embedding = nn.Embedding(num_class_embeds, width) if num_class_embeds else None
        self.input = nn.Linear(features, width)
        self.blocks = nn.ModuleList(_ResidualBlock(width, dropout) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, features)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch dimension (e.g. ``(2,)``)."""
        return self._sample_shape

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | float,
        class_labels: Optional[Tensor] = None,
        return_dict: bool = False,
        target_timestep: Tensor | float | None = None,
    ) -> tuple[Tensor] | dict[str, Tensor]:
        """``F(sample, timestep)`` with the UNet2DModel call signature; ``timestep`` is ``250 ln sigma``.

        A ``target_conditioning`` net also takes ``target_timestep``, TCD's target time ``s`` in the same units.
        """
        batch = sample.shape[0]
        if tuple(sample.shape[1:]) != self._sample_shape:
            raise ValueError(
                f"MLPNet expects samples of shape [B, {', '.join(map(str, self._sample_shape))}], got "
                f"{tuple(sample.shape)}; build it with sample_shape={tuple(sample.shape[1:])}"
            )
        emb = self.time_mlp(self._time_features(timestep, sample))
        if self.target_mlp is not None:
            if target_timestep is None:
                raise ValueError(
                    "this MLPNet is target-conditioned (target_conditioning=True, a TCD model): pass target_timestep, "
                    "the time s it maps to (sample it with a TCD pipeline, cmkit.ConsistencyModelPipeline)"
                )
            emb = emb + self.target_mlp(self._time_features(target_timestep, sample))
        elif target_timestep is not None:
            raise ValueError("target_timestep was given but this MLPNet has no target embedding (target_conditioning=False)")
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this MLPNet is class-conditional (num_class_embeds set): pass class_labels")
            emb = emb + self.class_embedding(class_labels.to(sample.device).long())
        elif class_labels is not None:
            raise ValueError("class_labels were given but this MLPNet has no class embedding (num_class_embeds=None)")
        emb = emb.to(self.dtype)
        h = self.input(sample.reshape(batch, -1).to(self.dtype))
        for block in self.blocks:
            h = block(h, emb)
        out = self.output(F.silu(self.out_norm(h))).reshape(sample.shape)
        return {"sample": out} if return_dict else (out,)

    def _time_features(self, timestep: Tensor | float, sample: Tensor) -> Tensor:
        """The sinusoidal features of ``timestep / 250 = ln sigma``, computed in (at least) float32 (the phase of large
        timesteps needs it), then cast to the weights' dtype so a bf16 / fp16 network runs end to end in that dtype."""
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.to(torch.promote_types(t.dtype, torch.float32))  # float64 kept (exact derivatives in tests)
        if t.ndim == 0:
            t = t.expand(sample.shape[0])
        features = sinusoidal_embedding(t / TIMESTEP_PER_LOG_SIGMA, self.embedding_dim, self.min_frequency, self.max_frequency)
        return features.to(self.dtype)

    @property
    def accepts_target_timestep(self) -> bool:
        """Whether the net takes TCD's target time ``s`` (``target_timestep``)."""
        return self.target_mlp is not None

    def activation_floats(self, sample_shape: Sequence[int]) -> int:
        """Floats one sample's forward pass holds at least (input, output, hidden state, embedding, block temporaries)."""
        return 2 * math.prod(sample_shape) + 4 * self.input.out_features

    def num_parameters(self) -> int:
        """The number of parameters."""
        return sum(p.numel() for p in self.parameters())
