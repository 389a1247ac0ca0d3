"""Training objectives: each a small callable returning an :class:`ObjectiveOutput`.

:data:`METHOD_SPECS` is the one place the methods are listed: a method's objective class, its options dataclass,
whether it needs a teacher and the parameterization of the model it trains. :data:`Method`, :data:`METHODS`,
:data:`TEACHER_METHODS`, the CLI's choices and its help derive from it. A new method is one new file here and
one line in :data:`METHOD_SPECS`.

``build_objective(method, model, teacher=None, **options)`` is the one entry point the loop and the CLI use;
``options`` are the fields of the method's options dataclass.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, Optional

from torch import nn

from ...karras import Parameterization
from .base import BaseObjective, Objective, ObjectiveOutput, TargetObjective
from .cd import CDObjective, CDOptions
from .common import build_options
from .ct import CTObjective, CTOptions
from .ect import ECTObjective, ECTOptions
from .edm import EDMObjective, EDMOptions
from .ict import ICTObjective, ICTOptions
from .scd import SCDObjective, SCDOptions
from .sct import SCTObjective, SCTOptions
from .tcd import TCDObjective, TCDOptions


@dataclass(frozen=True)
class MethodSpec:
    """One training method: ``objective(model, teacher=..., options=...)`` with ``options`` of class ``options``."""

    objective: type
    options: type
    #: needs a teacher (a trained EDM denoiser) and starts from its weights.
    needs_teacher: bool
    #: the preconditioning of the model it trains (what the exported pipeline records).
    parameterization: Parameterization
    summary: str
    #: constructor arguments the student network gets by default when its class takes them (``model_options``
    #: override them): TCD's target-time embedding.
    student_config: tuple[tuple[str, Any], ...] = ()

    @property
    def takes_run_length(self) -> bool:
        """Its options require ``total_steps`` (K of an ``N(k)`` schedule), filled from the run's steps."""
        return any(f.name == "total_steps" and f.default is MISSING for f in fields(self.options))


METHOD_SPECS: dict[str, MethodSpec] = {
    "edm": MethodSpec(EDMObjective, EDMOptions, False, "edm", "EDM denoiser loss (a diffusion teacher)"),
    "cd": MethodSpec(CDObjective, CDOptions, True, "consistency", "consistency distillation (CM Algorithm 2)"),
    "ct": MethodSpec(CTObjective, CTOptions, False, "consistency", "consistency training (CM Algorithm 3)"),
    "ict": MethodSpec(ICTObjective, ICTOptions, False, "consistency", "improved consistency training"),
    "ect": MethodSpec(ECTObjective, ECTOptions, True, "consistency", "easy consistency tuning from a teacher"),
    "sct": MethodSpec(SCTObjective, SCTOptions, False, "trigflow", "continuous-time consistency training (sCM)"),
    "scd": MethodSpec(SCDObjective, SCDOptions, True, "trigflow", "continuous-time consistency distillation (sCM)"),
    "tcd": MethodSpec(TCDObjective, TCDOptions, True, "tcd", "trajectory consistency distillation",
                      (("target_conditioning", True),)),
}

METHODS: tuple[str, ...] = tuple(METHOD_SPECS)
Method = Literal[METHODS]  # type: ignore[valid-type]
#: methods that need a teacher (a trained EDM denoiser) and start from its weights.
TEACHER_METHODS: tuple[str, ...] = tuple(m for m, spec in METHOD_SPECS.items() if spec.needs_teacher)


def method_spec(method: str) -> MethodSpec:
    """The registry entry of ``method``, with an error listing the methods."""
    if method not in METHOD_SPECS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return METHOD_SPECS[method]


def build_objective(method: Method, model: nn.Module, teacher: Optional[nn.Module] = None, **options: Any) -> Objective:
    """The objective ``method`` training ``model`` (CD and ECT take a ``teacher``); ``options`` fill its options dataclass."""
    spec = method_spec(method)
    return spec.objective(model, teacher=teacher, options=build_options(spec.options, options, method))
