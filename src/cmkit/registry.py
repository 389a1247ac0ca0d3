"""Which class a saved pipeline component names: ``model_index.json`` entries <-> cmkit classes, in one place.

A diffusers-format pipeline directory lists its components in ``model_index.json`` as
``"unet": ["diffusers", "UNet2DModel"]``. cmkit reads diffusers' class names into its own classes (it never
imports diffusers) and writes diffusers' names back, so diffusers can load what cmkit saves. Classes that
exist only in cmkit (e.g. the small MLP denoiser for 2-D data) are saved as ``["cmkit", "<ClassName>"]``.
"""

from __future__ import annotations

import importlib
from typing import Any, Union

#: (library, saved class name) -> the class that loads it, as "module:attribute" (imported on first use) or a class.
COMPONENT_CLASSES: dict[tuple[str, str], Union[str, type]] = {
    ("diffusers", "UNet2DModel"): "cmkit.models.unet:UNet2DModel",
    ("diffusers", "CMStochasticIterativeScheduler"): "cmkit.schedulers.cm:CMStochasticIterativeScheduler",
    ("diffusers", "TCDScheduler"): "cmkit.schedulers.tcd:TCDScheduler",
    ("diffusers", "SCMScheduler"): "cmkit.schedulers.scm:SCMScheduler",
    ("cmkit", "UNet2DModel"): "cmkit.models.unet:UNet2DModel",
    ("cmkit", "CMStochasticIterativeScheduler"): "cmkit.schedulers.cm:CMStochasticIterativeScheduler",
    ("cmkit", "TCDScheduler"): "cmkit.schedulers.tcd:TCDScheduler",
    ("cmkit", "SCMScheduler"): "cmkit.schedulers.scm:SCMScheduler",
    ("cmkit", "MLPNet"): "cmkit.models.mlp:MLPNet",
    ("cmkit", "SongUNet"): "cmkit.models.song_unet:SongUNet",
    ("cmkit", "DhariwalUNet"): "cmkit.models.dhariwal_unet:DhariwalUNet",
    ("cmkit", "EDM2UNet"): "cmkit.models.edm2_unet:EDM2UNet",
}

#: libraries whose entries we write as-is; anything cmkit-only is written under "cmkit".
_DIFFUSERS_NAMES = frozenset(name for lib, name in COMPONENT_CLASSES if lib == "diffusers")


def register_component_class(library: str, class_name: str, cls: type | str) -> None:
    """Make ``[library, class_name]`` in ``model_index.json`` load as ``cls`` (a class or "module:attr")."""
    if isinstance(cls, str) and ":" not in cls:
        raise ValueError(f"expected a class or a 'module:attribute' string, got {cls!r}")
    COMPONENT_CLASSES[(library, class_name)] = cls


def _import(target: Union[str, type]) -> type:
    if not isinstance(target, str):
        return target
    module_name, attr = target.split(":", 1)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def resolve_component_class(library: str | None, class_name: str | None, component: str = "component") -> type:
    """The cmkit class for a ``model_index.json`` entry ``[library, class_name]``, or a ValueError naming it."""
    key = (str(library), str(class_name))
    target = COMPONENT_CLASSES.get(key)
    if target is None:
        known = ", ".join(f"[{lib!r}, {name!r}]" for lib, name in sorted(COMPONENT_CLASSES))
        raise ValueError(
            f"model_index.json gives {component!r} the class [{library!r}, {class_name!r}], which cmkit cannot load. "
            f"Known classes: {known}. Register your own with cmkit.registry.register_component_class(...)."
        )
    try:
        return _import(target)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"the class for [{library!r}, {class_name!r}] ({target}) is not available in this cmkit install: {err}"
        ) from err


def component_entry(obj: Any) -> tuple[str, str]:
    """The ``[library, class_name]`` that ``model_index.json`` should record for the component ``obj``.

    Classes that stand in for a diffusers class are written under diffusers' name (so diffusers can read the
    directory); cmkit-only classes under ``"cmkit"``; a diffusers object passed in directly keeps its own name.
    """
    obj = getattr(obj, "_orig_mod", obj)  # torch.compile wrapper
    cls = type(obj)
    if cls.__module__.split(".")[0] == "diffusers":
        return "diffusers", cls.__name__
    for (library, name), target in COMPONENT_CLASSES.items():
        if target is cls or target == f"{cls.__module__}:{cls.__qualname__}":
            return ("diffusers", name) if name in _DIFFUSERS_NAMES else (library, name)
    for (library, name), target in sorted(COMPONENT_CLASSES.items(), key=lambda kv: kv[0][0] != "diffusers"):
        try:
            candidate = _import(target)
        except (ImportError, AttributeError):
            continue
        if isinstance(obj, candidate):
            return library, name
    raise ValueError(
        f"cannot save a component of type {cls.__module__}.{cls.__qualname__}: cmkit.registry has no saved name "
        "for it. Register it with cmkit.registry.register_component_class('cmkit', name, cls)."
    )
