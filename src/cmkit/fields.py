"""Dataclass fields that carry their help text once: the CLI and the docs read it from the field.

``documented(default, "what it is")`` is ``dataclasses.field`` with ``metadata={"help": ...}``; a mutable
(unhashable) default such as a list, dict or dataclass is deep-copied per instance. :func:`help_of` reads the text back (empty if none was given).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

_NO_DEFAULT: Any = dataclasses.MISSING


def documented(default: Any = _NO_DEFAULT, help: str = "", **metadata: Any) -> Any:
    """A dataclass field with ``default`` (mutable defaults are copied per instance) and its ``help`` text.

    Further ``metadata`` is read by the CLI builder (:func:`cmkit.cli.options.add_dataclass_arguments`).
    """
    meta = {"help": help, **metadata}
    if default is not _NO_DEFAULT and type(default).__hash__ is None:
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def help_of(f: dataclasses.Field) -> str:
    """The help text of a field made with :func:`documented` ("" for a plain field)."""
    return str(f.metadata.get("help", ""))


def default_of(f: dataclasses.Field) -> Any:
    """The field's default (from its factory if it has one), or ``dataclasses.MISSING`` for a required field."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
