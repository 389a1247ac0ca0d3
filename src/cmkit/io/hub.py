"""Resolve ``from_pretrained`` names: a local directory, or a Hugging Face hub id (optional ``hub`` extra)."""

from __future__ import annotations

import os
from pathlib import Path


class HubUnavailableError(OSError):
    """A hub id could not be resolved (offline, missing extra, or unknown repo)."""


def resolve_pretrained(name_or_path: str | os.PathLike, *, allow_patterns: list[str] | None = None) -> Path:
    """Return a local directory for ``name_or_path``: the path itself, or a hub snapshot download."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise NotADirectoryError(f"{p} is a file; pass the directory that holds it")
        return p
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise FileNotFoundError(f"{name!r} is neither an existing directory nor a hub id of the form 'owner/name'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise HubUnavailableError(
            f"{name!r} looks like a hub id, but huggingface_hub is not installed. Install cmkit[hub], or "
            "download the repository and pass its local directory."
        ) from err
    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=allow_patterns))
    except Exception as err:  # noqa: BLE001 - network/auth errors come in many types
        raise HubUnavailableError(
            f"could not download {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            f"If you are offline, download it elsewhere (e.g. `huggingface-cli download {name} --local-dir DIR`) "
            "and pass DIR to from_pretrained instead of the hub id."
        ) from err
