"""``cmkit edit TASK``: zero-shot editing from the command line, one subcommand per task (CM Algorithm 4)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import add_command, add_device_argument, add_dtype_argument, add_seed_argument

EXAMPLES = """\
examples:
  cmkit edit inpaint --model DIR --image in.png --mask mask.png --steps 40 --out out.png
  cmkit edit colorize --model DIR --image gray.png --out color.png
  cmkit edit super-resolve --model DIR --image low.png --factor 4 --out high.png
  cmkit edit denoise --model DIR --image noisy.png --sigma 0.3 --out clean.png
  cmkit edit interpolate --model DIR --num-images 8 --seed 1 --out strip.png
  cmkit edit interpolate --model DIR --first a.png --second b.png --sigma 2 --out strip.png
  cmkit edit stroke-edit --model DIR --image strokes.png --sigma 1.5 --out edited.png

Masks: white (>= 0.5 after scaling to [0, 1]) marks the region to generate; black is kept.
Several outputs (a batch, or interpolation) are saved side by side in one image.
"""

TASKS: dict[str, str] = {
    "inpaint": "fill the white region of a mask",
    "colorize": "colour a grayscale image (needs an RGB model)",
    "super-resolve": "upsample a low-resolution image by an integer factor",
    "denoise": "remove Gaussian noise of a known level sigma",
    "interpolate": "slerp between two noises or two images' noised latents",
    "stroke-edit": "stroke-guided editing (SDEdit): turn a rough painting into a realistic image",
}


def _common(p: argparse.ArgumentParser, needs_image: bool = True) -> None:
    p.add_argument("--model", required=True, help="pipeline directory or hub id (ConsistencyModelPipeline layout)")
    if needs_image:
        p.add_argument("--image", required=True, help="input image file (PNG, JPEG, ...)")
    p.add_argument("--out", required=True, help="output image file (.png, .jpg, .webp, ...)")
    p.add_argument("--steps", type=int, default=None, help="number of sampling steps (default: per task)")
    p.add_argument("--sigmas", default=None, help="explicit descending noise levels, comma-separated, e.g. 80,5,1")
    add_seed_argument(p)
    p.add_argument("--class-label", type=int, default=None, help="class of a class-conditional model")
    add_device_argument(p)
    add_dtype_argument(p)


def register(subparsers: Any) -> None:
    """Add ``cmkit edit`` with one subcommand per editing task."""
    parser = add_command(
        subparsers, "edit",
        help="zero-shot editing: inpaint, colorize, super-resolve, denoise, interpolate, stroke-edit",
        description="Zero-shot image editing with a consistency model (Song et al. 2023, Algorithm 4).",
        epilog=EXAMPLES,
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for name, help_text in TASKS.items():
        p = add_command(tasks, name, help=help_text, description=help_text, epilog=EXAMPLES)
        _common(p, needs_image=name != "interpolate")
        if name == "inpaint":
            p.add_argument("--mask", required=True, help="mask image: white = generate, black = keep")
        elif name == "super-resolve":
            p.add_argument("--factor", type=int, required=True, help="integer upsampling factor dividing the model size")
        elif name in ("denoise", "stroke-edit"):
            p.add_argument("--sigma", type=float, required=True, help="noise level to start from, in [-1, 1] units")
        elif name == "interpolate":
            p.add_argument("--first", default=None, help="first image (omit both to interpolate between noises)")
            p.add_argument("--second", default=None, help="second image")
            p.add_argument("--sigma", type=float, default=None, help="noise level of the latents (default sigma_max)")
            p.add_argument("--num-images", type=int, default=8, help="number of images along the path (default 8)")
        p.set_defaults(func=run)


def _parse_sigmas(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--sigmas must be comma-separated numbers, e.g. 80,5,1; got {text!r}") from err


def _save(images: list, out: Path) -> None:
    from PIL import Image

    from ..io.atomic import atomic_path
    from ..postprocess import image_grid

    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {out}; use a suffix such as .png or .jpg")
    picture = images[0] if len(images) == 1 else image_grid(images, cols=len(images))
    with atomic_path(out) as tmp:
        picture.save(tmp, format=fmt)


def run(args: argparse.Namespace) -> int:
    """Load the pipeline, run the chosen task and save the result."""
    import torch

    from ..hardware import resolve_dtype
    from ..pipeline import ConsistencyModelPipeline
    from .options import check_out_path, parse_device_flag

    out = check_out_path(args.out)
    device = parse_device_flag(args.device)
    pipe = ConsistencyModelPipeline.from_pretrained(args.model, dtype=resolve_dtype(args.dtype, device), device=device)
    generator = torch.Generator().manual_seed(args.seed)
    common = dict(
        num_inference_steps=args.steps,
        sigmas=_parse_sigmas(args.sigmas),
        class_labels=args.class_label,
        generator=generator,
        output_type="pil",
    )
    if args.task == "inpaint":
        result = pipe.inpaint(args.image, args.mask, **common)
    elif args.task == "colorize":
        result = pipe.colorize(args.image, **common)
    elif args.task == "super-resolve":
        result = pipe.super_resolve(args.image, args.factor, **common)
    elif args.task == "denoise":
        result = pipe.denoise(args.image, args.sigma, **common)
    elif args.task == "stroke-edit":
        result = pipe.stroke_edit(args.image, args.sigma, **common)
    else:  # "interpolate": argparse restricts the choices
        result = pipe.interpolate(args.first, args.second, num_images=args.num_images, sigma=args.sigma, **common)
    _save(result.images, out)
    print(f"wrote {out}")
    return 0
