"""``cmkit`` command line: one module per subcommand, each with ``register(subparsers)``.

A subcommand module defines ``register(subparsers) -> None``, which adds its parser and sets
``func=run`` (a callable taking the parsed namespace and returning an exit code). Heavy imports happen
inside ``run`` so ``cmkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .options import LazyArgumentParser

#: subcommand modules under ``cmkit.cli``, in ``--help`` order.
SUBCOMMANDS: tuple[str, ...] = ("sample", "train", "edit", "eval", "tune_timesteps", "convert", "demo", "ema", "data")


def build_parser() -> argparse.ArgumentParser:
    """The full ``cmkit`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="cmkit",
        description="Consistency models: sample, train, edit, convert and evaluate.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=LazyArgumentParser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"cmkit.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmkit`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, OSError) as err:
        print(f"cmkit {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
