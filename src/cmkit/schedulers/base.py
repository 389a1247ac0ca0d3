"""Pieces every cmkit scheduler shares: step outputs, loading/saving, and step-index bookkeeping.

The behaviour follows diffusers' scheduler protocol so a cmkit scheduler drops into a diffusers-style loop::

    scheduler.set_timesteps(num_inference_steps)
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(model(x_in, t), t, x, generator=g).prev_sample
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, Iterator, TypeVar

import torch
from torch import Tensor

from ..config import ConfigMixin
from ..io.hub import resolve_pretrained
from .._validate import require_int

S = TypeVar("S", bound="SchedulerMixin")


@dataclasses.dataclass
class SchedulerOutput:
    """Result of ``step``: attribute access, ``out[0]`` / ``out["prev_sample"]`` and ``to_tuple()`` like diffusers."""

    prev_sample: Tensor

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields that are set, in declaration order."""
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

    def keys(self) -> list[str]:
        """Names of the fields that are set."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


class SchedulerMixin(ConfigMixin):
    """``from_pretrained`` / ``save_pretrained`` and the step-index protocol shared by the schedulers."""

    config_name: ClassVar[str] = "scheduler_config.json"
    #: diffusers steps each timestep once (first-order schedulers).
    order: ClassVar[int] = 1

    timesteps: Tensor
    _step_index: int | None
    _begin_index: int | None

    @classmethod
    def from_pretrained(
        cls: type[S], pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **overrides: Any
    ) -> S:
        """Load from a directory (or hub id) holding ``scheduler_config.json``; ``overrides`` replace saved values."""
        pattern = f"{subfolder}/{cls.config_name}" if subfolder else cls.config_name
        directory = resolve_pretrained(pretrained_model_name_or_path, allow_patterns=[pattern])
        if subfolder is None and not (directory / cls.config_name).is_file() and (directory / "scheduler").is_dir():
            subfolder = "scheduler"  # a whole pipeline directory was given
        return cls.from_config(cls.load_config(directory, subfolder=subfolder), **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``scheduler_config.json`` (readable by diffusers) into ``save_directory``; return its path."""
        if Path(save_directory).is_file():
            raise NotADirectoryError(f"{save_directory} is a file; save_pretrained needs a directory")
        return self.save_config(save_directory)

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next ``step``; ``None`` until the first step (or scale) call."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Index of the first timestep, set by a pipeline through :meth:`set_begin_index` (e.g. for img2img)."""
        return self._begin_index

    @staticmethod
    def _check_one_schedule(num_inference_steps: int | None, timesteps: Any) -> None:
        if (num_inference_steps is None) == (timesteps is None):
            got = "neither" if timesteps is None else "both; use num_inference_steps=None with custom timesteps"
            raise ValueError(f"pass exactly one of `num_inference_steps` or `timesteps` to set_timesteps (got {got})")

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at ``timesteps[begin_index]`` instead of looking the first timestep up."""
        self._begin_index = require_int("begin_index", begin_index, 0, " (a non-negative integer)")

    def index_for_timestep(self, timestep: float | Tensor, schedule_timesteps: Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule (the second match if it occurs twice, as diffusers does).

        A float tensor of lower precision than the schedule matches a schedule value that rounds to it, so
        ``t.float()`` of a float64 timestep is still found.
        """
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        if isinstance(timestep, Tensor):
            t = timestep.to(schedule.device)
        else:  # a Python float is a float64 value; compare it as one
            dtype = torch.float64 if isinstance(timestep, float) else None
            t = torch.tensor(timestep, dtype=dtype, device=schedule.device)
        matches = (schedule == t).nonzero()
        if len(matches) == 0 and t.is_floating_point() and schedule.is_floating_point() and t.dtype != schedule.dtype:
            matches = (schedule.to(t.dtype) == t).nonzero()
        if len(matches) == 0:
            raise ValueError(
                f"timestep {t.item()} is not in this scheduler's timesteps {schedule.tolist()}; pass one of "
                "`scheduler.timesteps` (after set_timesteps) as the timestep"
            )
        return int(matches[1 if len(matches) > 1 else 0].item())

    def _init_step_index(self, timestep: float | Tensor) -> None:
        """Set the step index from ``begin_index`` or by looking ``timestep`` up."""
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _current_step_index(self, timestep: float | Tensor) -> int:
        """The index of the step about to run (initialising it on the first call); error past the schedule's end."""
        if self._step_index is None:
            self._init_step_index(timestep)
        assert self._step_index is not None
        if self._step_index >= len(self.timesteps):
            raise ValueError(
                f"all {len(self.timesteps)} timesteps have been stepped through; call set_timesteps again to "
                "sample anew"
            )
        return self._step_index

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)
