"""TCD's target time ``s`` as a network input, shared by the UNets (Zheng et al. 2024, "Trajectory Consistency
Distillation", sec. 4: the trajectory consistency function ``f(x_t, t, s)``).

A UNet built with ``target_conditioning=True`` embeds ``target_timestep`` (cmkit's ``250 ln sigma_s``, the units of
``timestep``) with the same sinusoidal / Fourier projection as its noise input, maps it with a small embedding
network of its own (the module ``target_embedding``) and adds the result to the noise embedding. The embedding's
last layer (EDM2: its gain) starts at zero, so the added term is exactly zero and a student that loads its
teacher's weights starts as exactly the teacher; training then teaches it where it maps to.

Every network that has such an embedding lists the state-dict prefixes of its parameters in
``target_embedding_prefixes``: the keys a teacher's weights lack
(:func:`cmkit.training.objectives.common.copy_teacher_weights_`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .edm_layers import Init, Linear
from .mp_layers import MPConv

#: the state-dict prefix of every UNet's target-time embedding (``target_embedding_prefixes``)
TARGET_EMBEDDING_PREFIX = "target_embedding."


def check_target_timestep(network: str, conditioned: bool, target_timestep: Optional[object]) -> None:
    """Refuse a missing target time on a target-conditioned network, and one given to a network without the option."""
    if conditioned and target_timestep is None:
        raise ValueError(
            f"this {network} is target-conditioned (target_conditioning=True, a TCD model): pass target_timestep, the "
            "time s it maps to in timestep units (250 ln sigma_s); sample it with cmkit.ConsistencyModelPipeline and "
            "a TCDScheduler"
        )
    if not conditioned and target_timestep is not None:
        raise ValueError(
            f"target_timestep was given but this {network} has no target embedding; build it with "
            "target_conditioning=True (cmkit train --method tcd does so by default) or leave target_timestep out"
        )


class EDMTargetEmbedding(nn.Module):
    """``layer1(SiLU(layer0(e)))``, ``layer1`` zero at first: the EDM UNets' ``map_layer0`` / ``map_layer1`` for s."""

    def __init__(self, in_features: int, out_features: int, init: Init) -> None:
        super().__init__()
        self.layer0 = Linear(in_features, out_features, init=init)
        self.layer1 = Linear(out_features, out_features, init=Init(init.mode, weight_gain=0.0, bias_gain=0.0))

    def forward(self, features: Tensor) -> Tensor:
        """``[B, in_features]`` projected target times -> ``[B, out_features]``, added to the noise embedding."""
        return self.layer1(F.silu(self.layer0(features)))


class MPTargetEmbedding(nn.Module):
    """EDM2's noise map for ``s``: a magnitude-preserving linear layer scaled by a learned ``gain`` that starts at zero.

    A zero *weight* would not do: ``MPConv`` normalises its weight on every use (EDM2 eq. 47, 66), so only a gain,
    as EDM2's blocks use for their embeddings (``emb_gain``), can switch the term off exactly at initialisation.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = MPConv(in_features, out_features, kernel=[])
        self.gain = nn.Parameter(torch.zeros([]))

    def forward(self, features: Tensor) -> Tensor:
        """``[B, in_features]`` Fourier features of the target label -> ``[B, out_features]``."""
        return self.linear(features, gain=self.gain)

