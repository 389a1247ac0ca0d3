"""``TCDScheduler``: Strategic Stochastic Sampling from "Trajectory Consistency Distillation"
(Zheng et al. 2024, sec. 4.3), config- and numerics-compatible with diffusers 0.42.

The model predicts ``x0`` / ``eps`` at ``t`` (from epsilon, sample or v output; Salimans & Ho 2022 for v).
Each step jumps along the trajectory to ``s = floor((1 - gamma) t_prev)``,
``x_s = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s) eps``, and then, for ``gamma = eta > 0``, forward-diffuses
back to ``t_prev``: ``x_prev = sqrt(alpha_bar_prev / alpha_bar_s) x_s + sqrt(1 - alpha_bar_prev / alpha_bar_s) z``.

Differences from diffusers (documented in docs/schedulers.md):

* ``clip_sample`` and ``thresholding`` are applied to the predicted ``x0`` (diffusers accepts and ignores them).
* With ``rescale_betas_zero_snr`` the last ``alpha_bar`` is 0 and epsilon prediction would divide by zero;
  an ``alpha_bar_t`` of exactly 0 is replaced by ``2**-24`` to recover ``x0`` (diffusers returns NaN/inf).
* ``eta`` outside [0, 1], negative or non-integer timesteps and ``strength`` outside (0, 1] raise ValueError.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal, Sequence, get_args

import numpy as np
import torch
from torch import Tensor

from .._validate import check_choice, check_custom_timesteps, require_int, require_positive
from ..config import register_to_config
from ..karras import append_dims
from ..limits import MAX_GRID_POINTS
from ..rng import GeneratorArg, randn
from ..vp import vp_sigma
from .base import SchedulerMixin, SchedulerOutput
from .betas import BetaSchedule, alphas_cumprod, make_betas, rescale_zero_terminal_snr

PredictionType = Literal["epsilon", "sample", "v_prediction"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]

#: stands in for alpha_bar_t = 0 when recovering x0 from an epsilon prediction (zero-terminal-SNR schedules).
MIN_ALPHA_PROD = 2.0**-24


@dataclasses.dataclass
class TCDSchedulerOutput(SchedulerOutput):
    """Output of :meth:`TCDScheduler.step`: ``prev_sample`` and the predicted noised sample ``x_s``."""

    pred_noised_sample: Tensor | None = None


def threshold_sample(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, "Imagen", sec. 2.3): per sample, ``s`` = the ``ratio``
    quantile of ``|x0|`` limited to [1, ``max_value``]; clip ``x0`` to [-s, s] and divide by ``s``."""
    flat = x0.reshape(x0.shape[0], -1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile needs float32/64
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(x0.dtype)


def check_eta(eta: float) -> None:
    """Refuse a gamma (``eta``) outside [0, 1] (diffusers asserts)."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta (TCD's gamma) must lie in [0, 1] (0: deterministic, 1: fully stochastic), got {eta}")


def distillation_timesteps(num_train_timesteps: int, original_inference_steps: int, strength: float = 1.0) -> np.ndarray:
    """The ascending distillation schedule ``tau_j = (j + 1) floor(T / N) - 1`` (TCD sec. 4.3, skipping step
    ``k = floor(T / N)``), its first ``int(N * strength)`` points: what inference timesteps are drawn from and the grid
    TCD trains on (:mod:`cmkit.training.objectives.tcd`)."""
    k = num_train_timesteps // original_inference_steps
    return np.arange(1, int(original_inference_steps * strength) + 1, dtype=np.int64) * k - 1


class TCDScheduler(SchedulerMixin):
    """Trajectory Consistency Distillation sampler with diffusers' ``TCDScheduler`` interface."""

    saved_class_name = "TCDScheduler"
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: BetaSchedule = "scaled_linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        require_int("num_train_timesteps", num_train_timesteps, 1, maximum=MAX_GRID_POINTS)
        require_int("original_inference_steps", original_inference_steps, 1, maximum=MAX_GRID_POINTS)
        check_choice("beta_schedule", beta_schedule, get_args(BetaSchedule))
        check_choice("prediction_type", prediction_type, get_args(PredictionType))
        check_choice("timestep_spacing", timestep_spacing, get_args(TimestepSpacing))
        require_positive("clip_sample_range", clip_sample_range)
        require_positive("sample_max_value", sample_max_value)
        if not 0 < dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio must lie in (0, 1], got {dynamic_thresholding_ratio}")

        n = int(num_train_timesteps)
        self.betas: Tensor = make_betas(beta_schedule, n, beta_start, beta_end, trained_betas)
        if rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)
            if prediction_type == "epsilon":
                warnings.warn(
                    "rescale_betas_zero_snr with prediction_type='epsilon': x0 cannot be recovered from epsilon at "
                    f"zero SNR, so alpha_bar_T = 0 is replaced by {MIN_ALPHA_PROD:g} there; use v_prediction models "
                    "with zero-SNR schedules (Lin et al. 2024)",
                    stacklevel=3,
                )
        self.alphas: Tensor = 1.0 - self.betas
        self.alphas_cumprod: Tensor = alphas_cumprod(self.betas)
        #: alpha_bar "before" step 0 (kept for diffusers compatibility; TCD's step never reaches it).
        self.final_alpha_cumprod: Tensor = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps: Tensor = torch.arange(n - 1, -1, -1, dtype=torch.int64)
        self.custom_timesteps = False
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def scale_model_input(self, sample: Tensor, timestep: int | Tensor | None = None) -> Tensor:
        """TCD feeds the sample unscaled; kept for the common scheduler interface."""
        return sample

    def edm_sigmas(self) -> Tensor:
        """EDM's ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` of every training timestep (float64 on the CPU, from the
        float32 ``alphas_cumprod``; :mod:`cmkit.vp`): the noise levels a TCD model's EDM denoiser sees."""
        return vp_sigma(self.alphas_cumprod.double().cpu())

    def _origin_timesteps(self, original_inference_steps: int | None, strength: float) -> np.ndarray:
        """The distillation schedule that inference timesteps are drawn from (TCD sec. 4.3, skipping step k)."""
        n_train = int(self.config.num_train_timesteps)
        if original_inference_steps is None:
            original = int(self.config.original_inference_steps)
            if original > n_train:
                raise ValueError(
                    f"original_inference_steps={original} cannot exceed num_train_timesteps={n_train}; lower it in "
                    "the config or pass original_inference_steps to set_timesteps"
                )
            return distillation_timesteps(n_train, original, strength)
        # An explicit original_inference_steps makes every training timestep eligible (as diffusers does).
        return np.arange(0, int(n_train * strength), dtype=np.int64)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        original_inference_steps: int | None = None,
        timesteps: Sequence[int] | np.ndarray | Tensor | None = None,
        strength: float = 1.0,
    ) -> None:
        """Choose ``num_inference_steps`` evenly spaced timesteps of the distillation schedule, or custom ones."""
        n_train = int(self.config.num_train_timesteps)
        self._check_one_schedule(num_inference_steps, timesteps)
        if not 0 < strength <= 1:
            raise ValueError(f"strength must lie in (0, 1], got {strength}")
        if original_inference_steps is not None:
            require_int("original_inference_steps", original_inference_steps, 1)
        original = original_inference_steps or self.config.original_inference_steps
        origin = self._origin_timesteps(original_inference_steps, strength)

        if timesteps is not None:
            values = check_custom_timesteps(timesteps, n_train)
            self._warn_on_unusual_schedule(values, origin, original, strength)
            schedule = np.array(values, dtype=np.int64)
            self.custom_timesteps = True
            keep = min(int(len(schedule) * strength), len(schedule))  # img2img: skip the noisiest steps
            schedule = schedule[max(len(schedule) - keep, 0) * self.order :]
            if len(schedule) == 0:
                raise ValueError(
                    f"strength={strength} keeps none of the {len(values)} custom timesteps; raise strength"
                )
        else:
            n = require_int("num_inference_steps", num_inference_steps, 1, " (num_train_timesteps)", maximum=n_train)
            if n > original:
                raise ValueError(
                    f"num_inference_steps={n} cannot exceed original_inference_steps={original}: the schedule is a "
                    "subset of the distillation schedule"
                )
            if len(origin) // n < 1:
                raise ValueError(
                    f"only {len(origin)} distillation timesteps remain (original steps {original} x strength "
                    f"{strength}), fewer than num_inference_steps={n}; lower num_inference_steps or raise strength"
                )
            picks = np.floor(np.linspace(0, len(origin), num=int(n), endpoint=False)).astype(np.int64)
            schedule = origin[::-1][picks]
            self.custom_timesteps = False
        self.num_inference_steps = len(schedule)
        self.timesteps = torch.from_numpy(np.ascontiguousarray(schedule)).to(device=device, dtype=torch.long)
        self._step_index = None
        self._begin_index = None

    def _warn_on_unusual_schedule(self, values: list[int], origin: np.ndarray, limit: int, strength: float) -> None:
        """Warn (as diffusers does) about custom timesteps the distilled model was not trained on."""
        n_train = int(self.config.num_train_timesteps)
        if strength == 1.0 and values[0] != n_train - 1:
            warnings.warn(
                f"custom timesteps start at {values[0]}, not at {n_train - 1}; results may degrade", stacklevel=3
            )
        allowed = set(origin.tolist())
        off = [v for v in values[1:] if v not in allowed]
        if off:
            warnings.warn(
                f"custom timesteps {off} are not on the distillation schedule; results may degrade", stacklevel=3
            )
        if len(values) > limit:
            warnings.warn(
                f"{len(values)} custom timesteps exceed the {limit}-step distillation schedule; results may degrade",
                stacklevel=3,
            )

    def previous_timestep(self, timestep: int | Tensor) -> int | Tensor:
        """The next timestep of the schedule (-1 after the last); ``timestep - 1`` before set_timesteps."""
        if self.custom_timesteps or self.num_inference_steps:
            index = (self.timesteps == timestep).nonzero(as_tuple=True)[0][0]
            return torch.tensor(-1) if index == self.timesteps.shape[0] - 1 else self.timesteps[index + 1]
        return timestep - 1

    def _clip_x0(self, x0: Tensor) -> Tensor:
        """Apply ``thresholding`` or ``clip_sample`` to the predicted x0 (no-ops with the default config)."""
        c = self.config
        if c.thresholding:
            return threshold_sample(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        if c.clip_sample:
            return x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        return x0

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        eta: float = 0.3,
        generator: GeneratorArg = None,
        return_dict: bool = True,
    ) -> TCDSchedulerOutput | tuple[Tensor, Tensor]:
        """One TCD step from ``timestep`` to the next scheduled timestep, with stochasticity ``eta`` (gamma)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps=...) before step()")
        check_eta(eta)
        if isinstance(timestep, float) or (isinstance(timestep, Tensor) and timestep.is_floating_point()):
            if not float(timestep).is_integer():
                raise ValueError(f"TCD timesteps are integers, got {float(timestep)}; pass one of scheduler.timesteps")
            timestep = int(timestep)
        i = self._current_step_index(timestep)
        prev_timestep, timestep_s = self._step_targets(i, eta)

        alpha_prod_t = self.alphas_cumprod[timestep]
        beta_prod_t = 1 - alpha_prod_t
        alpha_prod_prev = self.alphas_cumprod[prev_timestep]
        alpha_prod_s = self.alphas_cumprod[timestep_s]
        beta_prod_s = 1 - alpha_prod_s

        kind = self.config.prediction_type
        if kind == "epsilon":
            safe_alpha_prod_t = alpha_prod_t if alpha_prod_t > 0 else alpha_prod_t.new_tensor(MIN_ALPHA_PROD)
            x0 = (sample - beta_prod_t.sqrt() * model_output) / safe_alpha_prod_t.sqrt()
            eps = model_output
        elif kind == "sample":
            x0 = model_output
            eps = (sample - alpha_prod_t**0.5 * x0) / beta_prod_t**0.5
        else:  # v_prediction
            x0 = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
            eps = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        x0 = self._clip_x0(x0)
        pred_noised_sample = alpha_prod_s.sqrt() * x0 + beta_prod_s.sqrt() * eps

        if eta > 0 and i != len(self.timesteps) - 1:  # no noise on the last step (nor for one-step sampling)
            z = randn(model_output.shape, generator, device=model_output.device, dtype=pred_noised_sample.dtype)
            ratio = alpha_prod_prev / alpha_prod_s
            prev_sample = ratio.sqrt() * pred_noised_sample + (1 - ratio).sqrt() * z
        else:
            prev_sample = pred_noised_sample
        self._step_index = i + 1
        if not return_dict:
            return (prev_sample, pred_noised_sample)
        return TCDSchedulerOutput(prev_sample=prev_sample, pred_noised_sample=pred_noised_sample)

    def _step_targets(self, index: int, eta: float) -> tuple[Tensor, Tensor]:
        """``(t_prev, s)`` of the step at schedule position ``index``: the next scheduled timestep (0 after the
        last) and ``s = floor((1 - gamma) t_prev)`` (TCD sec. 4.3, strategic stochastic sampling)."""
        prev_timestep = self.timesteps[index + 1] if index + 1 < len(self.timesteps) else torch.tensor(0)
        return prev_timestep, torch.floor((1 - eta) * prev_timestep).to(dtype=torch.long)

    def target_timestep(self, timestep: int | Tensor, eta: float = 0.3) -> Tensor:
        """The timestep ``s`` that :meth:`step` at ``timestep`` jumps to with ``eta`` (gamma): what a TCD network
        conditioned on its target time is told before its call (cmkit's TCD pipelines)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps=...) before target_timestep()")
        check_eta(eta)
        return self._step_targets(self._current_step_index(timestep), eta)[1]

    def _sqrt_alpha_terms(self, timesteps: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``sqrt(alpha_bar_t)`` and ``sqrt(1 - alpha_bar_t)`` in ``like``'s dtype, broadcastable against it."""
        self.alphas_cumprod = self.alphas_cumprod.to(device=like.device)
        a = self.alphas_cumprod.to(dtype=like.dtype)[torch.as_tensor(timesteps).to(like.device)]
        return append_dims(a.flatten() ** 0.5, like.ndim), append_dims((1 - a).flatten() ** 0.5, like.ndim)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Forward diffusion ``sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` (DDPM eq. 4)."""
        sqrt_a, sqrt_1ma = self._sqrt_alpha_terms(timesteps, original_samples)
        return sqrt_a * original_samples + sqrt_1ma * noise

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The v-prediction target ``sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0`` (Salimans & Ho 2022)."""
        sqrt_a, sqrt_1ma = self._sqrt_alpha_terms(timesteps, sample)
        return sqrt_a * noise - sqrt_1ma * sample
