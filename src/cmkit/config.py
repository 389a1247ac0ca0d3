"""Constructor arguments are the saved config: a small mixin shared by schedulers and models.

A class decorated with :func:`register_to_config` on its ``__init__`` records every constructor argument
(defaults included) in ``self.config``. ``save_config`` writes them as JSON in diffusers' layout
(``_class_name``, ``_diffusers_version`` plus the arguments) so diffusers can read our directories, and
``from_config`` / ``load_config`` rebuild an equal object from such a file.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

from .io.atomic import atomic_write_text

#: diffusers version whose file layout we write (and whose numerics we match).
DIFFUSERS_COMPAT_VERSION = "0.42.1"

T = TypeVar("T", bound="ConfigMixin")


class FrozenConfig(dict[str, Any]):
    """A read-only dict with attribute access (``config.sigma_max``).

    A ``dict`` (not just a mapping) because diffusers' ``from_config`` accepts only dicts: the usual swap
    ``pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)`` must work when the
    pipeline holds a cmkit scheduler (diffusers takes any other mapping for a hub id and fails to download it).
    """

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no entry {key!r}") from None

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "a config is read-only; build a new object with from_config(config, key=value) or call "
            "register_config_update(key=value)"
        )

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __repr__(self) -> str:
        return f"FrozenConfig({dict(self)!r})"

    def __reduce__(self):
        """Pickle / deepcopy as a plain dict rebuilt through ``__init__`` (``__setitem__`` is blocked)."""
        return (FrozenConfig, (dict(self),))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy / torch arrays and scalars
        return value.tolist()
    return value


def register_to_config(init):
    """Decorate ``__init__`` so that its bound arguments (with defaults) become ``self.config``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = {k: _jsonable(v) for k, v in bound.arguments.items() if k != "self"}
        for name, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                values.update(values.pop(name, {}))
            elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                values.pop(name, None)
        object.__setattr__(self, "_internal_config", FrozenConfig(values))
        init(self, *args, **kwargs)

    return wrapper


class ConfigMixin:
    """Adds ``config``, ``save_config``, ``from_config`` and ``load_config`` to a class."""

    #: file name of the saved config, e.g. ``"config.json"`` or ``"scheduler_config.json"``.
    config_name: ClassVar[str] = "config.json"
    #: the ``_class_name`` written to the file (diffusers' class name, so diffusers can read it).
    saved_class_name: ClassVar[str | None] = None

    @property
    def config(self) -> FrozenConfig:
        return self._internal_config  # type: ignore[attr-defined]

    def register_config_update(self, **updates: Any) -> None:
        """Change config entries after construction (e.g. a tuned default); they are saved with the rest."""
        values = dict(self.config)
        values.update({k: _jsonable(v) for k, v in updates.items()})
        object.__setattr__(self, "_internal_config", FrozenConfig(values))

    @classmethod
    def config_keys(cls) -> list[str]:
        """The constructor argument names that make up the config."""
        params = inspect.signature(cls.__init__).parameters
        return [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    def to_json_dict(self) -> dict[str, Any]:
        """The config as saved: diffusers' header fields plus every constructor argument."""
        header = {
            "_class_name": self.saved_class_name or type(self).__name__,
            "_diffusers_version": DIFFUSERS_COMPAT_VERSION,
        }
        return {**header, **dict(self.config)}

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config_name`` into ``save_directory`` (atomically) and return its path."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.config_name
        atomic_write_text(path, json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load_config(cls, path: str | os.PathLike, subfolder: str | None = None) -> dict[str, Any]:
        """Read a config dict from a JSON file or a directory holding ``config_name``."""
        p = Path(path)
        if subfolder:
            p = p / subfolder
        if p.is_dir():
            p = p / cls.config_name
        if not p.is_file():
            raise FileNotFoundError(f"no {cls.config_name} found at {p}")
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{p} is not valid JSON: {err}") from err

    @classmethod
    def from_config(cls: type[T], config: Mapping[str, Any], **overrides: Any) -> T:
        """Build an instance from a config mapping; keys starting with ``_`` are metadata and ignored.

        Keys that diffusers lists in ``_use_default_values`` (never set by the user, e.g. an Euler config passed
        to another scheduler) take this class's defaults, as in diffusers.
        """
        keys = set(cls.config_keys())
        defaulted = set(config.get("_use_default_values", None) or ())
        merged = {**{k: v for k, v in dict(config).items() if k not in defaulted}, **overrides}
        kwargs = {k: v for k, v in merged.items() if k in keys}
        unknown = sorted(k for k in merged if k not in keys and not k.startswith("_"))
        if unknown:
            cls._handle_unknown_config_keys(unknown, merged)
        return cls(**kwargs)

    @classmethod
    def _handle_unknown_config_keys(cls, unknown: list[str], config: Mapping[str, Any]) -> None:
        """Warn about config keys this class does not take (models may override this to raise)."""
        warnings.warn(f"{cls.__name__} ignores unknown config keys: {', '.join(unknown)}", stacklevel=3)
