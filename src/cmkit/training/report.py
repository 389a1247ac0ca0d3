"""What a training run shows and leaves behind, beside the loop: sample pictures and the exported pipeline.

The loop (:mod:`cmkit.training.loop`) only steps and checkpoints; it calls these functions at ``sample_every``
steps and at the end. Samples come from :func:`cmkit.sampling.sample_from_noise`, the driver that metrics use
too: one consistency step, or EDM Heun with 18 levels (35 NFE) for a teacher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..data import DataSource
from ..io.atomic import atomic_write_text
from ..karras import SIGMA_MAX
from ..rng import randn
from ..sampling import sample_from_noise
from .config import TrainConfig
from .export import export_pipeline
from .plots import save_image_grid, save_scatter

CONFIG_FILE = "train_config.json"
INFO_FILE = "training_info.json"


@torch.no_grad()
def generate(model: nn.Module, data: DataSource, n: int, seed: int, device: torch.device) -> torch.Tensor:
    """``n`` samples of ``model`` from the seeded noise every report uses; labels cycle through the classes."""
    g = torch.Generator().manual_seed(seed)
    noise = randn((n, *data.sample_shape), generator=g, device=device)
    labels = torch.arange(n, device=device) % data.num_classes if data.num_classes else None
    parameterization = getattr(model, "parameterization", "consistency")
    clip = data.kind == "images" and parameterization != "edm"  # the teacher's grid is clamped when drawn
    return sample_from_noise(model, noise, g, parameterization=parameterization, class_labels=labels,
                             sigma_max=SIGMA_MAX, clip_denoised=clip)


def save_samples(samples: torch.Tensor, data: DataSource, config: TrainConfig, path: Path, step: int) -> Path:
    """A sample grid (images) or scatter plot against fresh data (2-D points) at ``path``."""
    if data.kind == "points" and samples.ndim == 2 and samples.shape[1] == 2:
        reference, _ = data.batch(config.seed + 1, 0, 2000)
        return save_scatter(samples, path, reference, title=f"{config.method}, step {step}")
    if samples.ndim == 4:
        return save_image_grid(samples, path, scale=max(1, 64 // samples.shape[-1]))
    return path


def write_outputs(
    output_dir: Path, config: TrainConfig, model: nn.Module, data: DataSource, *, parameterization: str,
    num_train_timesteps: int, info: dict[str, Any], scheduler: Optional[Any] = None,
) -> Path:
    """The pipeline directory (exported weights + scheduler), ``train_config.json`` and ``training_info.json``."""
    net = getattr(model, "net", model)
    export_pipeline(
        output_dir, net, parameterization=parameterization, num_train_timesteps=num_train_timesteps,
        clip_denoised=data.kind == "images", tau=config.tau, sigma_data=float(getattr(model, "sigma_data", 0.5)),
        trigflow_time_input=getattr(model, "trigflow_time_input", "trigflow"), scheduler=scheduler,
    )
    config.to_json(output_dir / CONFIG_FILE)
    full = {
        "method": config.method,
        "parameterization": parameterization,
        **info,
        "scheduler_num_train_timesteps": num_train_timesteps,
        "sample_shape": list(data.sample_shape),
        "class_names": list(getattr(data, "class_names", [])),
        "num_train_samples": len(data) if hasattr(data, "__len__") else None,
    }
    atomic_write_text(output_dir / INFO_FILE, json.dumps(full, indent=2) + "\n")
    return output_dir
