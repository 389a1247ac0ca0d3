"""Safe weight files: safetensors first, pickled ``.bin`` / ``.pt`` only through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .atomic import atomic_path

#: diffusers' weight file names, in the order we look for them.
WEIGHTS_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_torch_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """The object in a pickled torch file, loaded safely: ``torch.load(weights_only=True)``, never arbitrary code.

    Only tensors, numbers, strings and containers of them load; a file that needs more is a ``ValueError``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weight file not found: {p}")
    try:
        return torch.load(p, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the reason a user can act on
        raise ValueError(
            f"could not load {p} with torch.load(weights_only=True): {err}. cmkit never unpickles arbitrary "
            "objects; re-save the checkpoint as a plain state dict or as .safetensors."
        ) from err


def load_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Load a flat ``{name: tensor}`` dict from ``.safetensors`` or, safely, from a pickled torch file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weight file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p), device=str(device))
    obj = load_torch_file(p, device)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{p} does not hold a flat state dict of tensors")
    return dict(obj)


def save_state_dict(state: Mapping[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as ``.safetensors`` atomically (contiguous, detached, on CPU)."""
    from safetensors.torch import save_file

    p = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata=metadata or {"format": "pt"})
    return p


def find_weights_file(directory: str | os.PathLike, names: tuple[str, ...] = WEIGHTS_NAMES) -> Path:
    """The first weight file of ``names`` present in ``directory``, or a clear error."""
    d = Path(directory)
    for name in names:
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"no weights in {d}: expected one of {', '.join(names)}")
