"""Training checkpoints: one directory per saved step, made visible atomically.

``<output>/checkpoints/step-00001000/`` holds ``model.safetensors`` (the trained denoiser), one
``ema_<rate>.safetensors`` per EMA, and ``state.pt`` (optimizer, loss scaler, objective state and loss
history: plain tensors and numbers, read back with ``torch.load(weights_only=True)``). The directory is
written under a temporary name and renamed into place; ``latest.json`` (written atomically) then points at
it. A crash at any moment leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ..io.atomic import atomic_path, atomic_write_text
from ..io.weights import load_state_dict, save_state_dict

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"


@dataclass
class Checkpoint:
    """What a checkpoint holds, as loaded."""

    step: int
    model: dict[str, Tensor]
    ema: dict[str, dict[str, Tensor]]
    state: dict[str, Any]
    path: Path


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """The directory of the checkpoint taken after ``step`` optimizer steps."""
    return Path(output_dir) / CHECKPOINTS / f"step-{step:08d}"


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    model: dict[str, Tensor],
    ema: dict[str, dict[str, Tensor]],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write the checkpoint of ``step`` atomically, point ``latest.json`` at it, and keep the newest ``keep``."""
    final = checkpoint_dir(output_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_state_dict(model, tmp / MODEL_FILE)
    for key, tensors in ema.items():
        save_state_dict(tensors, tmp / f"{key}.safetensors")
    with atomic_path(tmp / STATE_FILE) as p:
        torch.save({**state, "step": step}, p)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, json.dumps({"step": step, "path": final.name}) + "\n")
    if keep > 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file() and (p / MODEL_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(output_dir: str | os.PathLike) -> Optional[Path]:
    """The newest complete checkpoint (as named by ``latest.json`` when valid), or None."""
    root = Path(output_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        try:
            candidate = root / json.loads(pointer.read_text())["path"]
        except (ValueError, KeyError, TypeError):
            candidate = None
        if candidate is not None and (candidate / STATE_FILE).is_file() and (candidate / MODEL_FILE).is_file():
            return candidate
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint directory written by :func:`save_checkpoint` (no arbitrary unpickling)."""
    d = Path(path)
    if not (d / STATE_FILE).is_file():
        raise FileNotFoundError(f"{d} is not a complete checkpoint ({STATE_FILE} missing)")
    try:
        state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"could not read {d / STATE_FILE}: {err}") from err
    ema = {p.name[: -len(".safetensors")]: load_state_dict(p) for p in sorted(d.glob("ema_*.safetensors"))}
    return Checkpoint(step=int(state["step"]), model=load_state_dict(d / MODEL_FILE), ema=ema, state=state, path=d)
