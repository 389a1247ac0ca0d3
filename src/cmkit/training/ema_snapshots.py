"""Snapshots of the power-function EMAs for post-hoc reconstruction (EDM2 Section 3.2): write, list, combine.

A run with ``ema_stds`` and ``ema_snapshot_every = N`` writes, every N steps and at its last step, one file per
stored ``sigma_rel``: ``<output>/phema/phema-<step:08d>-<std>.safetensors``, written atomically, holding the
float32 average and, in the safetensors header, ``step``, ``std``, ``gamma``, ``batch_size`` and ``samples_seen``
(strings, as safetensors metadata are). Reading them needs no code execution: the header is parsed by
safetensors, the tensors are plain arrays.

:func:`reconstruct_averages` solves EDM2's least squares (:func:`~cmkit.training.power_ema.solve_reconstruction`)
over the snapshots up to a step and streams them once, accumulating each target's weights.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .._validate import is_int
from ..io.weights import load_state_dict, save_state_dict
from .power_ema import RESIDUAL_WARNING, PowerEMA, Reconstruction, check_sigma_rel, sigma_rel_to_gamma, solve_reconstruction

SNAPSHOT_DIR = "phema"
#: the ``cmkit`` header entry that marks a file as a power-EMA snapshot.
SNAPSHOT_FORMAT = "power-ema-snapshot"
_NAME = re.compile(r"phema-(\d{8,})-([0-9.e+-]+)\.safetensors")
_TEMPORARY = re.compile(r"\.phema-\d{8,}-[0-9.e+-]+\.safetensors\..*\.tmp")


@dataclass(frozen=True)
class Snapshot:
    """One snapshot file and what its header says."""

    path: Path
    step: int
    std: float
    gamma: float
    samples_seen: int


def snapshot_path(output_dir: str | os.PathLike, step: int, std: float) -> Path:
    """Where the snapshot of the power EMA ``std`` after ``step`` optimizer steps goes."""
    return Path(output_dir) / SNAPSHOT_DIR / f"phema-{step:08d}-{std:.10g}.safetensors"


def write_snapshots(tracker: PowerEMA, output_dir: str | os.PathLike, step: int, batch_size: int) -> list[Path]:
    """Save every average of ``tracker`` as it is after ``step`` steps of ``batch_size`` samples (atomically)."""
    written = []
    for std, average in tracker.averages.items():
        metadata = {
            "format": "pt", "cmkit": SNAPSHOT_FORMAT, "step": str(step), "std": repr(std),
            "gamma": repr(tracker.gammas[std]), "batch_size": str(batch_size), "samples_seen": str(step * batch_size),
        }
        written.append(save_state_dict(average, snapshot_path(output_dir, step, std), metadata=metadata))
    return written


def remove_snapshots_after(output_dir: str | os.PathLike, step: int) -> list[Path]:
    """Delete the snapshots of steps after ``step`` and half-written ones (a run resumed at ``step`` redoes them)."""
    root = Path(output_dir) / SNAPSHOT_DIR
    if not root.is_dir():
        return []
    stale = []
    for p in sorted(root.iterdir()):
        match = _NAME.fullmatch(p.name)
        if (match is not None and int(match.group(1)) > step) or _TEMPORARY.fullmatch(p.name):
            p.unlink()
            stale.append(p)
    return stale


def _read_header(path: Path) -> Snapshot:
    from safetensors import safe_open

    damaged = f"the snapshot {path} is unreadable or not a cmkit power-EMA snapshot"
    fix = "delete it (or restore it from a copy) and run again"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types; re-raised with the file named
        raise ValueError(f"{damaged} ({err}); {fix}") from err
    try:
        step, std, samples = int(meta["step"]), float(meta["std"]), int(meta["samples_seen"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{damaged}: its header lacks a valid {err}; {fix}") from err
    match = _NAME.fullmatch(path.name)
    if meta.get("cmkit") != SNAPSHOT_FORMAT or match is None or step < 1 or int(match.group(1)) != step \
            or not math.isclose(float(match.group(2)), std, rel_tol=1e-9):
        raise ValueError(f"{damaged}: its header (step {step}, std {std}) does not match its name; {fix}")
    return Snapshot(path, step, check_sigma_rel(f"the std in {path}", std), sigma_rel_to_gamma(std), samples)


def list_snapshots(run_dir: str | os.PathLike) -> list[Snapshot]:
    """The snapshots of the run in ``run_dir``, by step then std; a ValueError names a damaged one."""
    root = Path(run_dir) / SNAPSHOT_DIR
    if not root.is_dir():
        return []
    found = [_read_header(p) for p in root.iterdir() if _NAME.fullmatch(p.name) and p.is_file()]
    return sorted(found, key=lambda s: (s.step, s.std))


def select_snapshots(snapshots: Sequence[Snapshot], step: Optional[int]) -> tuple[int, list[Snapshot]]:
    """The reconstruction step (``step``, or the last snapshot's) and the snapshots up to it."""
    if not snapshots:
        raise ValueError("there are no snapshots to reconstruct from")
    steps = sorted({s.step for s in snapshots})
    if step is None:
        step = steps[-1]
    elif not is_int(step) or step not in steps:
        listed = steps if len(steps) <= 8 else [*steps[:4], "...", *steps[-3:]]
        shown = ", ".join(map(str, listed))
        raise ValueError(f"no snapshot at step {step!r}; reconstruct at a step that has snapshots ({shown}), or drop --step "
                         "for the last one")
    return step, [s for s in snapshots if s.step <= step]


@dataclass
class ReconstructedEMA:
    """The weights of one reconstructed power EMA, how they were combined, and from which snapshots."""

    plan: Reconstruction
    weights: dict[str, Tensor]
    snapshots: list[Snapshot]  # in the order of ``plan.coefficients``


def reconstruct_averages(
    snapshots: Sequence[Snapshot], sigma_rels: Sequence[float], step: Optional[int] = None
) -> list[ReconstructedEMA]:
    """The weights of the power EMA of each ``sigma_rel`` at ``step`` (default: the last snapshot's), combined
    from the snapshots up to that step, with their :class:`Reconstruction` (coefficients and residual).

    Warns when the fitted profile misses more than :data:`RESIDUAL_WARNING` of a target (relative L2).
    """
    from ..limits import require_memory

    step, used = select_snapshots(snapshots, step)
    plans = [solve_reconstruction([s.step for s in used], [s.gamma for s in used], step, std) for std in sigma_rels]
    for plan in plans:
        if plan.relative_residual > RESIDUAL_WARNING:
            stds = sorted({s.std for s in used})
            warnings.warn(
                f"sigma_rel {plan.sigma_rel} at step {step} is reconstructed poorly: the combined profile misses "
                f"{100 * plan.relative_residual:.1f}% of the target (relative L2, over {100 * RESIDUAL_WARNING:.0f}%). "
                f"The {len(used)} snapshots hold stds {stds}; choose a std near or between them, or snapshot more often "
                "(--ema-snapshot-every)",
                stacklevel=2,
            )
    size = used[0].path.stat().st_size
    require_memory((len(plans) + 1) * size, f"reconstructing {len(plans)} EMA(s) from snapshots of {size:,} bytes",
                   "reconstruct fewer stds at once")
    outputs: list[dict[str, Tensor]] = [{} for _ in plans]
    reference: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for i, snap in enumerate(used):
        weights = load_state_dict(snap.path)
        layout = {k: (tuple(v.shape), v.dtype) for k, v in weights.items()}
        if not reference:
            reference = layout
        elif layout != reference:
            raise ValueError(
                f"the snapshot {snap.path} holds other tensors than {used[0].path}; the snapshots of one run must share "
                "the network's layout (remove snapshots copied from another run)"
            )
        for plan, out in zip(plans, outputs):
            coefficient = float(plan.coefficients[i])
            for k, v in weights.items():
                if k in out:
                    out[k].add_(v.float(), alpha=coefficient)
                else:
                    out[k] = v.float() * coefficient
    return [ReconstructedEMA(plan, out, list(used)) for plan, out in zip(plans, outputs)]


def load_weights(model: nn.Module, weights: dict[str, Tensor]) -> nn.Module:
    """Copy ``weights`` into ``model``'s floating-point parameters and buffers; the names must be exactly those."""
    state = model.state_dict()
    expected = {k for k, v in state.items() if v.is_floating_point()}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ValueError(
            f"the reconstructed weights do not fit the network: missing {missing[:3]}, unexpected {extra[:3]}; the "
            "snapshots must come from the run whose pipeline is used"
        )
    with torch.no_grad():
        for k, v in weights.items():
            if state[k].shape != v.shape:
                raise ValueError(f"the reconstructed {k} has shape {tuple(v.shape)}, the network's {tuple(state[k].shape)}")
            state[k].copy_(v)
    return model
