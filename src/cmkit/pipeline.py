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
* ``latents`` may be a NumPy array (converted with ``torch.from_numpy``); non-finite latents, a generator that is
  not a ``torch.Generator`` (e.g. a seed: pass ``torch.Generator().manual_seed(seed)``) and a batch whose samples
  cannot fit the device's memory (:mod:`cmkit.limits`) raise before anything is drawn.
"""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from .devices import parse_device
from .karras import Parameterization
from .limits import format_bytes, require_memory
from .models.denoiser import call_network
from .editing.pipeline_methods import EditingMixin
from .models.modeling import parse_dtype, resolve_dtype_args
from .pipeline_io import load_components, parse_default_timesteps, save_components
from .postprocess import OutputType, check_output_type, postprocess
from .rng import GeneratorArg, check_generator, randint, randn

ClassLabels = Union[int, Sequence[int], Tensor, None]
StepCallback = Callable[[int, Tensor, Tensor], None]


@dataclass
class ImagePipelineOutput:
    """What a pipeline call returns: ``images`` (PIL list, NumPy array or tensor); ``out[0]`` also works."""

    images: Union[list, np.ndarray, Tensor]

    def __getitem__(self, key: Union[int, str]) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple:
        """The fields as a tuple, as ``return_dict=False`` gives them."""
        return (self.images,)


def sampler_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the sampler's state for a network in ``model_dtype``: float32 for half types, else unchanged."""
    return torch.float32 if model_dtype in (torch.float16, torch.bfloat16) else model_dtype


def unwrap_model(module: Any) -> Any:
    """The module inside a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``), else the module itself."""
    return getattr(module, "_orig_mod", module)


class ConsistencyModelPipeline(EditingMixin):
    """Unconditional or class-conditional sampling with a consistency model, call-compatible with diffusers'."""

    def __init__(self, unet: nn.Module, scheduler: Any) -> None:
        self.unet = unet
        self.scheduler = scheduler
        #: step count (as a string) -> tuned timesteps used when a caller passes that count and no timesteps.
        self.default_timesteps: dict[str, list[int]] = {}
        self._progress_bar_config: dict[str, Any] = {}
        self._silence_dtype_warnings = False
        #: "consistency", or "edm" for a diffusion teacher saved by ``cmkit train --method edm`` (not sampleable here).
        self.parameterization: Parameterization = "consistency"

    # ----- components, device and dtype -------------------------------------------------------------------
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
        config = getattr(model, "config", None)
        n = getattr(config, "num_class_embeds", None) if config is not None else None
        if n is None:
            n = getattr(model, "num_class_embeds", None)
        return int(n) if n is not None else None

    def to(self, *args: Any, **kwargs: Any) -> "ConsistencyModelPipeline":
        """Move the network: ``to(device)``, ``to(dtype)``, ``to(device, dtype)`` or ``to(device=..., dtype=...)``.

        ``silence_dtype_warnings=True`` (diffusers' flag) turns off the float16-on-CPU warning.
        """
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        if "silence_dtype_warnings" in kwargs:
            self._silence_dtype_warnings = bool(kwargs.pop("silence_dtype_warnings"))
        if kwargs:
            raise TypeError(f"to() got unexpected keyword arguments: {', '.join(kwargs)}")
        if len(args) > 2:
            raise ValueError("to() takes at most two positional arguments: device and dtype")
        if len(args) == 2:
            if isinstance(args[0], torch.dtype):
                raise ValueError("with two positional arguments, pass the device first and the dtype second")
            pos_device, pos_dtype = args
        elif len(args) == 1:
            pos_device, pos_dtype = (None, args[0]) if isinstance(args[0], torch.dtype) else (args[0], None)
        else:
            pos_device, pos_dtype = None, None
        if device is not None and pos_device is not None:
            raise ValueError("device was passed both positionally and as a keyword; pass it once")
        if dtype is not None and pos_dtype is not None:
            raise ValueError("dtype was passed both positionally and as a keyword; pass it once")
        device = device if device is not None else pos_device
        dtype = parse_dtype(dtype if dtype is not None else pos_dtype)
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"a pipeline dtype must be a floating point type, got {dtype}")
        target = None if device is None else parse_device(device)
        if target is not None and target.type != self.device.type:
            self._require_weights_fit(target, dtype or self.dtype)
        if device is not None or dtype is not None:
            self.unet.to(device=target, dtype=dtype)
        return self

    def _require_weights_fit(self, device: torch.device, dtype: torch.dtype) -> None:
        """Refuse to move the network to ``device`` when its weights alone exceed the memory there."""
        params = self.model.parameters() if isinstance(self.model, nn.Module) else ()
        nbytes = sum(p.numel() * (dtype.itemsize if p.is_floating_point() else p.element_size()) for p in params)
        require_memory(nbytes, f"the network's weights ({format_bytes(nbytes)} in {dtype})",
                       "use a smaller dtype (e.g. bfloat16), a device with more memory, or the CPU", device)

    def require_batch_fits(self, batch_size: int, sample_shape: tuple[int, ...]) -> None:
        """Refuse a batch whose sampler state and network activations cannot fit the device's memory.

        The estimate is a lower bound: four float32 copies of the batch (sample, network input and output, noise)
        plus the activations the network reports through ``activation_floats(sample_shape)`` when it has one.
        """
        per_sample = 4 * 4 * int(np.prod(sample_shape))
        activation_floats = getattr(self.model, "activation_floats", None)
        if callable(activation_floats):
            per_sample += int(activation_floats(sample_shape)) * self.dtype.itemsize
        require_memory(
            batch_size * per_sample,
            f"a batch of {batch_size:,} samples of shape {tuple(sample_shape)}",
            "lower the batch size, or draw the samples in several smaller batches",
            self.device,
        )

    # ----- progress bar -----------------------------------------------------------------------------------
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options passed to ``tqdm`` for the progress bar over steps (e.g. ``disable=True``, ``leave=False``)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, total: int):
        """A tqdm bar over ``total`` steps, configured by :meth:`set_progress_bar_config`."""
        from tqdm.auto import tqdm

        return tqdm(total=total, **self._progress_bar_config)

    # ----- loading and saving -----------------------------------------------------------------------------
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
        components, defaults, parameterization = load_components(pretrained_model_name_or_path)
        unet = components["unet"]
        if isinstance(unet, nn.Module):
            unet.eval()
        pipe = cls(**components)
        pipe.default_timesteps = defaults
        pipe.parameterization = parameterization
        if target_dtype is not None or device is not None:
            pipe.to(device=device, dtype=target_dtype)
        return pipe

    def save_pretrained(self, save_directory: Union[str, os.PathLike], safe_serialization: bool = True) -> None:
        """Write ``model_index.json``, ``unet/`` and ``scheduler/`` in diffusers' layout (safetensors weights)."""
        if not safe_serialization:
            raise ValueError("cmkit writes weights only as safetensors; leave safe_serialization=True")
        save_components(save_directory, self.components, self.default_timesteps, self.parameterization)

    def set_default_timesteps(self, num_inference_steps: int, timesteps: Optional[Sequence[int]]) -> None:
        """Use ``timesteps`` whenever a call asks for ``num_inference_steps`` steps without timesteps (None clears)."""
        key = str(int(num_inference_steps))
        if timesteps is None:
            self.default_timesteps.pop(key, None)
            return
        self.default_timesteps.update(parse_default_timesteps({key: list(timesteps)}, "set_default_timesteps"))

    # ----- the sampling call ------------------------------------------------------------------------------
    def check_inputs(
        self,
        num_inference_steps: Optional[int],
        timesteps: Optional[Sequence[int]],
        latents: Optional[Tensor],
        batch_size: int,
        sample_shape: tuple[int, ...],
        callback_steps: Any,
        output_type: str,
        generator: GeneratorArg,
    ) -> None:
        """Raise a ValueError for call arguments diffusers rejects (and a few it would mishandle).

        A generator that is not a ``torch.Generator`` and latents that are not a tensor are TypeErrors.
        """
        check_generator(generator)
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Exactly one of `num_inference_steps` or `timesteps` must be supplied.")
        if num_inference_steps is not None and timesteps is not None:
            warnings.warn(
                f"both num_inference_steps={num_inference_steps} and timesteps={list(timesteps)} were given; "
                "timesteps are used",
                stacklevel=3,
            )
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if latents is not None:
            expected = (batch_size, *sample_shape)
            if not isinstance(latents, Tensor):
                raise TypeError(
                    f"latents must be a torch.Tensor (or a NumPy array) of shape {expected}, got "
                    f"{type(latents).__name__}"
                )
            if tuple(latents.shape) != expected:
                raise ValueError(f"The shape of latents is {tuple(latents.shape)} but is expected to be {expected}.")
            if not latents.is_floating_point():
                raise ValueError(f"latents must be floating point (standard normal noise), got dtype {latents.dtype}")
            if not bool(torch.isfinite(latents).all()):
                raise ValueError(
                    "latents contain NaN or infinite values, which would give a NaN image; pass finite standard "
                    "normal noise, e.g. torch.randn(shape, generator=torch.Generator().manual_seed(0))"
                )
        if isinstance(callback_steps, bool) or not isinstance(callback_steps, int) or callback_steps <= 0:
            raise ValueError(
                f"`callback_steps` has to be a positive integer but is {callback_steps!r} of type {type(callback_steps)}."
            )
        if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
            raise ValueError(
                f"got a list of {len(generator)} generators for batch_size={batch_size}; pass one generator or "
                "exactly one per sample"
            )
        check_output_type(output_type, sample_shape)

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
        return latents * self.scheduler.init_noise_sigma

    def prepare_class_labels(
        self, batch_size: int, device: torch.device, class_labels: ClassLabels, generator: GeneratorArg = None
    ) -> Optional[Tensor]:
        """Class labels for a class-conditional model (drawn from ``generator`` when missing), else None."""
        num_classes = self.num_classes
        if num_classes is None:
            if class_labels is not None:
                warnings.warn("class_labels are ignored: this model is not class-conditional", stacklevel=3)
            return None
        if class_labels is None:
            return randint(num_classes, batch_size, generator, device=device)
        if isinstance(class_labels, numbers.Integral) and not isinstance(class_labels, bool):
            if batch_size != 1:
                raise ValueError(
                    f"an int class label needs batch_size=1 (got {batch_size}); pass a list, "
                    f"e.g. class_labels=[{int(class_labels)}] * {batch_size}"
                )
            labels = torch.tensor([int(class_labels)], dtype=torch.int)
        elif isinstance(class_labels, Tensor):
            if class_labels.is_floating_point() or class_labels.is_complex():
                raise ValueError(f"class_labels must be integers, got a {class_labels.dtype} tensor")
            labels = class_labels.reshape(1) if class_labels.ndim == 0 else class_labels
        elif isinstance(class_labels, (list, tuple, np.ndarray)):
            labels = torch.tensor([int(c) for c in np.asarray(class_labels).reshape(-1)], dtype=torch.int)
        else:
            raise ValueError(f"class_labels must be an int, a list of ints or a tensor, got {type(class_labels).__name__}")
        if labels.ndim != 1 or len(labels) not in (1, batch_size):
            raise ValueError(
                f"got {tuple(labels.shape)} class labels for batch_size={batch_size}; pass one label or one per sample"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"class labels must lie in [0, {num_classes - 1}], got {labels.tolist()}")
        return labels.to(device)

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
        if self.parameterization != "consistency":
            raise ValueError(
                "this pipeline holds an EDM diffusion teacher (cmkit_parameterization 'edm'), not a consistency "
                "model, so consistency sampling would give wrong images. Sample it with the Heun ODE solver: "
                "`cmkit eval --model DIR` or cmkit.metrics.generate.generate_heun_samples(pipe, ...); or distil it "
                "into a consistency model with `cmkit train --method cd --teacher DIR`."
            )

    def _warn_slow_dtype(self, dtype: torch.dtype, device: torch.device) -> None:
        if dtype == torch.float16 and device.type == "cpu" and not self._silence_dtype_warnings:
            warnings.warn(
                "sampling in float16 on a CPU is very slow (about 1000x slower than float32 matrix products "
                "here); use torch.bfloat16 on CPU, or float16 on a GPU",
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
    ) -> Union[ImagePipelineOutput, tuple]:
        """Generate ``batch_size`` samples in ``num_inference_steps`` steps (or at the given ``timesteps``).

        ``timesteps`` are indices into the scheduler's training grid, counted from sigma_max, strictly
        descending (e.g. ``[22, 0]`` for cd_imagenet64). ``callback(i, t, sample)`` runs every
        ``callback_steps`` steps. Returns ``ImagePipelineOutput(images=...)`` or ``(images,)``.
        """
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
        schedule = self._set_timesteps(num_inference_steps, timesteps, device)

        with self.progress_bar(total=len(schedule)) as bar:
            for i, t in enumerate(schedule):
                model_input = self.scheduler.scale_model_input(sample, t).to(dtype)
                model_output = call_network(self.unet, model_input, t, labels).to(state_dtype)
                sample = self.scheduler.step(model_output, t, sample, generator=generator)[0]
                bar.update()
                if callback is not None and i % callback_steps == 0:
                    callback(i, t, sample)

        images = postprocess(sample.to(dtype), output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
