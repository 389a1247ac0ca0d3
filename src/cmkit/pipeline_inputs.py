"""A pipeline's call and ``to()`` arguments, checked and converted before anything is drawn or moved: diffusers'
checks plus a few of cmkit's own (finite latents, class labels in range, generator types); each error names the fix."""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ._validate import is_int
from .devices import parse_device
from .hardware import parse_dtype
from .pipeline_types import ClassLabels
from .postprocess import check_output_type
from .rng import GeneratorArg, check_generator, randint


def check_call_inputs(
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
            stacklevel=4,
        )
    if not is_int(batch_size) or batch_size < 1:
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
    if not is_int(callback_steps) or callback_steps <= 0:
        raise ValueError(
            f"`callback_steps` has to be a positive integer but is {callback_steps!r} of type {type(callback_steps)}."
        )
    if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
        raise ValueError(
            f"got a list of {len(generator)} generators for batch_size={batch_size}; pass one generator or "
            "exactly one per sample"
        )
    check_output_type(output_type, sample_shape)


def class_labels_tensor(
    num_classes: Optional[int],
    batch_size: int,
    device: torch.device,
    class_labels: ClassLabels,
    generator: GeneratorArg = None,
) -> Optional[Tensor]:
    """Class labels for a model with ``num_classes`` classes (drawn from ``generator`` when missing); None for an
    unconditional model (``num_classes`` None), which warns if labels were given."""
    if num_classes is None:
        if class_labels is not None:
            warnings.warn("class_labels are ignored: this model is not class-conditional", stacklevel=4)
        return None
    if class_labels is None:
        return randint(num_classes, batch_size, generator, device=device)
    if is_int(class_labels):
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


def parse_to_arguments(
    args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[Optional[torch.device], Optional[torch.dtype]]:
    """The ``(device, dtype)`` of ``pipe.to(*args, **kwargs)``: ``to(device)``, ``to(dtype)``, ``to(device, dtype)``
    or ``to(device=..., dtype=...)``; None where not given."""
    kwargs = dict(kwargs)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
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
    return (None if device is None else parse_device(device)), dtype
