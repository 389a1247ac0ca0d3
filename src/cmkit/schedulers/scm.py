"""``SCMScheduler``: multistep sampling of continuous-time consistency models in TrigFlow time (Lu & Song 2024,
sCM), behind diffusers' scheduler interface, as a thin adapter over :mod:`cmkit.trigflow`.

The schedule holds TrigFlow times in radians, ``num_inference_steps + 1`` of them, from ``t_max`` (about pi/2,
pure noise) down to 0. ``step(model_output, t_i, x)`` takes ``model_output = sigma_d F`` (the velocity estimate),
forms the clean estimate ``x0 = cos(t_i) x - sin(t_i) model_output`` (sCM eq. 8) and re-noises it to the next
time, ``cos(t_{i+1}) x0 + sin(t_{i+1}) sigma_d z`` (:func:`cmkit.trigflow.trigflow_renoise`); at ``t = 0`` that is
``x0`` exactly. The network's input is ``x / sigma_d`` (:meth:`SCMScheduler.scale_model_input`) at
``timestep = trigflow_timestep(t) = 1000 t`` (:func:`cmkit.trigflow.trigflow_timestep`).

Timesteps, clean estimates and noise draws equal diffusers 0.42's bit for bit (one float32 noise tensor per step,
the last one included). Deliberate differences:

* ``init_noise_sigma`` is ``sigma_data`` (the std of ``x_{pi/2}``), so a generic loop that multiplies N(0, I) by it
  starts right; diffusers stores 1.0 and its SANA-Sprint pipeline multiplies by ``sigma_data`` itself;
* ``max_timesteps`` and ``intermediate_timesteps`` default to ``None``, meaning diffusers' values where they apply
  (1.5708 without custom ``timesteps``; 1.3 for two steps), so ``set_timesteps(1)``, ``set_timesteps(4)`` and
  custom ``timesteps`` work without passing ``None`` explicitly; explicit values behave as in diffusers;
* bad schedules (times outside ``[0, 1.5708]``, not strictly descending, not finite) raise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from .._validate import check_choice, require_int, require_positive
from ..config import register_to_config
from ..rng import GeneratorArg, randn
from ..trigflow import TIME_INPUTS, trigflow_renoise, x0_from_velocity
from .base import SchedulerMixin, SchedulerOutput

#: diffusers' default first time (slightly above pi/2 = 1.5707963 after float32 rounding; harmless).
DEFAULT_MAX_T = 1.57080
#: diffusers' default intermediate time for two steps (the sCM paper uses 1.1; see ConsistencyModelPipeline).
DEFAULT_INTERMEDIATE_T = 1.3
#: the largest time a schedule may hold.
MAX_T = DEFAULT_MAX_T


@dataclasses.dataclass
class SCMSchedulerOutput(SchedulerOutput):
    """Output of :meth:`SCMScheduler.step`: ``prev_sample`` (the next input) and ``pred_original_sample`` (x0)."""

    pred_original_sample: Optional[Tensor] = None


def _check_times(times: list[float], what: str) -> None:
    if not all(math.isfinite(t) and 0.0 <= t <= MAX_T for t in times):
        raise ValueError(f"{what} {times} must be finite TrigFlow times in [0, {MAX_T}] (radians; pi/2 is pure noise)")
    if any(b >= a for a, b in zip(times, times[1:])):
        raise ValueError(f"{what} {times} must be strictly descending, e.g. [1.5708, 1.1, 0.0]")


class SCMScheduler(SchedulerMixin):
    """sCM multistep sampling in TrigFlow time, config- and numerics-compatible with diffusers' ``SCMScheduler``."""

    saved_class_name = "SCMScheduler"
    order = 1

    @register_to_config
    def __init__(
        self, num_train_timesteps: int = 1000, prediction_type: str = "trigflow", sigma_data: float = 0.5,
        time_input: str = "trigflow",
    ) -> None:
        require_int("num_train_timesteps", num_train_timesteps, 1, " (the most inference steps allowed)")
        #: the network's time input (cmkit's, not diffusers'): "trigflow" (1000 t) or "edm" (an EDM-initialised sCD
        #: student), :func:`cmkit.trigflow.trigflow_network_input`; saved with the config so sampling matches training
        check_choice("time_input", time_input, TIME_INPUTS)
        check_choice("prediction_type", prediction_type, ("trigflow",))
        require_positive("sigma_data", sigma_data)
        #: standard deviation of the initial noise ``x_{pi/2} = sigma_d z`` (diffusers stores 1.0; see the module doc).
        self.init_noise_sigma = float(sigma_data)
        self.num_inference_steps: int | None = None
        self.timesteps: Tensor = torch.arange(int(num_train_timesteps) - 1, -1, -1, dtype=torch.int64)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def set_timesteps(
        self,
        num_inference_steps: int,
        timesteps: Sequence[float] | Tensor | None = None,
        device: str | torch.device | None = None,
        max_timesteps: float | None = None,
        intermediate_timesteps: float | None = None,
    ) -> None:
        """Choose ``num_inference_steps + 1`` TrigFlow times: custom ``timesteps``, ``[max, intermediate, 0]`` for two
        steps, else ``linspace(max_timesteps, 0, num_inference_steps + 1)`` (diffusers' rules)."""
        n_train = int(self.config.num_train_timesteps)
        n = require_int("num_inference_steps", num_inference_steps, 1, f" (in [1, {n_train}])", maximum=n_train)
        if timesteps is not None:
            if max_timesteps is not None:
                raise ValueError("pass either custom `timesteps` or `max_timesteps`, not both")
            if isinstance(timesteps, Tensor):
                values = timesteps.detach().to("cpu", torch.float32)
            elif isinstance(timesteps, (list, tuple)):
                values = torch.tensor(list(timesteps)).float()
            else:
                raise ValueError(f"timesteps must be a list or a tensor of TrigFlow times, got {type(timesteps).__name__}")
            if values.ndim != 1 or len(values) != n + 1:
                raise ValueError(
                    f"custom timesteps must hold num_inference_steps + 1 = {n + 1} times (ending at 0 for a clean "
                    f"sample), got {values.tolist()}"
                )
            if intermediate_timesteps is not None:
                raise ValueError("intermediate_timesteps cannot be combined with custom timesteps")
            _check_times(values.tolist(), "timesteps")
            schedule = values
        else:
            t_max = DEFAULT_MAX_T if max_timesteps is None else float(max_timesteps)
            if intermediate_timesteps is not None and n != 2:
                raise ValueError(
                    f"intermediate_timesteps applies to 2 steps only, got num_inference_steps={n}; drop it or pass "
                    "custom timesteps"
                )
            if n == 2:
                mid = DEFAULT_INTERMEDIATE_T if intermediate_timesteps is None else float(intermediate_timesteps)
                _check_times([t_max, mid, 0.0], "the times [max_timesteps, intermediate_timesteps, 0]")
                schedule = torch.tensor([t_max, mid, 0.0]).float()
            else:
                _check_times([t_max, 0.0], "the times [max_timesteps, 0]")
                schedule = torch.linspace(t_max, 0, n + 1).float()
        self.num_inference_steps = n
        self.timesteps = schedule.to(device)
        self._step_index = None
        self._begin_index = None

    def _as_schedule_time(self, timestep: float | Tensor) -> float | Tensor:
        """A per-sample timestep tensor (all equal, as pipelines pass it) reduced to one value."""
        if isinstance(timestep, Tensor) and timestep.ndim > 0:
            return timestep.reshape(-1)[0]
        return timestep

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """The network input ``x_t / sigma_d`` (sCM eq. 8); ``timestep`` is unused (kept for the common loop)."""
        del timestep
        return sample / self.config.sigma_data

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: GeneratorArg = None,
        return_dict: bool = True,
    ) -> SCMSchedulerOutput | tuple[Tensor, Tensor]:
        """One sCM step: ``x0 = cos(s) x - sin(s) model_output``, then ``cos(t) x0 + sin(t) sigma_d z``.

        ``model_output`` is ``sigma_d F`` (the network's output times ``sigma_data``); ``timestep`` is the current
        entry ``s`` of ``timesteps``. Returns ``(prev_sample, pred_original_sample)`` as a tuple or an output.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step")
        i = self._current_step_index(self._as_schedule_time(timestep))
        if i + 1 >= len(self.timesteps):
            raise ValueError(
                f"step {i} has no next time: the schedule {self.timesteps.tolist()} ends there; loop over "
                "timesteps[:-1] and call set_timesteps again to sample anew"
            )
        s, t_next = self.timesteps[i], self.timesteps[i + 1]
        x0 = x0_from_velocity(sample, s, model_output)
        noise = randn(model_output.shape, generator, device=model_output.device)
        prev_sample = trigflow_renoise(x0, t_next, noise, self.config.sigma_data)
        self._step_index = i + 1
        if not return_dict:
            return (prev_sample, x0)
        return SCMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
