"""Training checkpoints: one directory per saved step, made visible atomically, checked when loaded.

``<output>/checkpoints/step-00001000/`` holds ``model.safetensors`` (the trained denoiser), one
``ema_<rate>.safetensors`` per EMA, ``state.pt`` (optimizer, loss scaler, objective state and loss
history: plain tensors and numbers, read back with ``torch.load(weights_only=True)``) and ``manifest.json``
(the size and SHA-256 of each of those files). The directory is written under a temporary name
(``.tmp-step-...-PID``) and renamed into place; ``latest.json`` (written atomically) then points at it. A crash
at any moment leaves the previous checkpoint intact and loadable, and leftover temporary directories are
removed by the next run (:func:`remove_temporary_dirs`) and after every successful save.

:func:`load_latest_checkpoint` verifies the manifest and the files; a damaged newest checkpoint (truncated or
garbled by a disk or copy error, or a bad ``latest.json``) is skipped with a warning for the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from .._validate import is_int
from ..io.atomic import atomic_path, atomic_write_text
from ..io.weights import load_state_dict, save_state_dict

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"step-(\d{8,})")
_TEMPORARY_PREFIX = ".tmp-"


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
    tmp = root / f"{_TEMPORARY_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_state_dict(model, tmp / MODEL_FILE)
    for key, tensors in ema.items():
        save_state_dict(tensors, tmp / f"{key}.safetensors")
    with atomic_path(tmp / STATE_FILE) as p:
        torch.save({**state, "step": step}, p)
    files = sorted(f.name for f in tmp.iterdir())
    atomic_write_text(tmp / MANIFEST_FILE, json.dumps({name: _fingerprint(tmp / name) for name in files}, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, json.dumps({"step": step, "path": final.name}) + "\n")
    if keep > 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    remove_temporary_dirs(output_dir)
    return final


def remove_temporary_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary directories of unfinished saves (a process killed while saving); returns them.

    Call it only while no other process saves into ``output_dir`` (one run per output directory).
    """
    root = Path(output_dir) / CHECKPOINTS
    found = sorted(root.glob(f"{_TEMPORARY_PREFIX}step-*")) if root.is_dir() else []
    for tmp in found:
        shutil.rmtree(tmp, ignore_errors=True)
    return found


def _fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file() and (p / MODEL_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def _candidates(output_dir: str | os.PathLike) -> tuple[list[Path], Optional[str]]:
    """Complete checkpoint directories to try, newest first (``latest.json``'s first), and why the pointer was ignored."""
    root = Path(output_dir) / CHECKPOINTS
    found = list_checkpoints(output_dir)[::-1]
    pointer = root / LATEST
    if not pointer.is_file():
        return found, None
    try:
        name = json.loads(pointer.read_text())["path"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        return found, f"{pointer} is unreadable ({err!r})"
    named = [p for p in found if p.name == name]
    if not named:
        return found, f"{pointer} names {name!r}, which is no complete checkpoint directory in {root}"
    return named + [p for p in found if p.name != name], None


def latest_checkpoint(output_dir: str | os.PathLike) -> Optional[Path]:
    """The newest complete checkpoint (as named by ``latest.json`` when valid), or None; its files are not checked."""
    found, _ = _candidates(output_dir)
    return found[0] if found else None


def load_latest_checkpoint(output_dir: str | os.PathLike) -> Optional[Checkpoint]:
    """The newest checkpoint that loads and passes its checks; None when ``output_dir`` holds none.

    A damaged checkpoint (or a bad ``latest.json``) is skipped with a warning that names it and the checkpoint
    used instead; when none loads, a ValueError names the directory and every failure.
    """
    candidates, pointer_problem = _candidates(output_dir)
    problems = [pointer_problem] if pointer_problem else []
    for path in candidates:
        try:
            loaded = load_checkpoint(path)
        except (ValueError, OSError) as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn(f"{'; '.join(problems)}; falling back to the checkpoint {path}", stacklevel=2)
        return loaded
    if not candidates:
        return None
    root = Path(output_dir) / CHECKPOINTS
    raise ValueError(
        f"no loadable checkpoint in {root}: {'; '.join(problems)}. Restore a good checkpoint there, or start again "
        "without --resume in a new output directory"
    )


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check the files of a checkpoint directory against its ``manifest.json`` (sizes and SHA-256)."""
    d = Path(path)
    manifest_path = d / MANIFEST_FILE
    if not manifest_path.is_file():
        return  # written before manifests existed: the loaders' own checks still apply
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = {str(name): (int(fp["bytes"]), str(fp["sha256"])) for name, fp in manifest.items()}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise ValueError(f"checkpoint {d} is damaged: {manifest_path} is unreadable ({err!r})") from err
    for name, (size, sha) in expected.items():
        file = d / name
        if not file.is_file():
            raise ValueError(f"checkpoint {d} is damaged: {file} is missing")
        actual = _fingerprint(file)
        if actual["bytes"] != size:
            raise ValueError(f"checkpoint {d} is damaged: {file} has {actual['bytes']} bytes, expected {size} (truncated?)")
        if actual["sha256"] != sha:
            raise ValueError(f"checkpoint {d} is damaged: {file} does not match its SHA-256 in {manifest_path}")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint directory written by :func:`save_checkpoint` (no arbitrary unpickling).

    Raises ValueError naming the file when the directory is damaged: a manifest mismatch, an unreadable
    ``state.pt`` or safetensors file, or a ``state.pt`` of another step.
    """
    d = Path(path)
    for name in (STATE_FILE, MODEL_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d} is not a complete checkpoint ({name} missing)")
    verify_checkpoint(d)
    try:
        state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"could not read {d / STATE_FILE}: {err}") from err
    step = state.get("step") if isinstance(state, dict) else None
    match = _STEP_DIR.fullmatch(d.name)
    if not is_int(step) or (match is not None and int(match.group(1)) != step):
        raise ValueError(f"{d / STATE_FILE} records step {step!r}, which does not match its directory {d.name}")
    weights = {}
    for file in [d / MODEL_FILE, *sorted(d.glob("ema_*.safetensors"))]:
        try:
            weights[file.name] = load_state_dict(file)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error type; re-raised with the file named
            raise ValueError(f"could not read {file}: {err}") from err
    model = weights.pop(MODEL_FILE)
    ema = {name[: -len(".safetensors")]: tensors for name, tensors in weights.items()}
    return Checkpoint(step=step, model=model, ema=ema, state=state, path=d)
