"""cmkit: consistency models (Song et al., 2023) for sampling, editing, distillation and training.

The public API mirrors diffusers' names so ``from cmkit import ConsistencyModelPipeline`` is a drop-in
replacement. Names are imported lazily so ``import cmkit`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ConsistencyModelPipeline": "cmkit.pipeline",
    "ImagePipelineOutput": "cmkit.pipeline_types",
    "CMStochasticIterativeScheduler": "cmkit.schedulers.cm",
    "TCDScheduler": "cmkit.schedulers.tcd",
    "SCMScheduler": "cmkit.schedulers.scm",
    "UNet2DModel": "cmkit.models.unet",
    "SongUNet": "cmkit.models.song_unet",
    "DhariwalUNet": "cmkit.models.dhariwal_unet",
    "EDM2UNet": "cmkit.models.edm2_unet",
    "Denoiser": "cmkit.models.denoiser",
    "karras_sigmas": "cmkit.karras",
    "sample_consistency": "cmkit.sampling",
    "sample_heun": "cmkit.sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cmkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
