"""``metrics.jsonl``: one JSON object per logged step, appended as training goes.

A process killed while appending leaves a torn last line; a resumed (or restarted) run rewrites the file
atomically with the readable entries up to its checkpoint, dropping torn and unreadable lines with a warning
that names the file, so a damaged log never blocks a resume.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

from .._validate import is_int
from ..io.atomic import atomic_write_text


def append_metrics(path: str | os.PathLike, entries: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per entry to ``path`` (created with its directory when missing)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(entry) + "\n" for entry in entries)


def _step_of(line: str) -> int:
    entry = json.loads(line)
    if not isinstance(entry, dict) or not is_int(entry.get("step")):
        raise ValueError("not an object with an integer 'step'")
    return entry["step"]


def keep_metrics_up_to(path: str | os.PathLike, step: int) -> None:
    """Rewrite ``path`` with its entries of steps ``<= step``; torn or unreadable lines are dropped with a warning."""
    p = Path(path)
    if not p.is_file():
        return
    lines = p.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
    kept, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            if _step_of(line) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            bad.append((number, err))
    if bad and bad[-1][0] == len(lines):
        warnings.warn(
            f"dropped the torn last line of {p} (line {len(lines)}: the process was probably killed while writing it)",
            stacklevel=2,
        )
        bad.pop()
    if bad:
        shown = ", ".join(str(n) for n, _ in bad[:10]) + (", ..." if len(bad) > 10 else "")
        warnings.warn(f"dropped {len(bad)} unreadable line(s) of {p} (line {shown}: {bad[0][1]})", stacklevel=2)
    atomic_write_text(p, "".join(kept))
