"""Reading and writing diffusers-format pipeline directories (``model_index.json``, ``unet/``, ``scheduler/``).

The layout is diffusers' own, so ``diffusers.ConsistencyModelPipeline.from_pretrained`` reads what cmkit
writes and the other way round. Component classes are looked up in :mod:`cmkit.registry`. One cmkit-only key
may appear in ``model_index.json``: ``"cmkit_default_timesteps"``, a dict from a step count (as a string) to
the timesteps the pipeline uses for that many steps when the caller gives none (diffusers ignores the key
with a warning).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

from ._validate import is_int
from .config import DIFFUSERS_COMPAT_VERSION
from .io.atomic import atomic_write_text
from .io.hub import resolve_pretrained
from .karras import PARAMETERIZATIONS, Parameterization
from .registry import component_entry, resolve_component_class

MODEL_INDEX = "model_index.json"
PIPELINE_CLASS_NAME = "ConsistencyModelPipeline"
COMPONENT_NAMES: tuple[str, ...] = ("unet", "scheduler")
DEFAULT_TIMESTEPS_KEY = "cmkit_default_timesteps"
#: how the saved network is preconditioned: "consistency" (the default), "edm" (a diffusion teacher, which
#: must be sampled with an ODE solver such as cmkit.sampling.sample_heun, not by this pipeline) or "trigflow"
#: (an sCM model, sampled with SCMScheduler in TrigFlow time).
PARAMETERIZATION_KEY = "cmkit_parameterization"
#: sigma_d of a TCD pipeline's EDM-preconditioned network (its TCDScheduler's config has no sigma_data)
SIGMA_DATA_KEY = "cmkit_sigma_data"

#: files a hub download needs (configs and weights of the two components), never the whole repository.
HUB_PATTERNS = [
    MODEL_INDEX,
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "scheduler/scheduler_config.json",
]


def read_model_index(directory: Path) -> dict[str, Any]:
    """The parsed ``model_index.json`` of a pipeline directory, or a clear error."""
    path = directory / MODEL_INDEX
    if not path.is_file():
        hint = ""
        if (directory / "config.json").is_file() or (directory / "scheduler_config.json").is_file():
            hint = " It looks like a single model or scheduler folder; pass the pipeline folder that holds it."
        raise FileNotFoundError(f"{directory} is not a pipeline directory: {MODEL_INDEX} is missing.{hint}")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(index, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return index


def parse_default_timesteps(value: Any, source: str = MODEL_INDEX) -> dict[str, list[int]]:
    """Validate a ``cmkit_default_timesteps`` mapping: step count (string) -> list of int timesteps."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{DEFAULT_TIMESTEPS_KEY} in {source} must map step counts to timestep lists, got {value!r}")
    out: dict[str, list[int]] = {}
    for key, steps in value.items():
        if not str(key).isdigit() or not isinstance(steps, (list, tuple)) or len(steps) != int(key):
            raise ValueError(
                f"{DEFAULT_TIMESTEPS_KEY} in {source}: entry {key!r}: {steps!r} must be a step count with a list "
                "of that many timesteps, e.g. {\"2\": [22, 0]}"
            )
        if not all(is_int(t) for t in steps):
            raise ValueError(f"{DEFAULT_TIMESTEPS_KEY} in {source}: timesteps must be integers, got {steps!r}")
        out[str(int(key))] = [int(t) for t in steps]
    return out


def read_parameterization(directory: str | os.PathLike) -> Parameterization:
    """The parameterization a pipeline directory records: "edm" for a diffusion teacher, else "consistency".

    The one reader of ``cmkit_parameterization``; a directory without ``model_index.json`` counts as a consistency
    model (a bare bundled or converted folder).
    """
    path = Path(directory) / MODEL_INDEX
    if not path.is_file():
        return "consistency"
    return parse_parameterization(read_model_index(Path(directory)).get(PARAMETERIZATION_KEY), str(path))


def parse_parameterization(value: Any, source: str = MODEL_INDEX) -> Parameterization:
    """Validate the ``cmkit_parameterization`` entry (absent means "consistency")."""
    if value is None:
        return "consistency"
    if value not in PARAMETERIZATIONS:
        raise ValueError(
            f"{PARAMETERIZATION_KEY} in {source} must be 'consistency' or 'edm', got {value!r} (or 'trigflow' for an "
            "sCM model, 'tcd' for a TCD model; remove the key for a consistency model)"
        )
    return value


def load_components(
    name_or_path: str | os.PathLike,
) -> tuple[dict[str, Any], dict[str, list[int]], Parameterization, Optional[float]]:
    """Load ``unet`` and ``scheduler``, the tuned default timesteps, the parameterization and ``cmkit_sigma_data``
    (a TCD pipeline's sigma_d, else None) of a pipeline."""
    directory = resolve_pretrained(name_or_path, allow_patterns=HUB_PATTERNS)
    index = read_model_index(directory)
    class_name = index.get("_class_name")
    if class_name not in (None, PIPELINE_CLASS_NAME):
        warnings.warn(
            f"{directory / MODEL_INDEX} is for a {class_name}, not a {PIPELINE_CLASS_NAME}; loading its unet and "
            "scheduler anyway",
            stacklevel=3,
        )
    extra = sorted(
        k
        for k, v in index.items()
        if not k.startswith("_") and k not in COMPONENT_NAMES and k not in (DEFAULT_TIMESTEPS_KEY, PARAMETERIZATION_KEY, SIGMA_DATA_KEY)
        and isinstance(v, (list, tuple)) and v and v[0] is not None
    )
    if extra:
        warnings.warn(f"{PIPELINE_CLASS_NAME} ignores the components {', '.join(extra)} in {directory}", stacklevel=3)
    components: dict[str, Any] = {}
    for name in COMPONENT_NAMES:
        entry = index.get(name)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
            raise ValueError(
                f"{directory / MODEL_INDEX} must name the {name!r} component as [library, class name], got {entry!r}"
            )
        if not (directory / name).is_dir():
            raise FileNotFoundError(f"{directory} lacks the {name}/ folder that {MODEL_INDEX} lists")
        cls = resolve_component_class(entry[0], entry[1], component=name)
        components[name] = cls.from_pretrained(str(directory / name))
    defaults = parse_default_timesteps(index.get(DEFAULT_TIMESTEPS_KEY), str(directory / MODEL_INDEX))
    parameterization = parse_parameterization(index.get(PARAMETERIZATION_KEY), str(directory / MODEL_INDEX))
    return components, defaults, parameterization, parse_sigma_data(index.get(SIGMA_DATA_KEY), str(directory / MODEL_INDEX))


def parse_sigma_data(value: Any, source: str = MODEL_INDEX) -> Optional[float]:
    """Validate the ``cmkit_sigma_data`` entry: a positive finite number, or absent (None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{SIGMA_DATA_KEY} in {source} must be a positive number (the data's std, e.g. 0.5), got {value!r}")
    return float(value)


def save_components(
    directory: str | os.PathLike,
    components: Mapping[str, Any],
    default_timesteps: Mapping[str, list[int]],
    parameterization: Parameterization = "consistency",
    sigma_data: Optional[float] = None,
) -> Path:
    """Write a pipeline directory diffusers can read: each component's folder, then ``model_index.json``."""
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; pass a directory to save the pipeline into")
    root.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": PIPELINE_CLASS_NAME, "_diffusers_version": DIFFUSERS_COMPAT_VERSION}
    for name in COMPONENT_NAMES:
        component = components[name]
        index[name] = list(component_entry(component))
        target = getattr(component, "_orig_mod", component)  # save the module inside a torch.compile wrapper
        target.save_pretrained(str(root / name))
    if default_timesteps:
        index[DEFAULT_TIMESTEPS_KEY] = {k: list(v) for k, v in sorted(default_timesteps.items())}
    if parameterization != "consistency":
        index[PARAMETERIZATION_KEY] = parse_parameterization(parameterization)
    if sigma_data is not None:
        index[SIGMA_DATA_KEY] = parse_sigma_data(sigma_data)
    atomic_write_text(root / MODEL_INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return root
