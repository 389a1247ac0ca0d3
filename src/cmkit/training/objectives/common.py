"""Pieces shared by the objectives: frozen target copies, the target EMA, teacher initialisation, dropout control."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, Iterator, Mapping, Optional, TypeVar

import torch
from torch import Tensor, nn

from ...streams import StepRandom

O = TypeVar("O")


def build_options(cls: type[O], options: Mapping[str, Any], method: str) -> O:
    """Build the options dataclass ``cls`` from keyword options, with a clear error for unknown or missing keys."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(k for k in options if k not in names)
    if unknown:
        raise ValueError(f"unknown option(s) for method {method!r}: {', '.join(unknown)}; valid: {', '.join(names)}")
    try:
        return cls(**options)
    except TypeError as err:  # a required field is missing
        raise ValueError(f"method {method!r}: {err}; valid options: {', '.join(names)}") from err


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with ``requires_grad`` off: a target network ``theta^-`` (CM Algorithms 2, 3)."""
    target = copy.deepcopy(model)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, mu: float) -> None:
    """``theta^- <- stopgrad(mu theta^- + (1 - mu) theta)`` in place (CM Algorithm 2, line 10); buffers are copied."""
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"the EMA rate mu must lie in [0, 1], got {mu}")
    target_params = list(target.parameters())
    source_params = list(source.parameters())
    if len(target_params) != len(source_params):
        raise ValueError("target and source networks have different parameter lists")
    for t, s in zip(target_params, source_params):
        t.lerp_(s.detach().to(t.dtype), 1.0 - mu)
    for t, s in zip(target.buffers(), source.buffers()):
        t.copy_(s)


def _inner_net(model: nn.Module) -> nn.Module:
    return getattr(model, "net", model)


def target_embedding_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The state-dict prefixes of the network's TCD target-time embedding (its ``target_embedding_prefixes``;
    empty for a network without one): keys a student may have that its teacher lacks."""
    return tuple(getattr(_inner_net(model), "target_embedding_prefixes", ()))


def copy_teacher_weights_(student: nn.Module, teacher: nn.Module, allow_new: tuple[str, ...] = ()) -> None:
    """Initialise the student's network from the teacher's (CD: CM sec. 6; ECT: Geng et al. 2024 sec. 3).

    Student parameters whose names start with one of ``allow_new`` (e.g. TCD's target embedding) may be absent from
    the teacher and keep their initialisation; every other key must match.
    """
    src, dst = _inner_net(teacher), _inner_net(student)
    try:
        state = src.state_dict()
        keep = {k: v for k, v in dst.state_dict().items() if k.startswith(allow_new) and k not in state} if allow_new else {}
        dst.load_state_dict({**state, **keep}, strict=True)
    except RuntimeError as err:
        raise ValueError(
            "cannot initialise the student from the teacher: their networks differ "
            f"({str(err).splitlines()[0]}); build the student with the teacher's architecture or pass "
            "init_from_teacher=False"
        ) from err


def set_dropout_(module: nn.Module, p: float) -> int:
    """Set the rate of every ``nn.Dropout`` in ``module`` to ``p``; returns how many were changed."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {p}")
    count = 0
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = p
            count += 1
    return count


def follow_device_(module: Optional[nn.Module], device: torch.device) -> None:
    """Move a helper network (teacher, target) to ``device`` if the model was moved after the objective was built."""
    if module is None:
        return
    p = next(module.parameters(), None)
    if p is not None and p.device != device:
        module.to(device)


@contextmanager
def seeded_dropout(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with the global RNG seeded to ``seed`` and restore it after: the same dropout mask twice (iCT)."""
    if device.type in ("cuda", "mps"):  # fork that accelerator's generator too, so dropout there repeats as well
        forked = torch.random.fork_rng(devices=[device], device_type=device.type)
    else:
        forked = torch.random.fork_rng(devices=[])
    with forked:
        torch.manual_seed(seed)
        yield


def check_batch(x0: Tensor, rng: StepRandom) -> None:
    """Ensure the batch matches the slice that ``rng`` draws for."""
    if x0.ndim < 2:
        raise ValueError(f"x0 must be a batch [B, ...], got shape {tuple(x0.shape)}")
    if x0.shape[0] != rng.local_batch:
        raise ValueError(
            f"x0 holds {x0.shape[0]} samples but the StepRandom draws for a local batch of {rng.local_batch}; "
            "build StepRandom with local_batch equal to this process's batch"
        )


def per_sample(value: Tensor, x: Tensor) -> Tensor:
    """A ``[B]`` float32 tensor on ``x``'s device (sigmas are drawn in float64).

    The cast happens before the move: MPS has no float64, so a float64 tensor may not reach it even briefly.
    """
    return value.to(dtype=torch.float32).to(device=x.device)


def grid_pair(sigmas: Tensor, index: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigmas[index], sigmas[index + 1])`` of a descending grid as per-sample float32 tensors on ``x``'s device.

    The grid stays where it was built (the CPU, in float64) and is indexed there: CUDA refuses CPU tensors
    indexed by device tensors and MPS has no float64. Draw ``index`` with ``device=sigmas.device`` to avoid a copy.
    """
    index = index.to(sigmas.device)
    return per_sample(sigmas[index], x), per_sample(sigmas[index + 1], x)
