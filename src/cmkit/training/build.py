"""Turn a :class:`TrainConfig` into the pieces a run needs: data, network, teacher, denoiser and objective."""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Any, Optional

from torch import nn

from ..data import DataSource, build_dataset
from ..karras import SIGMA_DATA, SIGMA_MIN
from ..models.denoiser import Denoiser
from .config import TrainConfig
from .objectives import Objective, method_spec


def build_data(config: TrainConfig) -> DataSource:
    """The training data described by ``config.data`` (``workers`` is how the loop reads them, not what they are)."""
    options = dataclasses.asdict(config.data)
    del options["workers"]
    return build_dataset(**options)


def build_network(config: TrainConfig, data: DataSource) -> nn.Module:
    """A fresh network for ``data``: the MLP for points, a network preset for images (``model='auto'`` picks)."""
    name = config.model
    if name == "auto":
        name = "mlp" if data.kind == "points" else ("tiny" if max(data.sample_shape[1:]) <= 16 else "small")
    num_classes = data.num_classes or None
    options = dict(config.model_options)
    if name == "mlp":
        from ..models.mlp import MLPNet

        return MLPNet(**{"sample_shape": data.sample_shape, "num_class_embeds": num_classes, **options})
    if len(data.sample_shape) != 3:
        raise ValueError(
            f"model {name!r} is a UNet for images, but the data are points of shape {data.sample_shape}; "
            "use model 'mlp'"
        )
    from ..models.presets import NETWORK_PRESETS, build_preset_for_data

    if name not in NETWORK_PRESETS:
        raise ValueError(f"unknown model {name!r}; choose 'auto', 'mlp' or a preset: {', '.join(NETWORK_PRESETS)}")
    channels, height, width = data.sample_shape
    if height != width:
        raise ValueError(
            f"the network presets need square images, got {height}x{width}; train with a square resolution"
        )
    return build_preset_for_data(name, height, channels, num_classes, **options)


def load_denoiser(path: str | os.PathLike) -> Denoiser:
    """A trained network from a pipeline directory, wrapped with the preconditioning recorded in it."""
    from ..pipeline_io import SIGMA_DATA_KEY, read_model_index, read_parameterization
    from ..registry import resolve_component_class
    from ..schedulers.cm import CMStochasticIterativeScheduler

    directory = Path(path)
    index = read_model_index(directory)
    entry = index.get("unet")
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise ValueError(f"{directory / 'model_index.json'} does not name a 'unet' component")
    net = resolve_component_class(entry[0], entry[1], component="unet").from_pretrained(str(directory / "unet"))
    parameterization = read_parameterization(directory)
    scheduler: dict = {}
    if (directory / "scheduler" / CMStochasticIterativeScheduler.config_name).is_file():
        scheduler = CMStochasticIterativeScheduler.load_config(directory, subfolder="scheduler")
    sigma_min = float(scheduler.get("sigma_min", SIGMA_MIN))
    sigma_data = float(scheduler.get("sigma_data", index.get(SIGMA_DATA_KEY) or SIGMA_DATA))
    time_input = scheduler.get("time_input", "trigflow") if parameterization == "trigflow" else "trigflow"
    return Denoiser(net, parameterization, sigma_min=sigma_min, sigma_data=sigma_data, trigflow_time_input=time_input)


def load_teacher(path: str | os.PathLike) -> Denoiser:
    """The frozen EDM teacher: a directory saved by an ``edm`` run (its ``model_index.json`` records parameterization
    "edm"), or an EDM / EDM2 network snapshot ``.pkl`` (read safely, see :mod:`cmkit.convert.edm`)."""
    if Path(path).suffix == ".pkl":
        from ..convert.edm import load_edm_denoiser

        teacher = load_edm_denoiser(path)
    else:
        teacher = load_denoiser(path)
    if teacher.parameterization != "edm":
        raise ValueError(
            f"the teacher {path} is a {teacher.parameterization} model, not an EDM denoiser; CD and ECT distil a "
            "diffusion model: train one with method 'edm' and pass its output directory, or pass an EDM / EDM2 "
            "snapshot .pkl"
        )
    return teacher.eval().requires_grad_(False)


def build_model(config: TrainConfig, data: DataSource, teacher: Optional[Denoiser]) -> Denoiser:
    """The trainable denoiser: the teacher's architecture when there is a teacher, else a fresh network.

    With a teacher, ``model_options`` override the teacher's constructor arguments (e.g. ECT's student dropout 0.2
    over the teacher's 0.13, Geng et al. 2024), and ``model``, unless ``auto``, must name a network of the teacher's
    class: the student is the teacher's network, so a preset of another class would be silently ignored.
    """
    if teacher is not None:
        check_student_model(config.model, teacher.net)
        network = type(teacher.net)
        unknown = sorted(k for k in config.model_options if k not in network.config_keys())
        if unknown:
            raise ValueError(
                f"unknown {network.__name__} argument(s) {unknown} in model_options for the teacher's network; "
                f"valid ones: {sorted(network.config_keys())}"
            )
        defaults = {k: v for k, v in method_spec(config.method).student_config if k in network.config_keys()}
        net = network.from_config({**dict(teacher.net.config), **defaults, **config.model_options})
        shape = tuple(getattr(net, "sample_shape", ()) or ())
        if shape and shape != tuple(data.sample_shape):
            raise ValueError(f"the teacher makes samples of shape {shape} but the data have shape {data.sample_shape}")
    else:
        net = build_network(config, data)
    require_training_fits(config, data, net)
    denoiser = Denoiser(net, method_spec(config.method).parameterization)
    if teacher is not None and denoiser.parameterization == "tcd":
        denoiser.sigma_data = teacher.sigma_data  # the student is the teacher's D(x, sigma), viewed in VP time
    return denoiser


def check_student_model(model: str, teacher_net: nn.Module) -> None:
    """Refuse a ``model`` (``mlp`` or a preset) whose network class is not the teacher's: with a teacher, the student
    is built from the teacher's configuration (plus ``model_options``), not from ``model``."""
    if model == "auto":
        return
    if model == "mlp":
        from ..models.mlp import MLPNet

        network: type = MLPNet
    else:
        from ..models.presets import NETWORK_PRESETS

        if model not in NETWORK_PRESETS:
            raise ValueError(f"unknown model {model!r}; choose 'auto', 'mlp' or a preset: {', '.join(NETWORK_PRESETS)}")
        network = NETWORK_PRESETS[model].network
    if not isinstance(teacher_net, network):
        raise ValueError(
            f"model {model!r} is a {network.__name__}, but the teacher's network is a {type(teacher_net).__name__}; "
            "a student starts as the teacher's network (its configuration plus --model-option), so set model to "
            "'auto' or to a preset of the teacher's class, or pass the teacher the run was written for"
        )


def require_training_fits(config: TrainConfig, data: DataSource, net: nn.Module) -> None:
    """Refuse a run whose weights, optimizer state and one batch's activations cannot fit the training device.

    A lower bound: float32 weights, gradients, two Adam moments and one copy per EMA (rate or std), plus one
    micro-batch (this process's share of the batch over ``grad_accum``) times the activations the network keeps per
    sample (``activation_floats``, else twice the sample) for the backward pass.
    """
    from ..limits import require_memory
    from .distributed import resolve_device

    params = sum(p.numel() for p in net.parameters())
    copies = 4 + len(config.ema_rates) + len(config.ema_stds)
    activation_floats = getattr(net, "activation_floats", None)
    sample_floats = math.prod(data.sample_shape)
    per_sample = int(activation_floats(tuple(data.sample_shape))) if callable(activation_floats) else 2 * sample_floats
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    micro_batch = -(-config.batch_size // (world * config.grad_accum))
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    require_memory(
        4 * (params * copies + micro_batch * per_sample),
        f"training a {params:,}-parameter network with a batch of {micro_batch:,} samples of shape "
        f"{tuple(data.sample_shape)} per process and micro-batch",
        "raise --grad-accum, lower --batch-size (or the network's size), or train on more processes",
        device,
    )


def objective_options(config: TrainConfig) -> dict[str, Any]:
    """The objective's keyword options: ``config.objective_options`` plus the run length for CT / iCT."""
    options = dict(config.objective_options)
    if method_spec(config.method).takes_run_length:
        options.setdefault("total_steps", config.steps)
    return options


def build_objective(config: TrainConfig, model: Denoiser, teacher: Optional[Denoiser]) -> Objective:
    """The objective of ``config.method`` around ``model`` (see :mod:`cmkit.training.objectives`)."""
    from .objectives import TEACHER_METHODS
    from .objectives import build_objective as factory
    from .objectives.ct import CTObjective, low_target_budget_message

    if teacher is not None and config.method not in TEACHER_METHODS:
        raise ValueError(
            f"method {config.method!r} does not use a teacher; drop --teacher ({', '.join(TEACHER_METHODS)} use one)"
        )
    objective = factory(config.method, model, teacher=teacher, **objective_options(config))
    if isinstance(objective, CTObjective):
        message = low_target_budget_message(objective.options)
        if message is not None:
            warnings.warn(message, stacklevel=2)
    return objective


def scheduler_num_timesteps(config: TrainConfig, objective: Objective) -> int:
    """N of the exported scheduler's Karras grid: the run's final N for CD / CT / iCT, else 40 (OpenAI's CD value)."""
    if config.scheduler_timesteps is not None:
        return config.scheduler_timesteps
    num_scales = getattr(objective, "num_scales", None)
    if callable(num_scales):
        return int(num_scales(config.steps - 1))
    options = getattr(objective, "options", None)
    if isinstance(getattr(options, "num_scales", None), int):
        return int(options.num_scales)
    return 40
