"""Exponential moving averages of the trained weights, for evaluation and export (one per rate).

At step ``k`` each average is updated as ``ema <- d ema + (1 - d) theta`` with ``d = rate``, or with warm-up
``d = min(rate, (1 + k) / (10 + k))`` so early averages are not dominated by the random initialisation
(the warm-up used by many diffusion codebases; CM and iCT evaluate EMA weights, e.g. rates 0.999 / 0.9999 /
0.9999432 in OpenAI's CD runs).
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


class EMA:
    """Averages of ``model``'s floating-point parameters and buffers, one per rate, kept in float32."""

    def __init__(self, model: nn.Module, rates: Sequence[float], warmup: bool = True) -> None:
        self.rates = tuple(float(r) for r in rates)
        if len(set(self.rates)) != len(self.rates):
            raise ValueError(f"EMA rates must be distinct, got {list(self.rates)}")
        self.warmup = bool(warmup)
        self.averages: dict[float, dict[str, Tensor]] = {
            r: {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
            for r in self.rates
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move every average toward ``model``'s current weights after optimizer step ``step``."""
        current = {k: v.detach().float() for k, v in model.state_dict().items() if v.is_floating_point()}
        for rate, avg in self.averages.items():
            d = ema_decay(rate, step, self.warmup)
            for k, v in avg.items():
                v.mul_(d).add_(current[k], alpha=1.0 - d)

    def copy_model(self, model: nn.Module, rate: float) -> nn.Module:
        """A deep copy of ``model`` holding the average of ``rate`` (in ``model``'s dtypes), in eval mode."""
        if rate not in self.averages:
            raise ValueError(f"no EMA with rate {rate}; have {list(self.rates)}")
        out = copy.deepcopy(model).eval()
        state = out.state_dict()
        for k, v in self.averages[rate].items():
            state[k].copy_(v)
        return out

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """``{ema_key(rate): {name: tensor}}`` for checkpoints."""
        return {ema_key(r): dict(avg) for r, avg in self.averages.items()}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        """Restore :meth:`state_dict`; the rates and tensor names must match."""
        for rate, avg in self.averages.items():
            saved = state.get(ema_key(rate))
            if saved is None:
                raise ValueError(f"checkpoint has no EMA for rate {rate} (has {sorted(state)})")
            if set(saved) != set(avg):
                raise ValueError(f"EMA {rate}: checkpoint tensors do not match the model's")
            for k, v in avg.items():
                v.copy_(saved[k])
