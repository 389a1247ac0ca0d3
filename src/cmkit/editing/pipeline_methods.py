"""Editing methods on :class:`cmkit.ConsistencyModelPipeline`: ``pipe.inpaint(image, mask)`` and friends.

Each method loads its inputs (:mod:`cmkit.editing.inputs`), builds a task (:mod:`cmkit.editing.presets`),
runs Algorithm 4 with the pipeline's consistency function ``f = Denoiser(unet, "consistency", sigma_min,
sigma_data)`` (the math the scheduler applies) and returns the pipeline's output types.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from ..karras import RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from ..models.denoiser import Denoiser
from ..postprocess import OutputType, check_output_type, postprocess
from ..rng import GeneratorArg, randn
from ..sampling import cpu_float64
from .inputs import ImageInput, load_image, load_mask
from .presets import (
    EditTask,
    colorization,
    denoising,
    inpainting,
    interpolation,
    stroke_editing,
    super_resolution,
)

ClassLabels = Union[int, Sequence[int], Tensor, None]

#: default number of steps per task (Karras-spaced from the task's first sigma; see docs/editing.md).
DEFAULT_STEPS: dict[str, int] = {
    "inpaint": 40,
    "colorize": 40,
    "super_resolve": 40,
    "denoise": 1,
    "interpolate": 1,
    "stroke_edit": 2,
}


class EditingMixin:
    """Zero-shot editing (CM Algorithm 4) for a pipeline with ``unet``, ``scheduler`` and ``prepare_class_labels``."""

    unet: Any
    scheduler: Any

    # ----- the model and its range --------------------------------------------------------------------------
    def _sigma_config(self) -> dict[str, float]:
        config = self.scheduler.config
        return {
            "sigma_min": float(getattr(config, "sigma_min", SIGMA_MIN)),
            "sigma_max": float(getattr(config, "sigma_max", SIGMA_MAX)),
            "sigma_data": float(getattr(config, "sigma_data", SIGMA_DATA)),
            "rho": float(getattr(config, "rho", RHO)),
        }

    def consistency_function(self):
        """``f(x, sigma, class_labels)`` of the pipeline's network, computed in float32 around the network's dtype."""
        self.require_consistency_model()  # type: ignore[attr-defined]
        cfg = self._sigma_config()
        f = Denoiser(self.unet, "consistency", cfg["sigma_min"], cfg["sigma_data"])
        dtype = self.dtype  # type: ignore[attr-defined]

        def fn(x: Tensor, sigma: Tensor, class_labels: Optional[Tensor] = None) -> Tensor:
            return f(x.to(dtype), sigma, class_labels).float()

        return fn

    def _check_sigma(self, sigma: float) -> None:
        cfg = self._sigma_config()
        if not isinstance(sigma, (int, float)) or not cfg["sigma_min"] <= float(sigma) <= cfg["sigma_max"]:
            raise ValueError(
                f"sigma = {sigma!r} must be a number in the model's range [{cfg['sigma_min']:g}, {cfg['sigma_max']:g}]"
            )

    def _image_size(self) -> tuple[int, int, int]:
        shape = self.sample_shape  # type: ignore[attr-defined]
        if len(shape) != 3:
            raise ValueError(f"editing needs an image model, but this model makes samples of shape {tuple(shape)}")
        return int(shape[0]), int(shape[1]), int(shape[2])

    def _run(
        self,
        task: EditTask,
        task_name: str,
        num_inference_steps: Optional[int],
        sigmas: Optional[Sequence[float]],
        class_labels: ClassLabels,
        generator: GeneratorArg,
        output_type: OutputType,
        return_dict: bool,
    ):
        from ..pipeline import ImagePipelineOutput

        cfg = self._sigma_config()
        check_output_type(output_type, tuple(task.reference.shape[1:]))
        if sigmas is None:
            steps = DEFAULT_STEPS[task_name] if num_inference_steps is None else num_inference_steps
            schedule = task.sigmas(steps, cfg["sigma_min"], cfg["sigma_max"], cfg["rho"])
        else:
            schedule = cpu_float64(sigmas if isinstance(sigmas, Tensor) else list(sigmas))
        device = self.device  # type: ignore[attr-defined]
        batch = task.reference.shape[0]
        self.require_batch_fits(batch, tuple(task.reference.shape[1:]))  # type: ignore[attr-defined]
        if isinstance(class_labels, int) and not isinstance(class_labels, bool):
            class_labels = [class_labels] * batch  # one label for every image
        labels = self.prepare_class_labels(batch, device, class_labels, generator)  # type: ignore[attr-defined]
        if labels is not None and len(labels) == 1 and batch > 1:
            labels = labels.expand(batch)
        moved = EditTask(
            task.reference.to(device),
            task.transform,
            task.mask.to(device),
            None if task.start is None else task.start.to(device),
            task.sigma_start,
        )
        clip = bool(getattr(self.scheduler.config, "clip_denoised", True))
        out = moved.run(
            self.consistency_function(), schedule, generator, labels,
            sigma_min=cfg["sigma_min"], sigma_max=cfg["sigma_max"], clip_denoised=clip,
        )
        images = postprocess(out, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _load(self, image: ImageInput, name: str = "image", size: Optional[tuple[int, int]] = None) -> Tensor:
        channels, height, width = self._image_size()
        return load_image(image, channels=channels, size=size or (height, width), name=name)

    # ----- the tasks ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def inpaint(
        self,
        image: ImageInput,
        mask: ImageInput,
        *,
        num_inference_steps: Optional[int] = None,
        sigmas: Optional[Sequence[float]] = None,
        class_labels: ClassLabels = None,
        generator: GeneratorArg = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """Fill the region where ``mask`` is white (>= 0.5) and keep the rest of ``image`` exactly."""
        y = self._load(image)
        m = load_mask(mask, size=tuple(y.shape[2:]))
        if m.shape[0] not in (1, y.shape[0]):
            raise ValueError(f"got {m.shape[0]} masks for {y.shape[0]} images; pass one mask or one per image")
        return self._run(inpainting(y, m), "inpaint", num_inference_steps, sigmas, class_labels, generator,
                         output_type, return_dict)

    @torch.no_grad()
    def colorize(
        self,
        image: ImageInput,
        *,
        num_inference_steps: Optional[int] = None,
        sigmas: Optional[Sequence[float]] = None,
        class_labels: ClassLabels = None,
        generator: GeneratorArg = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """Colour a grayscale ``image`` (an RGB image is reduced to its luma): keep luma, generate chroma."""
        channels, height, width = self._image_size()
        if channels != 3:
            raise ValueError(
                f"colorization needs a model trained on 3-channel RGB images, but this model has {channels} channel(s)"
            )
        y = load_image(image, channels=1, size=(height, width), rgb_to_gray=True)
        return self._run(colorization(y), "colorize", num_inference_steps, sigmas, class_labels, generator,
                         output_type, return_dict)

    @torch.no_grad()
    def super_resolve(
        self,
        image: ImageInput,
        factor: int,
        *,
        num_inference_steps: Optional[int] = None,
        sigmas: Optional[Sequence[float]] = None,
        class_labels: ClassLabels = None,
        generator: GeneratorArg = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """Upsample a low-resolution ``image`` by the integer ``factor`` to the model's resolution."""
        _, height, width = self._image_size()
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
            raise ValueError(f"the super-resolution factor must be an integer >= 2, got {factor!r}")
        if height % factor or width % factor:
            raise ValueError(
                f"factor {factor} does not divide the model resolution {height}x{width}; pick a factor that divides it"
            )
        low = self._load(image, size=(height // factor, width // factor))
        return self._run(super_resolution(low, factor), "super_resolve", num_inference_steps, sigmas, class_labels,
                         generator, output_type, return_dict)

    @torch.no_grad()
    def denoise(
        self,
        image: ImageInput | Tensor,
        sigma: float,
        *,
        num_inference_steps: Optional[int] = None,
        sigmas: Optional[Sequence[float]] = None,
        class_labels: ClassLabels = None,
        generator: GeneratorArg = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """Remove Gaussian noise of standard deviation ``sigma`` (in [-1, 1] pixel units) from ``image``.

        Image files clip the noise to the pixel range; pass unclipped ``clean + sigma z`` tensors to
        :meth:`denoise_latents`.
        """
        self._check_sigma(sigma)
        return self.denoise_latents(self._load(image), sigma, num_inference_steps=num_inference_steps, sigmas=sigmas,
                                    class_labels=class_labels, generator=generator, output_type=output_type,
                                    return_dict=return_dict)

    @torch.no_grad()
    def denoise_latents(
        self,
        noisy: Tensor,
        sigma: float,
        *,
        num_inference_steps: Optional[int] = None,
        sigmas: Optional[Sequence[float]] = None,
        class_labels: ClassLabels = None,
        generator: GeneratorArg = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """Denoise ``noisy = clean + sigma z`` given in model space ([-1, 1] plus noise, unclipped) as ``[B, C, H, W]``."""
        self._check_sigma(sigma)
        expected = self._image_size()
        if not isinstance(noisy, Tensor):
            raise TypeError(f"noisy must be a torch.Tensor [B, C, H, W] in model space, got {type(noisy).__name__}")
        if noisy.ndim != 4 or tuple(noisy.shape[1:]) != expected:
            raise ValueError(f"noisy must be [B, {expected[0]}, {expected[1]}, {expected[2]}], got {tuple(noisy.shape)}")
        if not bool(torch.isfinite(noisy).all()):
            raise ValueError("noisy contains NaN or infinite values; pass finite pixels (clean + sigma z in model space)")
        return self._run(denoising(noisy.float(), float(sigma)), "denoise", num_inference_steps, sigmas, class_labels,
                         generator, output_type, return_dict)

    @torch.no_grad()
    def stroke_edit(
        self,
        image: ImageInput,
        sigma: float,
        *,
        num_inference_steps: Optional[int] = None,
        sigmas: Optional[Sequence[float]] = None,
        class_labels: ClassLabels = None,
        generator: GeneratorArg = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """Stroke-guided editing (SDEdit): noise a stroke painting to ``sigma`` and let the model make it realistic."""
        # on the pipeline's device, so that a generator there can draw the noise (a CPU generator still can)
        strokes = self._load(image).to(self.device)  # type: ignore[attr-defined]
        self._check_sigma(sigma)
        task = stroke_editing(strokes, float(sigma), generator)
        return self._run(task, "stroke_edit", num_inference_steps, sigmas, class_labels, generator, output_type,
                         return_dict)

    @torch.no_grad()
    def interpolate(
        self,
        first: Optional[ImageInput] = None,
        second: Optional[ImageInput] = None,
        *,
        num_images: int = 8,
        sigma: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        sigmas: Optional[Sequence[float]] = None,
        class_labels: ClassLabels = None,
        generator: GeneratorArg = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """``num_images`` samples along a slerp between two latents (two fresh noises, or two images noised to ``sigma``).

        With no images, two noises are drawn from ``generator`` and ``sigma`` defaults to ``sigma_max``;
        with two images, ``sigma`` is required (e.g. 1-5: lower keeps the endpoints closer to the images).
        A class-conditional model uses one class for the whole path (drawn from ``generator`` if not given).
        """
        channels, height, width = self._image_size()
        cfg = self._sigma_config()
        if class_labels is None and self.num_classes is not None:  # type: ignore[attr-defined]
            # one class for the whole path, so the images differ only by their latent
            class_labels = self.prepare_class_labels(1, self.device, None, generator)  # type: ignore[attr-defined]
        if (first is None) != (second is None):
            raise ValueError("pass both images to interpolate between them, or neither to interpolate between noises")
        if sigma is not None:
            self._check_sigma(sigma)
        if isinstance(num_images, int) and not isinstance(num_images, bool):
            self.require_batch_fits(num_images, (channels, height, width))  # type: ignore[attr-defined]
        if first is None:
            level = cfg["sigma_max"] if sigma is None else float(sigma)
            shape = (1, channels, height, width)
            # a generator on the pipeline's device draws there; a CPU generator draws the same noise on any device
            device = self.device  # type: ignore[attr-defined]
            z0 = randn(shape, generator=generator, device=device, dtype=torch.float32)
            z1 = randn(shape, generator=generator, device=device, dtype=torch.float32)
            task = interpolation(z0, z1, num_images, level, kind="noise")
        else:
            if sigma is None:
                raise ValueError("interpolating between images needs sigma, the noise level of their latents (e.g. 2.0)")
            device = self.device  # type: ignore[attr-defined]
            a, b = self._load(first, "first").to(device), self._load(second, "second").to(device)
            if a.shape[0] != 1 or b.shape[0] != 1:
                raise ValueError("interpolate takes one first image and one second image")
            task = interpolation(a, b, num_images, float(sigma), generator, kind="images")
        return self._run(task, "interpolate", num_inference_steps, sigmas, class_labels, generator, output_type,
                         return_dict)
