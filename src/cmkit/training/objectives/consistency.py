"""The consistency loss shared by CD, CT, iCT and ECT (Song et al. 2023, Algorithms 2 and 3; Song & Dhariwal
2023; Geng et al. 2024).

Two points of one trajectory share the noise ``z``: ``L = lambda d(f_theta(x0 + sigma_hi z, sigma_hi),
sg f_theta^-(x0 + sigma_lo z, sigma_lo))`` averaged over the batch. The methods differ only in how they draw
``sigma_hi > sigma_lo``, in ``lambda`` and in the target network ``theta^-`` (an EMA copy for CT, the online
network for iCT and ECT); CD moves the target's input by one teacher ODE step from ``x0 + sigma_hi z`` instead.
Every method gives both passes one dropout mask, a function of ``(seed, step)`` (iCT appendix B; OpenAI's
``consistency_losses`` restores the RNG state between the two passes for CD and CT alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ...fields import documented
from ...karras import RHO, SIGMA_MAX, SIGMA_MIN, add_noise, append_dims
from ..losses import LossName
from .common import seeded_dropout


@dataclass
class CurriculumOptions:
    """Options shared by CT and iCT: the run length K of the ``N(k)`` curriculum, the distance and the grid."""

    total_steps: int = documented(help="K of the N(k) curriculum (the run's --steps)")
    loss: LossName = documented("l2", "distance d: l2, pseudo_huber or lpips")
    huber_c: Optional[float] = documented(None, "pseudo-Huber c (None: 0.00054 sqrt(d))")
    lpips_weights: Optional[str] = documented(None, "LPIPS weights file for loss=lpips")
    lpips_resize: int = documented(224, "side images are resized to for loss=lpips (224: OpenAI's CD)")
    sigma_min: float = documented(SIGMA_MIN, "smallest sigma of the grid")
    sigma_max: float = documented(SIGMA_MAX, "largest sigma of the grid")
    rho: float = documented(RHO, "Karras grid exponent")

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 (the run's length K), got {self.total_steps}")


def consistency_loss(
    model: nn.Module,
    target_net: nn.Module,
    x0: Tensor,
    z: Tensor,
    sigma_hi: Tensor,
    sigma_lo: Tensor,
    class_labels: Optional[Tensor],
    distance: Callable[[Tensor, Tensor], Tensor],
    *,
    dropout_seed: int,
    weight: Optional[Tensor] = None,
    boundary: Optional[Tensor] = None,
    target_input: Optional[Tensor] = None,
) -> Tensor:
    """``mean(lambda d(f_theta(x_hi, sigma_hi), sg f^-(x_lo, sigma_lo)))`` with ``x = x0 + sigma z``.

    Both passes run with the global RNG seeded to ``dropout_seed`` (``StepRandom.dropout_seed()``), so they
    draw one dropout mask and the loss is zero when ``theta^- = theta`` and the inputs agree. ``weight`` is
    ``lambda`` per sample (None: 1); where ``boundary`` is true the target is ``x0`` itself
    (``f(x, sigma_min) = x``, ECT); ``target_input`` replaces ``x_lo`` (CD: the teacher's ODE step from ``x_hi``).
    ``model`` is the objective's ``online`` (under torchrun a ``DistributedDataParallel`` wrapper, called once, with
    gradients); ``target_net`` runs under ``no_grad``, where DDP's reducer does not see it.
    """
    x_lo = add_noise(x0, sigma_lo, z) if target_input is None else target_input
    with seeded_dropout(dropout_seed, x0.device), torch.no_grad():
        target = target_net(x_lo, sigma_lo, class_labels)
    if boundary is not None:
        target = torch.where(append_dims(boundary, x0.ndim), x0, target)
    with seeded_dropout(dropout_seed, x0.device):
        pred = model(add_noise(x0, sigma_hi, z), sigma_hi, class_labels)
    per_sample = distance(pred, target.detach())
    return (per_sample if weight is None else weight * per_sample).mean()
