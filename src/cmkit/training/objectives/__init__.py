"""Training objectives: each a small callable returning an :class:`ObjectiveOutput`.

``build_objective(method, model, teacher=None, **options)`` is the one entry point the loop and the CLI use;
``options`` are the fields of the method's options dataclass (:class:`EDMOptions`, :class:`CDOptions`,
:class:`CTOptions`, :class:`ICTOptions`, :class:`ECTOptions`).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, get_args

from torch import nn

from .base import Objective, ObjectiveOutput
from .cd import CDObjective, CDOptions
from .common import build_options
from .ct import CTObjective, CTOptions
from .ect import ECTObjective, ECTOptions
from .edm import EDMObjective, EDMOptions
from .ict import ICTObjective, ICTOptions

Method = Literal["edm", "cd", "ct", "ict", "ect"]
METHODS: tuple[str, ...] = get_args(Method)

__all__ = [
    "Method",
    "METHODS",
    "Objective",
    "ObjectiveOutput",
    "build_objective",
    "EDMObjective",
    "EDMOptions",
    "CDObjective",
    "CDOptions",
    "CTObjective",
    "CTOptions",
    "ICTObjective",
    "ICTOptions",
    "ECTObjective",
    "ECTOptions",
]


def build_objective(method: Method, model: nn.Module, teacher: Optional[nn.Module] = None, **options: Any) -> Objective:
    """The objective ``method`` training ``model`` (CD and ECT take a ``teacher``); ``options`` fill its options dataclass."""
    if method == "edm":
        return EDMObjective(model, build_options(EDMOptions, options, method))
    if method == "cd":
        if teacher is None:
            raise ValueError("method 'cd' distils a teacher: pass teacher=<EDM Denoiser> (e.g. --teacher DIR)")
        return CDObjective(model, teacher, build_options(CDOptions, options, method))
    if method == "ct":
        return CTObjective(model, build_options(CTOptions, options, method))
    if method == "ict":
        return ICTObjective(model, build_options(ICTOptions, options, method))
    if method == "ect":
        return ECTObjective(model, teacher, build_options(ECTOptions, options, method))
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
