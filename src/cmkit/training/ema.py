"""Exponential moving averages of the trained weights, for evaluation and export (one per rate).

At step ``k`` each average is updated as ``ema <- d ema + (1 - d) theta`` with ``d = rate``, or with warm-up
``d = min(rate, (1 + k) / (10 + k))`` so early averages are not dominated by the random initialisation
(the warm-up used by many diffusion codebases; CM and iCT evaluate EMA weights, e.g. rates 0.999 / 0.9999 /
0.9999432 in OpenAI's CD runs).

:class:`WeightAverages` holds the averages and their bookkeeping; :class:`EMA` (a fixed decay per rate) and
:class:`~cmkit.training.power_ema.PowerEMA` (EDM2's power-function decay per sigma_rel) only say which decay
applies at a step and how an average is named in checkpoints.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn


def ema_decay(rate: float, step: int, warmup: bool) -> float:
    """The decay applied after optimizer step ``step`` (0-based)."""
    return min(rate, (1.0 + step) / (10.0 + step)) if warmup else rate


def ema_key(rate: float) -> str:
    """A stable name for the average of ``rate`` (used in checkpoint file names), e.g. ``ema_0.999``."""
    return f"ema_{rate:.10g}"


class WeightAverages:
    """Averages of ``model``'s floating-point parameters and buffers, one per setting, kept in float32.

    A subclass names its settings (``what``, e.g. "rate"), gives the decay of a setting after a step
    (:meth:`decay`) and the checkpoint name of its average (:meth:`key`).
    """

    what = "setting"

    def __init__(self, model: nn.Module, settings: Sequence[float]) -> None:
        self.settings = tuple(float(s) for s in settings)
        if len(set(self.settings)) != len(self.settings):
            raise ValueError(f"EMA {self.what}s must be distinct, got {list(self.settings)}")
        self.averages: dict[float, dict[str, Tensor]] = {
            s: {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
            for s in self.settings
        }

    def decay(self, setting: float, step: int) -> float:
        """The decay of the average of ``setting`` after optimizer step ``step`` (0-based)."""
        raise NotImplementedError

    def key(self, setting: float) -> str:
        """The checkpoint name of the average of ``setting``."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move every average toward ``model``'s current weights after optimizer step ``step``."""
        current = {k: v.detach().float() for k, v in model.state_dict().items() if v.is_floating_point()}
        for setting, avg in self.averages.items():
            d = self.decay(setting, step)
            for k, v in avg.items():
                v.mul_(d).add_(current[k], alpha=1.0 - d)

    def copy_model(self, model: nn.Module, setting: float) -> nn.Module:
        """A deep copy of ``model`` holding the average of ``setting`` (in ``model``'s dtypes), in eval mode."""
        if setting not in self.averages:
            raise ValueError(f"no EMA with {self.what} {setting}; have {list(self.settings)}")
        out = copy.deepcopy(model).eval()
        state = out.state_dict()
        for k, v in self.averages[setting].items():
            state[k].copy_(v)
        return out

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """``{key(setting): {name: tensor}}`` for checkpoints."""
        return {self.key(s): dict(avg) for s, avg in self.averages.items()}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        """Restore :meth:`state_dict` (other entries of ``state`` are ignored); names and tensors must match."""
        for setting, avg in self.averages.items():
            saved = state.get(self.key(setting))
            if saved is None:
                raise ValueError(f"checkpoint has no EMA for {self.what} {setting} (has {sorted(state)})")
            if set(saved) != set(avg):
                raise ValueError(f"EMA {self.what} {setting}: checkpoint tensors do not match the model's")
            for k, v in avg.items():
                v.copy_(saved[k])


class EMA(WeightAverages):
    """Averages with a fixed decay ``rate`` each (optionally warmed up, :func:`ema_decay`)."""

    what = "rate"

    def __init__(self, model: nn.Module, rates: Sequence[float], warmup: bool = True) -> None:
        super().__init__(model, rates)
        self.rates = self.settings
        self.warmup = bool(warmup)

    def decay(self, setting: float, step: int) -> float:
        return ema_decay(setting, step, self.warmup)

    def key(self, setting: float) -> str:
        return ema_key(setting)
