"""Write a trained network as a pipeline directory that ``ConsistencyModelPipeline.from_pretrained`` loads.

Layout (diffusers'): ``unet/`` (config.json + diffusion_pytorch_model.safetensors), ``scheduler/``
(``CMStochasticIterativeScheduler`` with the run's grid size N and sigma range) and ``model_index.json``.
``model_index.json`` also records ``cmkit_parameterization``: ``"edm"`` marks a diffusion teacher (sampled with
Heun, loadable as ``--teacher``), ``"consistency"`` a consistency model, ``"trigflow"`` an sCM model (sCT / sCD),
saved with an :class:`~cmkit.schedulers.scm.SCMScheduler` instead (its grid is TrigFlow time; ``tau`` is not used),
``"tcd"`` a TCD model, saved with the objective's :class:`~cmkit.schedulers.tcd.TCDScheduler` (``scheduler``) and
its ``sigma_data`` as ``cmkit_sigma_data``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from torch import nn

from ..karras import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, Parameterization, sigma_to_grid_index


def export_pipeline(
    directory: str | os.PathLike,
    net: nn.Module,
    *,
    parameterization: Parameterization,
    num_train_timesteps: int,
    clip_denoised: bool,
    tau: Optional[float] = None,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    sigma_data: float = SIGMA_DATA,
    trigflow_time_input: str = "trigflow",
    scheduler: Optional[Any] = None,
) -> Path:
    """Save ``net`` with a consistency scheduler as a pipeline directory; return the directory."""
    from ..pipeline import ConsistencyModelPipeline
    from ..schedulers.cm import CMStochasticIterativeScheduler

    if parameterization == "tcd":
        if scheduler is None:
            raise ValueError("a TCD model is exported with its TCDScheduler: pass scheduler=objective.export_scheduler()")
        pipe = ConsistencyModelPipeline(unet=net, scheduler=scheduler)
        pipe.parameterization, pipe.sigma_data = parameterization, sigma_data
        pipe.save_pretrained(directory)
        return Path(directory)
    if parameterization == "trigflow":
        from ..schedulers.scm import SCMScheduler

        pipe = ConsistencyModelPipeline(unet=net, scheduler=SCMScheduler(sigma_data=sigma_data, time_input=trigflow_time_input))
        pipe.parameterization = parameterization
        pipe.save_pretrained(directory)
        return Path(directory)
    scheduler = CMStochasticIterativeScheduler(
        num_train_timesteps=num_train_timesteps, sigma_min=sigma_min, sigma_max=sigma_max, clip_denoised=clip_denoised
    )
    pipe = ConsistencyModelPipeline(unet=net, scheduler=scheduler)
    pipe.parameterization = parameterization
    if tau is not None:
        tau_index = sigma_to_grid_index(tau, num_train_timesteps, sigma_min, sigma_max, interior=True)
        pipe.set_default_timesteps(2, [tau_index, 0])
    pipe.save_pretrained(directory)
    return Path(directory)
