"""User-facing checks of arguments, configs and flags: each raises a ``ValueError`` naming the value and the fix.

Internal invariants (what cmkit itself guarantees) use ``assert`` instead; these functions are for what a user,
a config file or a flag can get wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Optional


def is_int(value: Any, allow_float: bool = False) -> bool:
    """Whether ``value`` is an integer: an ``int`` or NumPy integer (never a ``bool``: ``True`` is no count), or
    with ``allow_float`` also an integral float such as ``4.0``."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return allow_float and isinstance(value, numbers.Real) and math.isfinite(value) and int(value) == value


def require_int(
    name: str,
    value: Any,
    minimum: int,
    hint: str = "",
    maximum: Optional[int] = None,
    *,
    allow_float: bool = True,
) -> int:
    """``value`` as an int, or a ValueError naming ``name`` when it is not an integer in [minimum, maximum].

    ``bool`` is refused; integral floats such as ``4.0`` are accepted unless ``allow_float=False`` (for values
    that are used unconverted, e.g. config fields handed to torch layers). ``hint`` follows the bound in the
    message, e.g. ``" (residual blocks)"``.
    """
    if not is_int(value, allow_float) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{hint}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum:,}{hint}, got {int(value):,}; use a smaller value")
    return int(value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise a ValueError naming ``name`` and listing ``choices`` when ``value`` is not one of them."""
    allowed = tuple(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def require_positive(name: str, value: Any, hint: str = "", what: str = "finite number") -> float:
    """``value`` as a float, or a ValueError naming ``name`` when it is not a finite number > 0 (``what`` names the
    kind in the message, e.g. ``"number of seconds"``)."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{name} must be a positive {what}{hint}, got {value!r}")
    return float(value)


def check_custom_timesteps(timesteps: Any, num_train_timesteps: int) -> list[int]:
    """A scheduler's custom ``timesteps`` as Python ints: a non-empty, strictly descending sequence of integer
    indices into the ``num_train_timesteps``-point training grid (a list, NumPy array or tensor)."""
    values = timesteps.tolist() if hasattr(timesteps, "tolist") else list(timesteps)
    if not values:
        raise ValueError("`timesteps` is empty; pass at least one training-grid index, e.g. timesteps=[0]")
    for v in values:
        if not is_int(v, allow_float=True):
            raise ValueError(f"`timesteps` must be integer grid indices (integers), got {v!r} in {values}")
    out = [int(v) for v in values]
    if any(cur >= prev for prev, cur in zip(out, out[1:])):
        raise ValueError(f"`timesteps` must be strictly descending, got {out}")
    n = int(num_train_timesteps)
    if out[0] >= n or out[-1] < 0:
        raise ValueError(f"`timesteps` must be grid indices in [0, {n - 1}] (num_train_timesteps={n}), got {out}")
    return out
