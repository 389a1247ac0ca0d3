"""ConsistencyModelPipeline: diffusers' pipeline API over cmkit's networks and schedulers.

``pipe(...)`` runs multistep consistency sampling (Song et al. 2023, Algorithm 1): draw ``x ~ N(0, sigma_max^2 I)``,
then for each timestep apply the consistency function (network + ``scheduler.step``) and, between steps,
re-noise. The loop is a thin adapter; every piece of math lives in the scheduler (and ``cmkit.karras``).
Random draws happen in diffusers' order (latents, then class labels, then one draw per scheduler step), all
from the caller's generator, so one seed gives diffusers' images.

Deliberate differences from diffusers 0.42 (see docs/sampling.md):

* missing class labels are drawn from ``generator`` (diffusers uses the global RNG);
* ``output_type="np"`` works for bfloat16 models (NumPy has no bfloat16; cmkit returns float32);
* with a float16/bfloat16 network the noise, the scalings and the sample between steps stay float32 (diffusers
  draws and steps in the half type): one seed gives the float32 image, up to the network's rounding;
* float16 on a CPU warns and suggests bfloat16 (float16 matrix products are ~1000x slower there);
* a model may be any network exposing ``sample_shape`` (e.g. an MLP on 2-D points);
* a ``cmkit_default_timesteps`` entry in ``model_index.json`` supplies tuned timesteps for a step count;
* a TrigFlow (sCM, Lu & Song 2024) model, recorded as ``cmkit_parameterization: "trigflow"`` or held with an
  ``SCMScheduler``, is sampled in TrigFlow time: ``x = sigma_d z`` at ``t ~ pi/2``, the network gets ``x / sigma_d``
  at ``timestep = 1000 t`` (:func:`cmkit.trigflow.trigflow_timestep`) and ``scheduler.step`` gets ``sigma_d F``;
  2 steps default to the paper's intermediate ``t = 1.1``; ``timesteps`` are the TrigFlow times visited (radians);
* a TCD model (``cmkit_parameterization: "tcd"``, trained by ``cmkit train --method tcd``) is an EDM denoiser viewed in
  the VP time of its ``TCDScheduler`` (:mod:`cmkit.vp`): at timestep ``t`` the network gets ``x_vp / sqrt(alpha_bar_t)``
  at ``sigma_t``, and its target time ``s`` (``scheduler.target_timestep(t, eta)``) when it takes one; the scheduler
  gets the x0 estimate (``prediction_type="sample"``) and ``eta`` (TCD's gamma, default 0.3);
* ``latents`` may be a NumPy array (converted with ``torch.from_numpy``); non-finite latents, a generator that is
  not a ``torch.Generator`` (e.g. a seed: pass ``torch.Generator().manual_seed(seed)``) and a batch whose samples
  cannot fit the device's memory (:mod:`cmkit.limits`) raise before anything is drawn.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from .editing import pipeline_edits as edits
from .editing.inputs import ImageInput
from .editing.pipeline_edits import ConsistencyFn, EditOptions
from .hardware import fastest_dtype
from .karras import Parameterization
from .limits import require_sampling_batch_fits, require_weights_fit
from .models.denoiser import Denoiser, call_network
from .models.modeling import resolve_dtype_args
from .pipeline_inputs import check_call_inputs, class_labels_tensor, parse_to_arguments
from .pipeline_io import load_components, parse_default_timesteps, save_components
from .pipeline_types import ClassLabels, ImagePipelineOutput, PipelineResult, StepCallback, pipeline_output
from .postprocess import OutputType, postprocess
from .rng import GeneratorArg, randn
from .schedulers.tcd import check_eta
from .trigflow import DEFAULT_INTERMEDIATE_T, trigflow_network_input
from .vp import vp_to_edm_x

__all__ = ["ConsistencyModelPipeline", "ImagePipelineOutput", "sampler_dtype", "unwrap_model"]


def sampler_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the sampler's state for a network in ``model_dtype``: float32 for half types, else unchanged."""
    return torch.float32 if model_dtype in (torch.float16, torch.bfloat16) else model_dtype


def unwrap_model(module: Any) -> Any:
    """The module inside a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``), else the module itself."""
    return getattr(module, "_orig_mod", module)


def _is_trigflow_scheduler(scheduler: Any) -> bool:
    """Whether ``scheduler`` samples in TrigFlow time (cmkit's or diffusers' ``SCMScheduler``)."""
    return getattr(getattr(scheduler, "config", None), "prediction_type", None) == "trigflow"


class ConsistencyModelPipeline:
    """Unconditional or class-conditional sampling with a consistency model, call-compatible with diffusers'."""

    def __init__(self, unet: nn.Module, scheduler: Any) -> None:
        self.unet = unet
        self.scheduler = scheduler
        #: step count (as a string) -> tuned timesteps used when a caller passes that count and no timesteps.
        self.default_timesteps: dict[str, list[int]] = {}
        self._progress_bar_config: dict[str, Any] = {}
        self._silence_dtype_warnings = False
        #: "consistency"; "edm" for a diffusion teacher saved by ``cmkit train --method edm`` (not sampleable here);
        #: "trigflow" for an sCM model (set by an ``SCMScheduler`` or the saved ``cmkit_parameterization``).
        self.parameterization: Parameterization = "trigflow" if _is_trigflow_scheduler(scheduler) else "consistency"
        #: sigma_d of a TCD model's EDM preconditioning (``cmkit_sigma_data`` in ``model_index.json``)
        self.sigma_data: Optional[float] = None

    @property
    def components(self) -> dict[str, Any]:
        """The constructor arguments: ``ConsistencyModelPipeline(**pipe.components)`` rebuilds the pipeline."""
        return {"unet": self.unet, "scheduler": self.scheduler}

    @property
    def model(self) -> nn.Module:
        """The network, unwrapped from ``torch.compile`` (read its config and attributes through this)."""
        return unwrap_model(self.unet)

    def _first_parameter(self) -> Optional[Tensor]:
        return next(iter(self.model.parameters()), None)

    @property
    def device(self) -> torch.device:
        """The device the network's parameters live on."""
        param = self._first_parameter()
        return param.device if param is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The network's parameter dtype (latents are drawn in it)."""
        dtype = getattr(self.model, "dtype", None)
        if isinstance(dtype, torch.dtype):
            return dtype
        param = self._first_parameter()
        return param.dtype if param is not None else torch.float32

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample (no batch dim): the model's ``sample_shape``, else (in_channels, size, size)."""
        model = self.model
        shape = getattr(model, "sample_shape", None)
        if shape is not None:
            return tuple(int(s) for s in shape)
        config = getattr(model, "config", None)
        size = getattr(config, "sample_size", None)
        channels = getattr(config, "in_channels", None)
        if size is None or channels is None:
            raise ValueError(
                f"cannot tell the sample shape of {type(model).__name__}: give it a `sample_shape` property "
                "(a tuple without the batch dim) or a config with `in_channels` and `sample_size`"
            )
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (int(channels), int(height), int(width))

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes of a class-conditional model (``config.num_class_embeds``), else None."""
        model = self.model
        n = getattr(getattr(model, "config", None), "num_class_embeds", None)
        if n is None:
            n = getattr(model, "num_class_embeds", None)
        return int(n) if n is not None else None

    def to(self, *args: Any, **kwargs: Any) -> "ConsistencyModelPipeline":
        """Move the network: ``to(device)``, ``to(dtype)``, ``to(device, dtype)`` or ``to(device=..., dtype=...)``.

        ``silence_dtype_warnings=True`` (diffusers' flag) turns off the float16-on-CPU warning.
        """
        if "silence_dtype_warnings" in kwargs:
            self._silence_dtype_warnings = bool(kwargs.pop("silence_dtype_warnings"))
        target, dtype = parse_to_arguments(args, kwargs)
        if target is not None and target.type != self.device.type:
            require_weights_fit(self.model, dtype or self.dtype, target)
        if target is not None or dtype is not None:
            self.unet.to(device=target, dtype=dtype)
        return self

    def require_batch_fits(self, batch_size: int, sample_shape: tuple[int, ...]) -> None:
        """Refuse a batch whose sampler state and network activations cannot fit the device's memory."""
        require_sampling_batch_fits(self.model, batch_size, sample_shape, self.dtype, self.device)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options passed to ``tqdm`` for the progress bar over steps (e.g. ``disable=True``, ``leave=False``)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, total: int):
        """A tqdm bar over ``total`` steps, configured by :meth:`set_progress_bar_config`."""
        from tqdm.auto import tqdm

        return tqdm(total=total, **self._progress_bar_config)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike],
        torch_dtype: Union[torch.dtype, str, None] = None,
        dtype: Union[torch.dtype, str, None] = None,
        device: Union[torch.device, str, None] = None,
    ) -> "ConsistencyModelPipeline":
        """Load a diffusers-format pipeline directory or hub id; ``torch_dtype`` and ``dtype`` are synonyms."""
        target_dtype = resolve_dtype_args(torch_dtype, dtype)
        components, defaults, parameterization, sigma_data = load_components(pretrained_model_name_or_path)
        unet = components["unet"]
        if isinstance(unet, nn.Module):
            unet.eval()
        pipe = cls(**components)
        pipe.default_timesteps = defaults
        if _is_trigflow_scheduler(pipe.scheduler) and parameterization not in ("consistency", "trigflow"):
            raise ValueError(
                f"{pretrained_model_name_or_path} records cmkit_parameterization {parameterization!r} but holds an "
                "SCMScheduler, which samples TrigFlow models only; fix cmkit_parameterization in model_index.json"
            )
        pipe.parameterization = "trigflow" if _is_trigflow_scheduler(pipe.scheduler) else parameterization
        pipe.sigma_data = sigma_data
        if parameterization == "tcd":
            pipe.require_tcd_scheduler(str(pretrained_model_name_or_path))
        if target_dtype is not None or device is not None:
            pipe.to(device=device, dtype=target_dtype)
        return pipe

    def save_pretrained(self, save_directory: Union[str, os.PathLike], safe_serialization: bool = True) -> None:
        """Write ``model_index.json``, ``unet/`` and ``scheduler/`` in diffusers' layout (safetensors weights)."""
        if not safe_serialization:
            raise ValueError("cmkit writes weights only as safetensors; leave safe_serialization=True")
        sigma_data = self.tcd_sigma_data() if self.parameterization == "tcd" else None
        save_components(save_directory, self.components, self.default_timesteps, self.parameterization, sigma_data)

    def tcd_sigma_data(self) -> float:
        """The sigma_d of a TCD model's preconditioning (0.5, EDM's, when unset)."""
        return 0.5 if self.sigma_data is None else float(self.sigma_data)

    def require_tcd_scheduler(self, source: str = "this pipeline") -> None:
        """Raise unless the scheduler can sample a TCD model (a TCDScheduler predicting x0)."""
        if not hasattr(self.scheduler, "target_timestep") or self.scheduler.config.prediction_type != "sample":
            raise ValueError(
                f"{source} holds a TCD model (cmkit_parameterization 'tcd'), which needs cmkit.TCDScheduler with "
                f"prediction_type='sample', but has a {type(self.scheduler).__name__} predicting "
                f"{getattr(self.scheduler.config, 'prediction_type', None)!r}; use "
                "TCDScheduler.from_config(pipe.scheduler.config, prediction_type='sample') with the training beta schedule"
            )

    def set_default_timesteps(self, num_inference_steps: int, timesteps: Optional[Sequence[int]]) -> None:
        """Use ``timesteps`` whenever a call asks for ``num_inference_steps`` steps without timesteps (None clears)."""
        key = str(int(num_inference_steps))
        if timesteps is None:
            self.default_timesteps.pop(key, None)
            return
        self.default_timesteps.update(parse_default_timesteps({key: list(timesteps)}, "set_default_timesteps"))

    #: diffusers' name for the call's argument checks (:func:`cmkit.pipeline_inputs.check_call_inputs`).
    check_inputs = staticmethod(check_call_inputs)

    def prepare_latents(
        self,
        batch_size: int,
        sample_shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        generator: GeneratorArg,
        latents: Optional[Tensor] = None,
    ) -> Tensor:
        """Initial noise ``x ~ N(0, init_noise_sigma^2 I)``: drawn from ``generator`` or the given ``latents``."""
        if latents is None:
            latents = randn((batch_size, *sample_shape), generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        if self.parameterization == "trigflow":  # x_{pi/2} = sigma_d z (diffusers' SCMScheduler stores 1.0)
            return latents * self.scheduler.config.sigma_data
        return latents * self.scheduler.init_noise_sigma

    def prepare_class_labels(
        self, batch_size: int, device: torch.device, class_labels: ClassLabels, generator: GeneratorArg = None
    ) -> Optional[Tensor]:
        """Class labels for a class-conditional model (drawn from ``generator`` when missing), else None."""
        return class_labels_tensor(self.num_classes, batch_size, device, class_labels, generator)

    def _set_timesteps(
        self, num_inference_steps: Optional[int], timesteps: Optional[Sequence[int]], device: torch.device
    ) -> Tensor:
        if timesteps is None and num_inference_steps is not None:
            timesteps = self.default_timesteps.get(str(num_inference_steps))
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=list(timesteps), device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        return self.scheduler.timesteps

    def require_consistency_model(self) -> None:
        """Raise if the network is an EDM diffusion teacher: one-step consistency sampling would be wrong for it."""
        if self.parameterization == "edm":
            raise ValueError(
                "this pipeline holds an EDM diffusion teacher (cmkit_parameterization 'edm'), not a consistency "
                "model, so consistency sampling would give wrong images. Sample it with the Heun ODE solver: "
                "`cmkit eval --model DIR` or cmkit.metrics.generate.generate_heun_samples(pipe, ...); or distil it "
                "into a consistency model with `cmkit train --method cd --teacher DIR`."
            )

    def _warn_slow_dtype(self, dtype: torch.dtype, device: torch.device) -> None:
        if dtype == torch.float16 and device.type == "cpu" and not self._silence_dtype_warnings:
            warnings.warn(
                "sampling in float16 on a CPU is very slow (about 1000x slower than float32 matrix products); "
                f"use {fastest_dtype('cpu')} on this CPU (cmkit.hardware.fastest_dtype(): bfloat16 pays off only with AMX, "
                "float32 elsewhere), or float16 on a GPU",
                UserWarning,
                stacklevel=3,
            )

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: ClassLabels = None,
        num_inference_steps: Optional[int] = 1,
        timesteps: Optional[Sequence[int]] = None,
        generator: GeneratorArg = None,
        latents: Union[Tensor, np.ndarray, None] = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
        callback: Optional[StepCallback] = None,
        callback_steps: int = 1,
        eta: Optional[float] = None,
    ) -> PipelineResult:
        """Generate ``batch_size`` samples in ``num_inference_steps`` steps (or at the given ``timesteps``).

        ``timesteps`` are indices into the scheduler's training grid, counted from sigma_max, strictly
        descending (e.g. ``[22, 0]`` for cd_imagenet64). ``callback(i, t, sample)`` runs every
        ``callback_steps`` steps. ``eta`` is TCD's gamma in [0, 1] for a ``TCDScheduler`` (None: its default 0.3).
        Returns ``ImagePipelineOutput(images=...)`` or ``(images,)``.
        """
        step_options = self._step_options(eta)
        self.require_consistency_model()
        sample_shape = self.sample_shape
        device, dtype = self.device, self.dtype
        if isinstance(latents, np.ndarray):
            latents = torch.from_numpy(np.ascontiguousarray(latents))
        self.check_inputs(
            num_inference_steps, timesteps, latents, batch_size, sample_shape, callback_steps, output_type, generator
        )
        self.require_batch_fits(batch_size, sample_shape)
        self._warn_slow_dtype(dtype, device)

        # the sampler's state (noise, scalings, the x of Algorithm 1) stays float32 for a half-precision network:
        # only the network runs in ``dtype``, and one seed gives the float32 pipeline's image
        state_dtype = sampler_dtype(dtype)
        sample = self.prepare_latents(batch_size, sample_shape, state_dtype, device, generator, latents)
        labels = self.prepare_class_labels(batch_size, device, class_labels, generator)
        if self.parameterization == "trigflow":
            sample = self._sample_trigflow(
                sample, labels, num_inference_steps, timesteps, generator, dtype, callback, callback_steps
            )
            return pipeline_output(postprocess(sample.to(dtype), output_type), return_dict)
        schedule = self._set_timesteps(num_inference_steps, timesteps, device)
        network = self._tcd_network(labels, dtype, step_options) if self.parameterization == "tcd" else None

        with self.progress_bar(total=len(schedule)) as bar:
            for i, t in enumerate(schedule):
                model_input = self.scheduler.scale_model_input(sample, t).to(dtype)
                if network is not None:
                    model_output = network(model_input, t).to(state_dtype)
                else:
                    model_output = call_network(self.unet, model_input, t, labels).to(state_dtype)
                sample = self.scheduler.step(model_output, t, sample, generator=generator, **step_options)[0]
                bar.update()
                if callback is not None and i % callback_steps == 0:
                    callback(i, t, sample)

        return pipeline_output(postprocess(sample.to(dtype), output_type), return_dict)

    def _step_options(self, eta: Optional[float]) -> dict[str, float]:
        """``scheduler.step``'s extra arguments: ``eta`` for a TCDScheduler (0.3 for a TCD model when not given)."""
        if eta is None:
            return {"eta": 0.3} if self.parameterization == "tcd" else {}
        if not hasattr(self.scheduler, "target_timestep"):
            raise ValueError(
                f"eta (TCD's gamma) applies to a TCDScheduler; this pipeline's {type(self.scheduler).__name__} takes "
                "none: leave eta out"
            )
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            raise ValueError(f"eta (TCD's gamma) must be a number in [0, 1] (0.3: TCD's default), got {eta!r}")
        check_eta(eta)  # before anything is drawn; step() checks again
        return {"eta": float(eta)}

    def _tcd_network(self, labels: Optional[Tensor], dtype: torch.dtype, step_options: dict[str, float]) -> Any:
        """``x_vp, t -> x0``: the TCD model's EDM denoiser at ``sigma_t`` (:mod:`cmkit.vp`), told its target ``s``."""
        self.require_tcd_scheduler()
        scheduler, eta = self.scheduler, step_options["eta"]
        alphas_cumprod = scheduler.alphas_cumprod.to(self.device)
        sigmas = scheduler.edm_sigmas().float().to(self.device)
        denoiser = Denoiser(self.unet, "tcd", sigma_min=float(sigmas[0]), sigma_data=self.tcd_sigma_data())

        def network(x_vp: Tensor, t: Tensor) -> Tensor:
            s = scheduler.target_timestep(t, eta)
            x = vp_to_edm_x(x_vp.float(), alphas_cumprod[t]).to(dtype)
            return denoiser(x, sigmas[t], labels, sigmas[s] if denoiser.accepts_target_sigma else None)

        return network

    def _sample_trigflow(
        self,
        sample: Tensor,
        labels: Optional[Tensor],
        num_inference_steps: Optional[int],
        timesteps: Optional[Sequence[float]],
        generator: GeneratorArg,
        dtype: torch.dtype,
        callback: Optional[StepCallback],
        callback_steps: int,
    ) -> Tensor:
        """sCM multistep sampling (Lu & Song 2024): the scheduler's TrigFlow times, the network at ``1000 t`` (or the
        scheduler config's ``time_input``, :func:`cmkit.trigflow.trigflow_network_input`)."""
        scheduler = self.scheduler
        if not _is_trigflow_scheduler(scheduler):
            raise ValueError(
                f"this pipeline holds a TrigFlow (sCM) model but a {type(scheduler).__name__}; sample it with "
                "cmkit.SCMScheduler(sigma_data=...): ConsistencyModelPipeline(unet, SCMScheduler(...))"
            )
        if timesteps is not None:  # the times visited; the chain ends at t = 0
            visited = [float(t) for t in timesteps]
            scheduler.set_timesteps(len(visited), timesteps=[*visited, 0.0], device=self.device)
        elif num_inference_steps == 2:
            scheduler.set_timesteps(2, intermediate_timesteps=DEFAULT_INTERMEDIATE_T, device=self.device)
        else:
            scheduler.set_timesteps(num_inference_steps, device=self.device)
        sigma_data = float(scheduler.config.sigma_data)
        time_input = getattr(scheduler.config, "time_input", "trigflow")  # diffusers' SCMScheduler: 1000 t
        state_dtype = sample.dtype
        schedule = scheduler.timesteps[:-1]
        with self.progress_bar(total=len(schedule)) as bar:
            for i, t in enumerate(schedule):
                model_input = (sample / sigma_data).to(dtype)
                timestep, sign = trigflow_network_input(t, time_input, sigma_data)
                F = sign * call_network(self.unet, model_input, timestep, labels).to(state_dtype)
                sample = scheduler.step(F * sigma_data, t, sample, generator=generator)[0]
                bar.update()
                if callback is not None and i % callback_steps == 0:
                    callback(i, t, sample)
        return sample

    # ----- zero-shot editing (CM Algorithm 4): cmkit.editing.pipeline_edits; ``options``: the EditOptions fields
    def consistency_function(self) -> ConsistencyFn:
        """``f(x, sigma, class_labels)`` of the network, computed in float32 around the network's dtype."""
        return edits.consistency_function(self)

    def inpaint(self, image: ImageInput, mask: ImageInput, **options: Any) -> PipelineResult:
        """Fill the region where ``mask`` is white (>= 0.5) and keep the rest of ``image`` exactly."""
        return edits.inpaint(self, image, mask, EditOptions(**options))

    def colorize(self, image: ImageInput, **options: Any) -> PipelineResult:
        """Colour a grayscale ``image`` (an RGB image is reduced to its luma): keep luma, generate chroma."""
        return edits.colorize(self, image, EditOptions(**options))

    def super_resolve(self, image: ImageInput, factor: int, **options: Any) -> PipelineResult:
        """Upsample a low-resolution ``image`` by the integer ``factor`` to the model's resolution."""
        return edits.super_resolve(self, image, factor, EditOptions(**options))

    def denoise(self, image: Union[ImageInput, Tensor], sigma: float, **options: Any) -> PipelineResult:
        """Remove Gaussian noise of standard deviation ``sigma`` ([-1, 1] pixel units) from an image."""
        return edits.denoise(self, image, sigma, EditOptions(**options))

    def denoise_latents(self, noisy: Tensor, sigma: float, **options: Any) -> PipelineResult:
        """Denoise an unclipped ``clean + sigma z`` tensor ``[B, C, H, W]`` in model space."""
        return edits.denoise_latents(self, noisy, sigma, EditOptions(**options))

    def stroke_edit(self, image: ImageInput, sigma: float, **options: Any) -> PipelineResult:
        """Stroke-guided editing (SDEdit): noise a stroke painting to ``sigma`` and let the model make it realistic."""
        return edits.stroke_edit(self, image, sigma, EditOptions(**options))

    def interpolate(
        self,
        first: Optional[ImageInput] = None,
        second: Optional[ImageInput] = None,
        *,
        num_images: int = 8,
        sigma: Optional[float] = None,
        **options: Any,
    ) -> PipelineResult:
        """``num_images`` samples along a slerp between two latents (two fresh noises, or two images at ``sigma``)."""
        return edits.interpolate(self, first, second, num_images, sigma, EditOptions(**options))
