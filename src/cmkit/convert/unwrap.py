"""Find a model's state dict inside a loaded checkpoint: bare, under a wrapper key, or with prefixed keys.

Training code saves weights in several shapes: ``model.state_dict()`` itself; ``{"model": sd, "optimizer": ...,
"step": ...}``; ``{"ema": sd}``; Lightning's ``{"state_dict": sd}``; and DistributedDataParallel or
``torch.compile`` prefix every key with ``module.`` / ``_orig_mod.``. :func:`find_state_dict` collects every group
of tensors (in nested mappings, up to :data:`MAX_DEPTH` deep) holding a marker key, such as
``input_blocks.0.0.weight`` for an OpenAI UNet, strips the prefix in front of it, and picks one group
deterministically: EMA weights first, then by :data:`WRAPPER_PREFERENCE`, then by name;
:func:`unwrap_state_dict` also warns when it chose among several.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from torch import Tensor

#: wrapper keys in order of preference when a checkpoint holds several state dicts (after EMA weights, which
#: come first: they are what one samples from, and what the published consistency models are).
WRAPPER_PREFERENCE: tuple[str, ...] = (
    "ema", "ema_model", "model_ema", "state_dict", "model_state_dict", "model", "module", "net", "unet", "params",
)  # fmt: skip
#: how many mappings deep a state dict is looked for (``{"state_dict": {"model": sd}}`` is depth 2).
MAX_DEPTH = 3


@dataclass(frozen=True)
class FoundStateDict:
    """A state dict found in a checkpoint, where it was, and which other candidates were passed over."""

    state_dict: dict[str, Tensor]
    #: keys leading to it, then the removed key prefix if any, joined by "/": "" (the checkpoint itself),
    #: "ema", "state_dict/model", "module." (every key prefixed), "model/module.".
    name: str
    alternatives: tuple[str, ...] = ()

    def describe(self) -> str:
        """Where the weights came from, in words."""
        if not self.name:
            return "the checkpoint's top level"
        *keys, last = self.name.split("/")
        prefix = last if last.endswith(".") else ""
        if not prefix:
            keys.append(last)
        where = "checkpoint" + "".join(f"[{k!r}]" for k in keys) if keys else "the checkpoint's top level"
        return where + (f", with the key prefix {prefix!r} removed" if prefix else "")


@dataclass(frozen=True)
class _Candidate:
    path: tuple[str, ...]
    prefix: str
    tensors: dict[str, Tensor]

    @property
    def name(self) -> str:
        return "/".join(self.path + ((self.prefix,) if self.prefix else ()))

    def sort_key(self) -> tuple[int, int, int, str]:
        parts = self.path + ((self.prefix.rstrip("."),) if self.prefix else ())
        is_ema = any(re.search(r"(^|[^a-z])ema([^a-z]|$)", part.lower()) for part in parts)
        wrapper = parts[-1] if parts else ""
        rank = WRAPPER_PREFERENCE.index(wrapper) if wrapper in WRAPPER_PREFERENCE else len(WRAPPER_PREFERENCE)
        return (0 if is_ema else 1, rank, len(parts), self.name)


def _collect(obj: Mapping[Any, Any], marker: str, path: tuple[str, ...], out: list[_Candidate]) -> None:
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    for key in tensors:
        if key == marker or key.endswith("." + marker):
            prefix = key[: len(key) - len(marker)]
            group = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            out.append(_Candidate(path, prefix, group))
    if len(path) < MAX_DEPTH:
        for k, v in obj.items():
            if isinstance(k, str) and isinstance(v, Mapping):
                _collect(v, marker, path + (k,), out)


def describe_keys(obj: Any, limit: int = 8) -> str:
    """A short sample of what ``obj`` holds, for error messages: its first keys and those of nested mappings."""
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}, not a mapping of names to tensors"
    if not obj:
        return "an empty mapping"
    shown = []
    for key, value in list(obj.items())[:limit]:
        if isinstance(value, Mapping):
            inner = ", ".join(repr(k) for k in list(value)[:4]) + (", ..." if len(value) > 4 else "")
            shown.append(f"{key!r}: {{{inner}}} ({len(value)} entries)")
        elif isinstance(value, Tensor):
            shown.append(f"{key!r} (tensor {tuple(value.shape)})")
        else:
            shown.append(f"{key!r} ({type(value).__name__})")
    more = f", ... ({len(obj)} keys in all)" if len(obj) > limit else ""
    return "keys " + ", ".join(shown) + more


def find_state_dict(
    obj: Any,
    marker: str,
    *,
    what: str,
    expected: Sequence[str],
    name: Optional[str] = None,
    source: str = "the checkpoint",
) -> FoundStateDict:
    """The state dict in ``obj`` that holds the key ``marker`` (bare, wrapped or prefixed; see the module doc).

    ``name`` picks one by its :attr:`FoundStateDict.name` (e.g. ``"model"`` to skip the preferred EMA weights).
    ``what`` (e.g. "OpenAI UNet") and ``expected`` (typical keys) word the error when nothing is found.
    """
    candidates: list[_Candidate] = []
    if isinstance(obj, Mapping):
        _collect(obj, marker, (), candidates)
    if not candidates:
        raise ValueError(
            f"{source} holds no {what} state dict: expected a mapping of names to tensors with keys such as "
            f"{', '.join(repr(k) for k in expected)}: bare, under a wrapper key such as 'model', 'ema' or "
            f"'state_dict', or with every key prefixed (e.g. 'module.' from DistributedDataParallel). Found "
            f"{describe_keys(obj)}"
        )
    candidates.sort(key=_Candidate.sort_key)
    names = [c.name for c in candidates]
    if name is not None:
        if name not in names:
            raise ValueError(
                f"{source} has no {what} state dict named {name!r}; it has {', '.join(repr(n) for n in names)} "
                "('' is the checkpoint's top level)"
            )
        chosen = candidates[names.index(name)]
    else:
        chosen = candidates[0]
    return FoundStateDict(chosen.tensors, chosen.name, tuple(n for n in names if n != chosen.name))


def unwrap_state_dict(obj: Any, marker: str, *, what: str, expected: Sequence[str], name: Optional[str] = None,
                      source: str = "the checkpoint") -> dict[str, Tensor]:  # fmt: skip
    """The tensors :func:`find_state_dict` finds; a warning names them and the others when it had to choose."""
    found = find_state_dict(obj, marker, what=what, expected=expected, name=name, source=source)
    if found.alternatives and name is None:
        warnings.warn(
            f"{source} holds {len(found.alternatives) + 1} {what} state dicts; converting {found.describe()} "
            f"(state_dict_key={found.name!r}; EMA weights are preferred). Others: "
            f"{', '.join(repr(n) for n in found.alternatives)}; choose one with state_dict_key (cmkit convert "
            "--state-dict-key)",
            stacklevel=4,
        )
    return found.state_dict
