"""The contract between an objective and the training loop, and the one base holding its defaults.

An objective owns the networks it needs (the trainable ``model``, optionally a frozen ``teacher`` and a
``target`` network) and turns one batch into a loss. The loop owns everything else: optimizer, EMA for
evaluation, precision, distribution, checkpoints. :class:`BaseObjective` gives the no-op hooks of a stateless
method; :class:`TargetObjective` adds the target network ``theta^-`` (CM Algorithms 2 and 3), the only state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Protocol, runtime_checkable

from torch import Tensor, nn

from ...streams import StepRandom
from .common import ema_update_, follow_device_


@dataclass
class ObjectiveOutput:
    """One step's loss (a scalar to backpropagate) and detached diagnostics for logging."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    """What the loop calls. ``model`` is the trainable denoiser (a :class:`cmkit.models.denoiser.Denoiser`).

    The loss must be the mean over the batch's samples: the loop splits a batch into micro-batches (``--grad-accum``)
    and across processes, and averages. Optionally, ``set_online(module)`` (as in :class:`BaseObjective`) lets the
    loop route the pass with gradients through its ``DistributedDataParallel`` wrapper.
    """

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


class BaseObjective:
    """An objective without state: the hooks do nothing and there is nothing to checkpoint."""

    model: nn.Module
    _online: Optional[nn.Module] = None

    @property
    def online(self) -> nn.Module:
        """The module for the pass with gradients (``f_theta``): ``model``, or the wrapper from :meth:`set_online`.

        Under torchrun the loop sets its ``DistributedDataParallel`` wrapper of ``model`` here, so the backward pass
        averages gradients over processes while it runs. Call it once per loss; passes without gradients (targets,
        teachers, ``stopgrad``) call ``model``, which bypasses the wrapper and leaves DDP's reducer alone. So does
        ``torch.func.jvp`` on ``model`` (forward-mode AD, e.g. for continuous-time consistency models): the loop
        then falls back to averaging gradients after backward, correct but without overlap.
        """
        return self._online if self._online is not None else self.model

    def set_online(self, module: Optional[nn.Module]) -> None:
        """Route the pass with gradients through ``module``, a wrapper whose ``.module`` is ``model`` (None: none)."""
        if module is not None and getattr(module, "module", None) is not self.model:
            raise ValueError("set_online needs a wrapper of this objective's model (its .module must be the model)")
        self._online = module

    def after_optimizer_step(self, step: int) -> None:
        """Nothing to update."""

    def state_dict(self) -> dict[str, Any]:
        """No extra state (schedules are functions of the step)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """No extra state."""


class TargetObjective(BaseObjective):
    """An objective with a target network ``theta^-`` that follows the model by EMA with rate :meth:`target_ema`.

    ``target`` is None when the method uses the online network under stop-gradient instead (``mu = 0``).
    """

    #: the method's name in messages (``CT``, ``CD``).
    label: ClassVar[str] = "target"
    target: Optional[nn.Module]

    def target_ema(self, step: int) -> float:
        """The EMA rate ``mu`` at ``step``."""
        raise NotImplementedError

    def target_of(self, x: Tensor) -> nn.Module:
        """The network that makes the target on ``x``'s device, in the model's train / eval mode."""
        if self.target is None:
            return self.model
        follow_device_(self.target, x.device)
        self.target.train(self.model.training)
        return self.target

    def after_optimizer_step(self, step: int) -> None:
        """``theta^- <- mu theta^- + (1 - mu) theta`` (CM Algorithm 2 line 10, Algorithm 3 line 9)."""
        if self.target is not None:
            ema_update_(self.target, self.model, self.target_ema(step))

    def state_dict(self) -> dict[str, Any]:
        """The target network's weights (empty without one)."""
        return {"target": self.target.state_dict()} if self.target is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the target network."""
        if self.target is None:
            return
        if "target" not in state:
            raise ValueError(
                f"checkpoint lacks the {self.label} target network ('target'); was it saved by a {self.label} run?"
            )
        self.target.load_state_dict(state["target"])
