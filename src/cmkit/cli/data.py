"""``cmkit data prepare``: decode and resize a data set once into a memory-mappable array for fast epochs."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .options import add_command

EPILOG = """examples:
  # ImageNet-64 style: centre crops of a class-per-folder tree, decoded by 8 processes
  cmkit data prepare ~/imagenet/train data/imagenet64 --resolution 64 --workers 8
  # an EDM dataset archive (dataset_tool.py output), grayscale
  cmkit data prepare zip:~/datasets/mnist-32x32.zip data/mnist32 --resolution 32 --channels 1
  cmkit train --data prepared:data/imagenet64 --flip ...   # then train on it

SRC is a folder, a .zip archive in EDM's dataset format, or a spec folder:PATH / zip:PATH. OUT is a new
directory: images.u8 (uint8 [N, C, R, R], np.memmap-able), labels.npy (int64 class ids, when SRC has classes) and
manifest.json (format, shape, class names, source, and every unreadable file skipped, with its reason). It is
written under a temporary name and renamed when complete, so an interrupted run leaves nothing that looks
prepared. The pixels are those `--data folder:SRC` would give at the same --resolution, --resize and --channels.
"""


def register(subparsers: Any) -> None:
    """Add the ``data`` command and its ``prepare`` subcommand."""
    p = add_command(
        subparsers, "data",
        help="prepare image data for fast training (decode and resize once)",
        description="Tools for training data.",
        epilog=EPILOG,
    )
    commands = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    q = commands.add_parser(
        "prepare", help="decode and resize SRC once into a memory-mappable directory OUT (read as prepared:OUT)",
        description="Decode every image of SRC, bring it to --resolution and write OUT for `--data prepared:OUT`.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("src", metavar="SRC", help="a folder of images, an EDM .zip archive, or folder:PATH / zip:PATH")
    q.add_argument("out", metavar="OUT", help="the directory to write (must not exist)")
    q.add_argument("--resolution", type=int, required=True, help="image size in pixels")
    q.add_argument("--resize", choices=["crop", "stretch"], default="crop",
                   help="centre crop after scaling the short side (default), or stretch both sides")
    q.add_argument("--channels", type=int, choices=[1, 3], default=3, help="1 (grayscale) or 3 (RGB; default)")
    q.add_argument("--class-labels", action=argparse.BooleanOptionalAction, default=None,
                   help="keep class ids (folder: sub-folders; zip: dataset.json); default: when SRC has them")
    q.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding processes (default: the CPU count, at most 8; 0 or 1: this process)")
    q.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    q.set_defaults(func=run)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def source_spec(src: str) -> tuple[str, str]:
    """``(kind, path)`` of SRC: a ``folder:`` / ``zip:`` spec, else a ``.zip`` file or a folder."""
    kind, sep, path = src.partition(":")
    if sep and kind in ("folder", "zip") and path:
        return kind, path
    return ("zip" if src.lower().endswith(".zip") else "folder"), src


def run(args: argparse.Namespace) -> int:
    """Prepare the data and report what was written and skipped."""
    from ..data import open_records
    from ..data.prepared import prepare_images

    kind, path = source_spec(args.src)
    records = open_records(kind, os.path.expanduser(path), args.class_labels)
    manifest = prepare_images(
        records, args.out, resolution=args.resolution, resize=args.resize, channels=args.channels,
        workers=args.workers, source=f"{kind}:{os.path.abspath(os.path.expanduser(path))}", progress=args.progress,
    )
    n, c, r, _ = manifest["shape"]
    classes = f", {len(manifest['class_names'])} classes" if manifest["class_names"] else ""
    print(f"prepared {n:,} images ({c}x{r}x{r}, {n * c * r * r / 2**20:.1f} MiB{classes}) in {args.out}; "
          f"train with --data prepared:{args.out}")
    skipped = manifest["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s) (first: {skipped[0]['reason']}); all are listed in "
              f"{os.path.join(args.out, 'manifest.json')}")
    for note, count in manifest["decoder_notes"].items():
        print(f"{count} image(s): each {note}")
    return 0
