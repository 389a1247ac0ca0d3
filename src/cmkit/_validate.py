"""User-facing checks of arguments, configs and flags: each raises a ``ValueError`` naming the value and the fix.

Internal invariants (what cmkit itself guarantees) use ``assert`` instead; these functions are for what a user,
a config file or a flag can get wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Optional


def require_int(name: str, value: Any, minimum: int, hint: str = "", maximum: Optional[int] = None) -> int:
    """``value`` as an int, or a ValueError naming ``name`` when it is not an integer in [minimum, maximum].

    ``bool`` is refused (``True`` is not a count); integral floats such as ``4.0`` are accepted. ``hint`` is
    appended to the name in the message, e.g. ``" (residual blocks)"``.
    """
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and int(value) == value
        and value >= minimum
    )
    if not ok:
        raise ValueError(f"{name} must be an integer >= {minimum}{hint}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum:,}{hint}, got {int(value):,}; use a smaller value")
    return int(value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise a ValueError naming ``name`` and listing ``choices`` when ``value`` is not one of them."""
    allowed = tuple(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
