"""Zero-shot editing with a pipeline: ``inpaint(pipe, image, mask)`` and friends (the pipeline's editing methods).

Each function loads its inputs (:mod:`cmkit.editing.inputs`), builds a task (:mod:`cmkit.editing.presets`) and
runs Algorithm 4 with the pipeline's consistency function ``f = Denoiser(unet, "consistency", sigma_min,
sigma_data)`` (the math the scheduler applies). A pipeline is anything with the members of
:class:`EditablePipeline`; :class:`cmkit.ConsistencyModelPipeline` delegates its methods here, so this module
never imports the pipeline. The options every task shares are one :class:`EditOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Protocol, Sequence, Union, runtime_checkable

import torch
from torch import Tensor

from .._validate import is_int, require_int
from ..karras import RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from ..models.denoiser import Denoiser
from ..pipeline_types import ClassLabels, PipelineResult, pipeline_output
from ..postprocess import OutputType, check_output_type, postprocess
from ..rng import GeneratorArg, randn
from ..sampling import cpu_float64
from .algorithm import ConsistencyFn
from .inputs import ImageInput, load_image, load_mask
from .presets import EditTask, colorization, denoising, inpainting, interpolation, stroke_editing, super_resolution

#: default number of steps per task (Karras-spaced from the task's first sigma; see docs/editing.md).
DEFAULT_STEPS: dict[str, int] = {
    "inpaint": 40,
    "colorize": 40,
    "super_resolve": 40,
    "denoise": 1,
    "interpolate": 1,
    "stroke_edit": 2,
}


@dataclass(frozen=True)
class EditOptions:
    """The options every editing task takes, as keyword arguments of the pipeline's editing methods."""

    #: steps, Karras-spaced from the task's first sigma (None: the task's entry in :data:`DEFAULT_STEPS`).
    num_inference_steps: Optional[int] = None
    #: an explicit strictly descending schedule in the model's sigma range (replaces ``num_inference_steps``).
    sigmas: Optional[Sequence[float]] = None
    #: one label for every image, one per image, or None (drawn from ``generator`` for a class-conditional model).
    class_labels: ClassLabels = None
    generator: GeneratorArg = None
    output_type: OutputType = "pil"
    #: False returns ``(images,)`` instead of an ``ImagePipelineOutput``.
    return_dict: bool = True


@runtime_checkable
class EditablePipeline(Protocol):
    """What editing needs from a pipeline: its network, scheduler config, device, dtype and input helpers."""

    unet: Any
    scheduler: Any

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def sample_shape(self) -> tuple[int, ...]: ...

    @property
    def num_classes(self) -> Optional[int]: ...

    def require_consistency_model(self) -> None: ...

    def require_batch_fits(self, batch_size: int, sample_shape: tuple[int, ...]) -> None: ...

    def prepare_class_labels(
        self, batch_size: int, device: torch.device, class_labels: ClassLabels, generator: GeneratorArg = None
    ) -> Optional[Tensor]: ...


def _sigma_config(pipe: EditablePipeline) -> dict[str, float]:
    config = pipe.scheduler.config
    if getattr(pipe, "parameterization", None) == "tcd":  # the VP schedule's sigmas (cmkit.vp), timestep 0 to T - 1
        sigmas = pipe.scheduler.edm_sigmas()
        return {"sigma_min": float(sigmas[0]), "sigma_max": float(sigmas[-1]), "sigma_data": float(pipe.sigma_data),
                "rho": RHO}
    return {
        "sigma_min": float(getattr(config, "sigma_min", SIGMA_MIN)),
        "sigma_max": float(getattr(config, "sigma_max", SIGMA_MAX)),
        "sigma_data": float(getattr(config, "sigma_data", SIGMA_DATA)),
        "rho": float(getattr(config, "rho", RHO)),
    }


def consistency_function(pipe: EditablePipeline) -> ConsistencyFn:
    """``f(x, sigma, class_labels)`` of the pipeline's network, computed in float32 around the network's dtype."""
    pipe.require_consistency_model()
    cfg = _sigma_config(pipe)
    # a TrigFlow (sCM) model is edited through its sigma-space view (Denoiser "trigflow"); the math is the same
    # a TCD model is its EDM denoiser D(x, sigma, s) with the target s at timestep 0, where its sampling ends
    parameterization = getattr(pipe, "parameterization", None)
    if parameterization not in ("trigflow", "tcd"):
        parameterization = "consistency"
    time_input = getattr(pipe.scheduler.config, "time_input", "trigflow") if parameterization == "trigflow" else "trigflow"
    f = Denoiser(pipe.unet, parameterization, cfg["sigma_min"], cfg["sigma_data"], trigflow_time_input=time_input)
    target = cfg["sigma_min"] if parameterization == "tcd" else None
    dtype = pipe.dtype

    def fn(x: Tensor, sigma: Tensor, class_labels: Optional[Tensor] = None) -> Tensor:
        return f(x.to(dtype), sigma, class_labels, target).float()

    return fn


def _check_sigma(pipe: EditablePipeline, sigma: float) -> None:
    cfg = _sigma_config(pipe)
    if not isinstance(sigma, (int, float)) or not cfg["sigma_min"] <= float(sigma) <= cfg["sigma_max"]:
        raise ValueError(
            f"sigma = {sigma!r} must be a number in the model's range [{cfg['sigma_min']:g}, {cfg['sigma_max']:g}]"
        )


def _image_size(pipe: EditablePipeline) -> tuple[int, int, int]:
    shape = pipe.sample_shape
    if len(shape) != 3:
        raise ValueError(f"editing needs an image model, but this model makes samples of shape {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _load(
    pipe: EditablePipeline, image: ImageInput, name: str = "image", size: Optional[tuple[int, int]] = None
) -> Tensor:
    channels, height, width = _image_size(pipe)
    return load_image(image, channels=channels, size=size or (height, width), name=name)


def _run(pipe: EditablePipeline, task: EditTask, task_name: str, options: EditOptions) -> PipelineResult:
    """Run ``task`` with the pipeline's consistency function on its device; return the pipeline's output types."""
    o = options
    cfg = _sigma_config(pipe)
    check_output_type(o.output_type, tuple(task.reference.shape[1:]))
    if o.sigmas is None:
        steps = DEFAULT_STEPS[task_name] if o.num_inference_steps is None else o.num_inference_steps
        schedule = task.sigmas(steps, cfg["sigma_min"], cfg["sigma_max"], cfg["rho"])
    else:
        schedule = cpu_float64(o.sigmas if isinstance(o.sigmas, Tensor) else list(o.sigmas))
    device = pipe.device
    batch = task.reference.shape[0]
    pipe.require_batch_fits(batch, tuple(task.reference.shape[1:]))
    class_labels = [o.class_labels] * batch if is_int(o.class_labels) else o.class_labels  # one label for all
    labels = pipe.prepare_class_labels(batch, device, class_labels, o.generator)
    if labels is not None and len(labels) == 1 and batch > 1:
        labels = labels.expand(batch)
    start = None if task.start is None else task.start.to(device)
    moved = EditTask(task.reference.to(device), task.transform, task.mask.to(device), start, task.sigma_start)
    clip = bool(getattr(pipe.scheduler.config, "clip_denoised", True))
    out = moved.run(
        consistency_function(pipe), schedule, o.generator, labels,
        sigma_min=cfg["sigma_min"], sigma_max=cfg["sigma_max"], clip_denoised=clip,
    )
    return pipeline_output(postprocess(out, o.output_type), o.return_dict)


@torch.no_grad()
def inpaint(pipe: EditablePipeline, image: ImageInput, mask: ImageInput, options: EditOptions) -> PipelineResult:
    """Fill the region where ``mask`` is white (>= 0.5) and keep the rest of ``image`` exactly."""
    y = _load(pipe, image)
    m = load_mask(mask, size=tuple(y.shape[2:]))
    if m.shape[0] not in (1, y.shape[0]):
        raise ValueError(f"got {m.shape[0]} masks for {y.shape[0]} images; pass one mask or one per image")
    return _run(pipe, inpainting(y, m), "inpaint", options)


@torch.no_grad()
def colorize(pipe: EditablePipeline, image: ImageInput, options: EditOptions) -> PipelineResult:
    """Colour a grayscale ``image`` (an RGB image is reduced to its luma): keep luma, generate chroma."""
    channels, height, width = _image_size(pipe)
    if channels != 3:
        raise ValueError(
            f"colorization needs a model trained on 3-channel RGB images, but this model has {channels} channel(s)"
        )
    y = load_image(image, channels=1, size=(height, width), rgb_to_gray=True)
    return _run(pipe, colorization(y), "colorize", options)


@torch.no_grad()
def super_resolve(pipe: EditablePipeline, image: ImageInput, factor: int, options: EditOptions) -> PipelineResult:
    """Upsample a low-resolution ``image`` by the integer ``factor`` to the model's resolution."""
    _, height, width = _image_size(pipe)
    factor = require_int("the super-resolution factor", factor, 2, allow_float=False)
    if height % factor or width % factor:
        raise ValueError(
            f"factor {factor} does not divide the model resolution {height}x{width}; pick a factor that divides it"
        )
    low = _load(pipe, image, size=(height // factor, width // factor))
    return _run(pipe, super_resolution(low, factor), "super_resolve", options)


@torch.no_grad()
def denoise(
    pipe: EditablePipeline, image: Union[ImageInput, Tensor], sigma: float, options: EditOptions
) -> PipelineResult:
    """Remove Gaussian noise of standard deviation ``sigma`` (in [-1, 1] pixel units) from ``image``.

    Image files clip the noise to the pixel range; pass unclipped ``clean + sigma z`` tensors to
    :func:`denoise_latents`.
    """
    _check_sigma(pipe, sigma)
    return denoise_latents(pipe, _load(pipe, image), sigma, options)


@torch.no_grad()
def denoise_latents(pipe: EditablePipeline, noisy: Tensor, sigma: float, options: EditOptions) -> PipelineResult:
    """Denoise ``noisy = clean + sigma z`` given in model space ([-1, 1] plus noise, unclipped) as ``[B, C, H, W]``."""
    _check_sigma(pipe, sigma)
    expected = _image_size(pipe)
    if not isinstance(noisy, Tensor):
        raise TypeError(f"noisy must be a torch.Tensor [B, C, H, W] in model space, got {type(noisy).__name__}")
    if noisy.ndim != 4 or tuple(noisy.shape[1:]) != expected:
        raise ValueError(f"noisy must be [B, {expected[0]}, {expected[1]}, {expected[2]}], got {tuple(noisy.shape)}")
    if not bool(torch.isfinite(noisy).all()):
        raise ValueError("noisy contains NaN or infinite values; pass finite pixels (clean + sigma z in model space)")
    return _run(pipe, denoising(noisy.float(), float(sigma)), "denoise", options)


@torch.no_grad()
def stroke_edit(pipe: EditablePipeline, image: ImageInput, sigma: float, options: EditOptions) -> PipelineResult:
    """Stroke-guided editing (SDEdit): noise a stroke painting to ``sigma`` and let the model make it realistic."""
    # on the pipeline's device, so that a generator there can draw the noise (a CPU generator still can)
    strokes = _load(pipe, image).to(pipe.device)
    _check_sigma(pipe, sigma)
    return _run(pipe, stroke_editing(strokes, float(sigma), options.generator), "stroke_edit", options)


@torch.no_grad()
def interpolate(
    pipe: EditablePipeline,
    first: Optional[ImageInput],
    second: Optional[ImageInput],
    num_images: int,
    sigma: Optional[float],
    options: EditOptions,
) -> PipelineResult:
    """``num_images`` samples along a slerp between two latents (two fresh noises, or two images noised to ``sigma``).

    With no images, two noises are drawn from the generator and ``sigma`` defaults to ``sigma_max``; with two
    images, ``sigma`` is required (e.g. 1-5: lower keeps the endpoints closer to the images). A class-conditional
    model uses one class for the whole path (drawn from the generator if not given).
    """
    channels, height, width = _image_size(pipe)
    generator, device = options.generator, pipe.device
    if options.class_labels is None and pipe.num_classes is not None:
        # one class for the whole path, so the images differ only by their latent
        labels = pipe.prepare_class_labels(1, device, None, generator)
        options = replace(options, class_labels=labels)
    if (first is None) != (second is None):
        raise ValueError("pass both images to interpolate between them, or neither to interpolate between noises")
    if sigma is not None:
        _check_sigma(pipe, sigma)
    num_images = require_int("num_images", num_images, 2, " (interpolation's two endpoints and those between)")
    pipe.require_batch_fits(num_images, (channels, height, width))
    if first is None:
        level = _sigma_config(pipe)["sigma_max"] if sigma is None else float(sigma)
        shape = (1, channels, height, width)
        # a generator on the pipeline's device draws there; a CPU generator draws the same noise on any device
        z0 = randn(shape, generator=generator, device=device, dtype=torch.float32)
        z1 = randn(shape, generator=generator, device=device, dtype=torch.float32)
        task = interpolation(z0, z1, num_images, level, kind="noise")
    else:
        if sigma is None:
            raise ValueError("interpolating between images needs sigma, the noise level of their latents (e.g. 2.0)")
        a, b = _load(pipe, first, "first").to(device), _load(pipe, second, "second").to(device)
        if a.shape[0] != 1 or b.shape[0] != 1:
            raise ValueError("interpolate takes one first image and one second image")
        task = interpolation(a, b, num_images, float(sigma), generator, kind="images")
    return _run(pipe, task, "interpolate", options)
