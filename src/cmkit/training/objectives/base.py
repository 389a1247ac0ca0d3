"""The contract between an objective and the training loop.

An objective owns the networks it needs (the trainable ``model``, optionally a frozen ``teacher`` and a
``target`` network) and turns one batch into a loss. The loop owns everything else: optimizer, EMA for
evaluation, precision, distribution, checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, runtime_checkable

from torch import Tensor, nn

from ...streams import StepRandom


@dataclass
class ObjectiveOutput:
    """One step's loss (a scalar to backpropagate) and detached diagnostics for logging."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    """What the loop calls. ``model`` is the trainable denoiser (a :class:`cmkit.models.denoiser.Denoiser`)."""

    model: nn.Module

    def __call__(self, x0: Tensor, class_labels: Optional[Tensor], step: int, rng: StepRandom) -> ObjectiveOutput:
        """The loss on a (local) batch of clean data ``x0`` at training step ``step``."""
        ...

    def after_optimizer_step(self, step: int) -> None:
        """Update non-trainable state (e.g. the target EMA with rate mu(k)) after the optimizer step."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Extra state to checkpoint (target network weights, ...); the model's own weights excluded."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...
