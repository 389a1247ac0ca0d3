"""``cmkit demo``: one-step and two-step digits from the bundled consistency model, as one labelled PNG grid.

Each row is one class: ``--per-class`` one-step samples, a gap, then two-step samples drawn from the same
seed (so the same initial noise; Song et al. 2023, Algorithm 1 with one extra re-noising step). The
two-step schedule is the pipeline's tuned default for ``num_inference_steps=2`` when it has one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from .options import (
    add_command, add_device_argument, add_dtype_argument, add_model_argument, add_seed_argument, dtype_label,
)

EPILOG = """examples:
  cmkit demo                                  # -> demo.png: 10 rows (digits 0-9) x (8 one-step | 8 two-step)
  cmkit demo --out out/demo.png --per-class 4 --seed 1
  cmkit demo --model runs/cd --scale 6        # any class-conditional image pipeline
"""

#: height in pixels of the header row that names the two halves of the grid.
HEADER_HEIGHT = 20
#: border in pixels around every cell, and the grey level of borders and background.
PAD, BACKGROUND = 2, 64


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    p = add_command(
        subparsers, "demo",
        help="write a PNG grid of one-step and two-step digits from the bundled model",
        description="Load the bundled digits consistency model (or --model DIR), generate --per-class one-step "
        "and two-step samples of every class, write them as one PNG grid (one row per class) and print where it "
        "is and how long generation took.",
        epilog=EPILOG,
    )
    add_model_argument(p)
    p.add_argument("--out", default="demo.png", help="grid image path (default demo.png)")
    p.add_argument("--per-class", type=int, default=8, help="samples per class and step count (default 8)")
    add_seed_argument(p)
    p.add_argument("--scale", type=int, default=4, help="integer pixel upscaling of each sample (default 4)")
    add_device_argument(p)
    add_dtype_argument(p)
    p.set_defaults(func=run)


def grid_size(per_class: int, num_classes: int, image_size: tuple[int, int], scale: int) -> tuple[int, int]:
    """(width, height) in pixels of the demo grid for ``image_size`` = (width, height) samples."""
    cell_w, cell_h = image_size[0] * scale + 2 * PAD, image_size[1] * scale + 2 * PAD
    return cell_w * (2 * per_class + 2), cell_h * num_classes + HEADER_HEIGHT


def compose_grid(one_step: Sequence, two_step: Sequence, per_class: int, scale: int):
    """Lay out class rows ``[label | one-step x k | gap | two-step x k]`` under a header, from PIL images."""
    from PIL import Image, ImageDraw

    from ..postprocess import image_grid

    if len(one_step) != len(two_step) or len(one_step) % per_class:
        raise ValueError(f"need equally many one-step and two-step images, a multiple of per_class={per_class}")
    w, h = one_step[0].size
    cell = (w * scale + 2 * PAD, h * scale + 2 * PAD)
    blank = Image.new("L", cell, BACKGROUND)

    def framed(image):
        canvas = blank.copy()
        canvas.paste(image.convert("L").resize((w * scale, h * scale), Image.NEAREST), (PAD, PAD))
        return canvas

    cells = []
    for row in range(len(one_step) // per_class):
        label = blank.copy()
        ImageDraw.Draw(label).text((cell[0] // 2, cell[1] // 2), str(row), fill=255, anchor="mm")
        part = slice(row * per_class, (row + 1) * per_class)
        cells += [label, *map(framed, one_step[part]), blank, *map(framed, two_step[part])]
    body = image_grid(cells, cols=2 * per_class + 2)
    grid = Image.new("L", (body.width, body.height + HEADER_HEIGHT), BACKGROUND)
    grid.paste(body, (0, HEADER_HEIGHT))
    draw = ImageDraw.Draw(grid)
    for title, first in (("1 step", 1), ("2 steps", per_class + 2)):
        draw.text((first * cell[0] + per_class * cell[0] // 2, HEADER_HEIGHT // 2), title, fill=255, anchor="mm")
    return grid


def run(args: argparse.Namespace) -> int:
    """Load the model, sample one and two steps per class, save the grid, print the path and timings."""
    import time

    import torch

    from ..hardware import resolve_dtype
    from ..pipeline_io import read_parameterization
    from ..pipeline import ConsistencyModelPipeline
    from ..postprocess import is_image_shape
    from .options import check_upscaled_images, parse_device_flag
    from .sample import resolve_model

    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    if args.scale < 1:
        raise ValueError(f"--scale must be >= 1, got {args.scale}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png path, got {out}")
    device = parse_device_flag(args.device)

    model_dir = resolve_model(args.model)
    if read_parameterization(model_dir) == "edm":
        raise ValueError(f"{model_dir} is an EDM diffusion teacher, not a consistency model; pass a consistency pipeline")
    t0 = time.perf_counter()
    dtype = resolve_dtype(args.dtype, device)
    pipe = ConsistencyModelPipeline.from_pretrained(model_dir, dtype=dtype, device=device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    if not is_image_shape(pipe.sample_shape):
        raise ValueError(f"the demo shows images, but this model makes samples of shape {pipe.sample_shape}")
    num_classes = pipe.num_classes
    if num_classes is None:
        raise ValueError("the demo draws one row per class and needs a class-conditional model; pass one with --model")
    pipe.require_batch_fits(num_classes * args.per_class, pipe.sample_shape)
    _, height, width = pipe.sample_shape
    check_upscaled_images(2 * num_classes * args.per_class, width, height, 1, args.scale)
    labels = [c for c in range(num_classes) for _ in range(args.per_class)]

    t1 = time.perf_counter()
    grids = []
    for steps in (1, 2):
        generator = torch.Generator(device=device).manual_seed(args.seed)
        grids.append(pipe(batch_size=len(labels), class_labels=labels, num_inference_steps=steps,
                          generator=generator, output_type="pil").images)
    generate_s = time.perf_counter() - t1

    grid = compose_grid(grids[0], grids[1], args.per_class, args.scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    two_step = pipe.default_timesteps.get("2")
    schedule = f"timesteps {list(two_step)}" if two_step else "default timesteps"
    print(f"wrote {out.resolve()} ({grid.width}x{grid.height}: {num_classes} classes x {args.per_class} one-step | "
          f"{args.per_class} two-step samples, {schedule})")
    print(f"generation: {len(labels)} one-step + {len(labels)} two-step samples in {generate_s:.2f} s "
          f"in {dtype_label(args.dtype, dtype)} (model load {load_s:.2f} s)")
    return 0
