"""``CMStochasticIterativeScheduler``: multistep consistency sampling (Song et al. 2023, Algorithm 1) behind
diffusers' scheduler interface, as a thin adapter over :mod:`cmkit.karras`.

A schedule is a set of indices into the ``num_train_timesteps``-point Karras grid (index 0 = ``sigma_max``).
Each ``step`` applies the boundary-condition parameterisation ``f = c_skip x + c_out F`` (CM appendix C),
then the one consistency step of :func:`cmkit.sampling.consistency_step` (optional clamp to [-1, 1], re-noise
to the next sigma with ``sqrt(sigma_next^2 - eps^2) z``).
Sigmas, timesteps, scalings and noise draws equal diffusers 0.42's bit for bit: the float64 grid is
evaluated in numpy as diffusers does, sigmas are then stored in float32 and timesteps in float64, and one
noise tensor (in the model output's dtype) is drawn per step whenever the schedule has more than one step.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .. import karras
from .._validate import check_custom_timesteps, require_int, require_positive
from ..config import register_to_config
from ..limits import MAX_GRID_POINTS
from ..rng import GeneratorArg, randn
from ..sampling import consistency_step
from .base import SchedulerMixin, SchedulerOutput


@dataclasses.dataclass
class CMStochasticIterativeSchedulerOutput(SchedulerOutput):
    """Output of :meth:`CMStochasticIterativeScheduler.step`: ``prev_sample``, the input of the next step."""


class CMStochasticIterativeScheduler(SchedulerMixin):
    """Multistep and one-step sampling for consistency models, config- and numerics-compatible with diffusers."""

    saved_class_name = "CMStochasticIterativeScheduler"
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 40,
        sigma_min: float = karras.SIGMA_MIN,
        sigma_max: float = karras.SIGMA_MAX,
        sigma_data: float = karras.SIGMA_DATA,
        s_noise: float = 1.0,
        rho: float = karras.RHO,
        clip_denoised: bool = True,
    ) -> None:
        require_int("num_train_timesteps", num_train_timesteps, 2, " (the Karras grid size N)", MAX_GRID_POINTS)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        require_positive("sigma_data", sigma_data)
        require_positive("rho", rho)
        if not s_noise >= 0:
            raise ValueError(f"s_noise must be >= 0, got {s_noise}")
        #: standard deviation of the initial noise (the pipeline multiplies N(0, I) latents by it).
        self.init_noise_sigma = sigma_max
        sigmas = self._grid_sigmas(np.linspace(0, 1, int(num_train_timesteps)))
        self.sigmas: Tensor = torch.from_numpy(sigmas)
        self.timesteps: Tensor = torch.from_numpy(self.sigma_to_t(sigmas))
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.is_scale_input_called = False
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._timesteps_set = False

    def _grid_sigmas(self, ramp: np.ndarray) -> np.ndarray:
        """float64 Karras sigmas at ``ramp`` positions (numpy, to match diffusers bit for bit)."""
        c = self.config
        return karras.karras_sigmas_from_ramp(np.asarray(ramp, dtype=np.float64), c.sigma_min, c.sigma_max, c.rho)

    def sigma_to_t(self, sigmas: float | np.ndarray | Tensor) -> np.ndarray:
        """The network's noise input ``250 ln(sigma + 1e-44)`` for ``sigmas``, as a float64 numpy array."""
        if isinstance(sigmas, Tensor):
            sigmas = sigmas.detach().cpu().numpy()
        return karras.sigma_to_timestep(np.asarray(sigmas, dtype=np.float64))

    def get_scalings(self, sigma: Tensor | float) -> tuple[Tensor | float, Tensor | float]:
        """EDM denoiser scalings ``(c_skip, c_out)`` without the sigma_min shift (EDM table 1)."""
        return karras.edm_scalings(sigma, self.config.sigma_data)

    def get_scalings_for_boundary_condition(self, sigma: Tensor | float) -> tuple[Tensor | float, Tensor | float]:
        """Consistency scalings ``(c_skip, c_out)`` with ``f(x, sigma_min) = x`` (CM appendix C)."""
        return karras.consistency_scalings(sigma, self.config.sigma_min, self.config.sigma_data)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | np.ndarray | Tensor | None = None,
    ) -> None:
        """Choose the sampling schedule: ``num_inference_steps`` evenly spaced grid indices, or custom ``timesteps``.

        Custom ``timesteps`` are strictly descending grid indices in ``[0, num_train_timesteps)``; the sampler
        visits ``sigma_max`` first and then the grid points named by the remaining entries, e.g. ``[22, 0]`` with
        N = 40 is OpenAI's ``--ts 0,22,39``.
        """
        n_train = int(self.config.num_train_timesteps)
        self._check_one_schedule(num_inference_steps, timesteps)
        if timesteps is not None:
            schedule = np.array(check_custom_timesteps(timesteps, n_train), dtype=np.int64)
            self.custom_timesteps = True
        else:
            n = require_int("num_inference_steps", num_inference_steps, 1, f" (in [1, {n_train}]: num_train_timesteps)",
                            maximum=n_train)
            schedule = np.arange(n - 1, -1, -1, dtype=np.int64) * (n_train // n)
            self.custom_timesteps = False
        self.num_inference_steps = len(schedule)

        sigmas = self._grid_sigmas(schedule[::-1] / (n_train - 1))
        t = torch.from_numpy(self.sigma_to_t(sigmas))
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [self.config.sigma_min]]).astype(np.float32))
        if device is not None and str(device).startswith("mps"):
            t = t.to(torch.float32)  # mps has no float64
        self.timesteps = t.to(device=device)
        self._step_index = None
        self._begin_index = None
        self._timesteps_set = True

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor) -> Tensor:
        """The network input ``c_in(sigma) x``, computed as ``x / sqrt(sigma^2 + sigma_data^2)`` (EDM table 1)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        self.is_scale_input_called = True
        return sample / karras.noised_std(sigma, self.config.sigma_data)

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: GeneratorArg = None,
        return_dict: bool = True,
    ) -> CMStochasticIterativeSchedulerOutput | tuple[Tensor]:
        """One consistency step: ``x0 = c_skip x + c_out F`` then ``x0 + s_noise sqrt(sigma_next^2 - eps^2) z``."""
        if isinstance(timestep, int) or (isinstance(timestep, Tensor) and not timestep.is_floating_point()):
            raise ValueError(
                f"step() got the integer timestep {timestep!r}; pass one of `scheduler.timesteps` (float noise "
                "levels such as 1095.4), not a loop index from enumerate(scheduler.timesteps)"
            )
        if not self._timesteps_set:
            raise ValueError("call set_timesteps(num_inference_steps=...) or set_timesteps(timesteps=...) before step")
        if not self.is_scale_input_called:
            warnings.warn(
                "step() was called without scale_model_input(); the model input must be scaled by c_in",
                stacklevel=2,
            )
        i = self._current_step_index(timestep)
        c = self.config
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        c_skip, c_out = karras.consistency_scalings(sigma, c.sigma_min, c.sigma_data)
        denoised = c_out * model_output + c_skip * sample
        if len(self.timesteps) > 1:  # one-step sampling draws no noise
            noise = randn(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
        else:
            noise = torch.zeros_like(model_output)
        sigma_next = sigma_next.clamp(min=c.sigma_min, max=c.sigma_max)
        prev_sample = consistency_step(
            denoised, sigma_next, noise * c.s_noise, sigma_min=c.sigma_min, clip_denoised=c.clip_denoised
        )
        self._step_index = i + 1
        if not return_dict:
            return (prev_sample,)
        return CMStochasticIterativeSchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x + sigma(t) n`` with the sigma of each of ``timesteps`` (values from ``scheduler.timesteps``)."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = torch.as_tensor(timesteps)
        if original_samples.device.type == "mps" and timesteps.is_floating_point():
            schedule = self.timesteps.to(original_samples.device, dtype=torch.float32)
            timesteps = timesteps.to(original_samples.device, dtype=torch.float32)
        else:
            schedule = self.timesteps.to(original_samples.device)
            timesteps = timesteps.to(original_samples.device)
        if self._begin_index is None:
            indices = [self.index_for_timestep(t, schedule) for t in timesteps.reshape(-1)]
        elif self._step_index is not None:
            indices = [self._step_index] * timesteps.reshape(-1).shape[0]  # after the first step (inpainting)
        else:
            indices = [self._begin_index] * timesteps.reshape(-1).shape[0]  # before it (img2img)
        return karras.add_noise(original_samples, sigmas[indices].flatten(), noise)
