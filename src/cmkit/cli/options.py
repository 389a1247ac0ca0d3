"""Command-line pieces shared by the commands: the subcommand parser, flags generated from a config dataclass,
the common ``--model``, ``--seed``, ``--batch-size``, ``--device`` and ``--dtype`` flags, and ``--out`` / ``--scale``
checks.

The checks run before the model is loaded or anything large is allocated, and raise a ValueError that names
the flag and the fix (``cmkit`` prints it as ``cmkit COMMAND: error: ...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence, Union

from ..fields import default_of, help_of

if TYPE_CHECKING:  # torch is imported by the commands' run(), so ``cmkit --help`` stays fast
    import torch


class LazyArgumentParser(argparse.ArgumentParser):
    """A subcommand parser whose arguments are added by ``populate(parser)`` only when that subcommand is parsed
    (the class of every ``cmkit`` subcommand parser; without ``populate`` it is an ordinary parser).

    ``cmkit --help`` and the other subcommands then never run ``populate``: ``cmkit train`` builds its flags from
    config dataclasses whose modules import torch, which would make every ``cmkit`` call wait for torch.
    """

    def __init__(
        self, *args: Any, populate: Optional[Callable[[argparse.ArgumentParser], None]] = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._populate: Optional[Callable[[argparse.ArgumentParser], None]] = populate

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)
        return super().parse_known_args(args, namespace)


def add_command(
    subparsers: Any, name: str, help: str, description: str, epilog: str,
    populate: Optional[Callable[[argparse.ArgumentParser], None]] = None, **options: Any,
) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``: its one-line ``help``, a ``description`` and an examples ``epilog``.

    With ``populate``, the arguments are added by ``populate(parser)`` when the subcommand is parsed (see
    :class:`LazyArgumentParser`).
    """
    return subparsers.add_parser(
        name, help=help, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter, populate=populate, **options,
    )


def add_dataclass_arguments(p: argparse.ArgumentParser, cls: type) -> list[str]:
    """One flag per field of the dataclass ``cls`` (``--field-name``), read from the field's type, default and help.

    The field metadata (see :func:`cmkit.fields.documented`) may set ``flag`` (another name), ``cli=False`` (no
    flag), ``metavar`` and ``zero_is_none`` (0 on the command line means None). A ``bool`` defaulting to True
    becomes ``--no-NAME``, an ``Optional[bool]`` gets both forms, a ``Literal`` gives the choices, a
    ``tuple[X, ...]`` takes several values and a ``dict`` takes repeated ``KEY=VALUE``. Returns the names added.
    """
    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True):
            _add_field_argument(p, f, hints[f.name])
            added.append(f.name)
    return added


def _add_field_argument(p: argparse.ArgumentParser, f: dataclasses.Field, hint: Any) -> None:
    meta, default = f.metadata, default_of(f)
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    kwargs: dict[str, Any] = {"dest": f.name}
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is Union and type(None) in args
    inner = next(a for a in args if a is not type(None)) if optional else hint
    origin = typing.get_origin(inner)
    shown = default
    if inner is bool and not optional:
        if default:
            flag, kwargs["action"], shown = "--no-" + flag[2:], "store_false", None
        else:
            kwargs["action"] = "store_true"
    elif inner is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is dict:
        kwargs.update(action="append", metavar="KEY=VALUE")
    elif origin is tuple:
        kwargs.update(nargs="+", type=typing.get_args(inner)[0])
        shown = " ".join(map(str, default)) or None  # an empty tuple shows no default
    elif origin is Literal:
        kwargs["choices"] = typing.get_args(inner)
        kwargs["type"] = type(kwargs["choices"][0])
    elif dataclasses.is_dataclass(inner):
        kwargs["type"], shown = str, default.spec() if hasattr(default, "spec") else None
    else:
        kwargs["type"] = inner
    if meta.get("zero_is_none"):
        kwargs["type"] = lambda text, convert=kwargs["type"]: convert(text) or None
    text = ("turn off " if kwargs.get("action") == "store_false" else "") + help_of(f)
    if not (shown is None or shown is False or shown == {}):
        text += f" (default: {shown})"
    p.add_argument(flag, help=text.replace("%", "%%"), **kwargs)


def key_values(items: list[str], flag: str) -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` flags as a dict; each value is read as JSON, else kept as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # a bare string such as loss=pseudo_huber
    return out


def dataclass_help(cls: type, indent: str = "    ") -> str:
    """The fields of ``cls`` as ``name=default  help`` lines (for an epilog listing options)."""
    lines = []
    for f in dataclasses.fields(cls):
        default = default_of(f)
        shown = f"{f.name}=..." if default is dataclasses.MISSING else f"{f.name}={default}"
        lines.append(f"{indent}{shown:<24} {help_of(f)}")
    return "\n".join(lines)


def add_model_argument(p: argparse.ArgumentParser, hub: bool = False) -> None:
    """``--model``: a pipeline directory (with ``hub``, or a hub id); None means the bundled digits model."""
    what = "pipeline directory or hub id" if hub else "pipeline directory"
    p.add_argument("--model", default=None, help=f"{what} (default: the bundled digits model)")


def add_seed_argument(p: argparse.ArgumentParser, help: str = "random seed") -> None:
    """``--seed``, 0 by default; ``help`` says what it seeds."""
    p.add_argument("--seed", type=int, default=0, help=f"{help} (default 0)")


def add_batch_size_argument(p: argparse.ArgumentParser, default: int, help: str = "samples per pipeline call") -> None:
    """``--batch-size`` with the command's ``default``."""
    p.add_argument("--batch-size", type=int, default=default, help=f"{help} (default {default})")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """``--device``, ``cpu`` by default (checked by :func:`parse_device_flag`)."""
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")


#: the choices of ``--dtype`` (resolved by :func:`cmkit.hardware.resolve_dtype`)
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def add_dtype_argument(p: argparse.ArgumentParser) -> None:
    """``--dtype {auto,float32,bfloat16,float16}``, ``auto`` by default (see :func:`cmkit.hardware.fastest_dtype`)."""
    p.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="auto",
        help="compute dtype. auto (the default) picks the fastest for the device: bfloat16 on CPUs with AMX (where it "
        "beats float32), float32 on other CPUs, float16 on CUDA and MPS",
    )


def dtype_label(requested: str, resolved: object) -> str:
    """How a chosen dtype is reported: ``bfloat16`` or ``bfloat16 (auto)``."""
    name = str(resolved).removeprefix("torch.")
    return f"{name} (auto)" if requested == "auto" else name


#: output image types, in the order the messages list them (each is kept only if this Pillow can write it).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def parse_device_flag(value: str | None, flag: str = "--device") -> torch.device:
    """``--device`` as a device that exists here (see :func:`cmkit.devices.parse_device`)."""
    from ..devices import parse_device

    return parse_device("cpu" if value is None else value, flag)


def image_suffixes() -> tuple[str, ...]:
    """The entries of :data:`IMAGE_SUFFIXES` that the installed Pillow can save."""
    from PIL import Image

    registered = Image.registered_extensions()
    return tuple(s for s in IMAGE_SUFFIXES if s in registered and registered[s] in Image.SAVE)


def check_out_path(path: str | Path, flag: str = "--out", extra: Sequence[str] = ()) -> Path:
    """``path`` when its suffix is an image type this Pillow writes (or one of ``extra``, e.g. ``.npy``)."""
    out = Path(path)
    images = image_suffixes()
    if out.suffix.lower() not in (*images, *extra):
        kinds = f"an image ({', '.join(images)})" + (f" or {', '.join(extra)} (raw samples)" if extra else "")
        raise ValueError(f"{flag} must end in {kinds}, got {out}")
    return out


def check_upscaled_images(
    count: int, width: int, height: int, channels: int, scale: int, grid: bool = True, flag: str = "--scale"
) -> None:
    """Refuse ``count`` 8-bit images upscaled ``scale`` times (and the ``grid`` holding them) that cannot fit in memory."""
    from ..limits import require_memory

    side_w, side_h = width * scale, height * scale
    nbytes = (2 if grid else 1) * count * side_w * side_h * channels
    what = f"{count} images of {side_w}x{side_h} pixels" + (" and their grid" if grid else "")
    require_memory(nbytes, f"{flag} {scale} ({what})", f"use a smaller {flag}")
