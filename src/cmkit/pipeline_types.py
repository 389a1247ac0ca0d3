"""The types a pipeline call takes and returns, below the pipeline so that editing and the CLI can use them too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np
from torch import Tensor

from .postprocess import OutputType

__all__ = ["ClassLabels", "ImagePipelineOutput", "OutputType", "PipelineResult", "StepCallback"]

#: class labels as a caller gives them: one int, one per sample, a tensor, or None (drawn from the generator).
ClassLabels = Union[int, Sequence[int], Tensor, None]
#: ``callback(i, t, sample)``, run every ``callback_steps`` steps of a pipeline call.
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


#: a pipeline call's result: the output, or ``(images,)`` with ``return_dict=False``.
PipelineResult = Union[ImagePipelineOutput, tuple]


def pipeline_output(images: Union[list, np.ndarray, Tensor], return_dict: bool) -> PipelineResult:
    """``ImagePipelineOutput(images)``, or ``(images,)`` when ``return_dict`` is False (diffusers' convention)."""
    return ImagePipelineOutput(images=images) if return_dict else (images,)
