"""The EDM denoiser loss (Karras et al. 2022, sec. 5 and eq. 2 / table 1), used to train diffusion teachers.

``ln sigma ~ N(P_mean, P_std^2)``, ``n ~ N(0, sigma^2 I)`` and
``L = E[lambda(sigma) ||D(x0 + n, sigma) - x0||^2]`` with ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``,
so the network's effective target has unit variance at every noise level. The squared error is averaged
over a sample's entries, then over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ...karras import add_noise
from ...fields import documented
from ...streams import StepRandom
from .base import BaseObjective, ObjectiveOutput
from .common import check_batch, per_sample


@dataclass
class EDMOptions:
    """Options of :class:`EDMObjective` (EDM table 1 defaults)."""

    p_mean: float = documented(-1.2, "mean of ln sigma")
    p_std: float = documented(1.2, "standard deviation of ln sigma")

    def __post_init__(self) -> None:
        if self.p_std <= 0:
            raise ValueError(f"p_std must be > 0, got {self.p_std}")


def edm_loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM's ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class EDMObjective(BaseObjective):
    """Denoising score matching with EDM's lognormal noise levels and loss weighting (the teacher's loss)."""

    def __init__(self, model: nn.Module, options: Optional[EDMOptions] = None, teacher: Optional[nn.Module] = None) -> None:
        if getattr(model, "parameterization", "edm") != "edm":
            raise ValueError(
                "the EDM loss trains an EDM denoiser: build the model as Denoiser(net, parameterization='edm')"
            )
        self.model = model
        self.options = options or EDMOptions()

    def __call__(self, x0: Tensor, class_labels: Optional[Tensor], step: int, rng: StepRandom) -> ObjectiveOutput:
        """The weighted denoising loss on ``x0``."""
        check_batch(x0, rng)
        o = self.options
        sigma = per_sample(torch.exp(o.p_mean + o.p_std * rng.randn()), x0)
        noise = rng.randn(*x0.shape[1:]).to(device=x0.device, dtype=x0.dtype)
        denoised = self.online(add_noise(x0, sigma, noise), sigma, class_labels)
        sigma_data = float(getattr(self.model, "sigma_data", 0.5))
        per_sample_loss = (denoised - x0).pow(2).flatten(1).mean(dim=1)
        loss = (edm_loss_weight(sigma, sigma_data) * per_sample_loss).mean()
        return ObjectiveOutput(loss, {"loss": float(loss.detach())})
