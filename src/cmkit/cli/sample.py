"""``cmkit sample``: generate images (or points) with a saved consistency-model pipeline and time it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """examples:
  cmkit sample                                   # 1-step samples from the bundled digits model -> samples.png
  cmkit sample --steps 2 --batch-size 64 --out grid.png
  cmkit sample --model ./cd_imagenet64_l2 --timesteps 22 0 --class-labels 145 --dtype float32
  cmkit sample --model ./my_pipeline --out-dir samples/ --seed 3
  cmkit sample --model ./toy_2d --batch-size 1000 --out points.npy   # non-image models: save a .npy array
  cmkit sample --model runs/tcd --steps 4 --eta 0.3             # a TCD model: 4 steps, gamma 0.3
"""

from .options import (
    add_batch_size_argument, add_command, add_device_argument, add_dtype_argument, add_model_argument,
    add_seed_argument, dtype_label,
)


def default_model_dir() -> Path:
    """Where the bundled digits pipeline lives inside the installed package."""
    return Path(__file__).resolve().parent.parent / "assets" / "digits_cm"


def _timestep(text: str) -> int | float:
    """A grid index (``22``) stays an int; a TrigFlow time (``1.1``) is a float."""
    value = float(text)
    return int(value) if text.strip().lstrip("+-").isdigit() else value


def register(subparsers: Any) -> None:
    """Add the ``sample`` subcommand."""
    p = add_command(
        subparsers, "sample",
        help="generate samples with a consistency-model pipeline",
        description="Generate samples with a consistency-model pipeline directory (diffusers layout) and print "
        "how long it took. Saves a grid PNG (--out) and/or one PNG per sample (--out-dir).",
        epilog=EPILOG,
    )
    add_model_argument(p, hub=True)
    p.add_argument("--steps", type=int, default=1, help="number of sampling steps (default 1)")
    p.add_argument("--timesteps", type=_timestep, nargs="+", default=None, metavar="T",
                   help="explicit descending timesteps (overrides --steps): Karras grid indices for consistency "
                        "models, e.g. 22 0; TrigFlow (sCM) times in radians, e.g. 1.5708 1.1")
    p.add_argument("--eta", type=float, default=None, metavar="GAMMA",
                   help="TCD's gamma in [0, 1] for a TCDScheduler pipeline (0: deterministic; default 0.3)")
    p.add_argument("--class-labels", type=int, nargs="+", default=None, metavar="C",
                   help="one class for all samples, or one per sample (default: random, from --seed)")
    add_batch_size_argument(p, 16, "number of samples")
    add_seed_argument(p)
    add_dtype_argument(p)
    add_device_argument(p)
    p.add_argument("--out", default=None,
                   help="grid image path (.png, .jpg, .webp, ...), or .npy for raw samples (default samples.png)")
    p.add_argument("--out-dir", default=None, help="also write one PNG per sample into this directory")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default about sqrt(batch size))")
    p.add_argument("--scale", type=int, default=None,
                   help="integer upscaling of small images (default: up to at least 64 pixels)")
    p.set_defaults(func=run)


def _class_labels(labels: list[int] | None, batch_size: int) -> Any:
    if labels is None:
        return None
    if len(labels) == 1:
        return labels * batch_size
    if len(labels) != batch_size:
        raise ValueError(f"--class-labels takes one label or one per sample ({batch_size}), got {len(labels)}")
    return labels


def resolve_model(model: str | None) -> str:
    """``--model`` as given, or the bundled digits pipeline when it is None (a FileNotFoundError if it is missing)."""
    if model is not None:
        return model
    bundled = default_model_dir()
    if not (bundled / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the bundled digits model is not installed at {bundled}; pass a pipeline directory with --model DIR"
        )
    return str(bundled)


def run(args: argparse.Namespace) -> int:
    """Load the pipeline, sample, save the outputs and print timings."""
    import time

    import numpy as np
    import torch

    from ..hardware import resolve_dtype
    from ..pipeline import ConsistencyModelPipeline
    from ..postprocess import image_grid, is_image_shape
    from .options import check_out_path, check_upscaled_images, parse_device_flag

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.scale is not None and args.scale < 1:
        raise ValueError(f"--scale must be >= 1, got {args.scale}")
    device = parse_device_flag(args.device)
    out = check_out_path(args.out, extra=(".npy",)) if args.out else (None if args.out_dir else Path("samples.png"))

    t0 = time.perf_counter()
    dtype = resolve_dtype(args.dtype, device)
    pipe = ConsistencyModelPipeline.from_pretrained(resolve_model(args.model), dtype=dtype, device=device)
    load_s = time.perf_counter() - t0
    pipe.require_batch_fits(args.batch_size, pipe.sample_shape)  # before any per-sample list is built
    labels = _class_labels(args.class_labels, args.batch_size)
    grid = out is not None and out.suffix.lower() != ".npy"
    wants_images = args.out_dir is not None or grid
    if wants_images and not is_image_shape(pipe.sample_shape):
        raise ValueError(
            f"this model makes samples of shape {pipe.sample_shape}, not images; save them with --out FILE.npy"
        )
    if wants_images:
        channels, height, width = pipe.sample_shape
        scale = args.scale or max(1, 64 // max(width, height))
        check_upscaled_images(args.batch_size, width, height, channels, scale, grid=grid)

    generator = torch.Generator(device=device).manual_seed(args.seed)
    steps = None if args.timesteps else args.steps
    t1 = time.perf_counter()
    samples = pipe(
        batch_size=args.batch_size,
        class_labels=labels,
        num_inference_steps=steps,
        timesteps=args.timesteps,
        generator=generator,
        output_type="pil" if wants_images else "np",
        eta=args.eta,
    ).images
    sample_s = time.perf_counter() - t1

    if wants_images:
        w, h = samples[0].size
        if scale > 1:
            from PIL import Image

            samples = [im.resize((w * scale, h * scale), Image.NEAREST) for im in samples]
        if args.out_dir:
            out_dir = Path(args.out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(samples):
                im.save(out_dir / f"{i:05d}.png")
            print(f"wrote {len(samples)} images to {out_dir}")
        if grid:
            out.parent.mkdir(parents=True, exist_ok=True)
            image_grid(samples, cols=args.cols).save(out)
            print(f"wrote {out}")
    if out is not None and not grid:
        array = samples if isinstance(samples, np.ndarray) else np.stack([np.asarray(im) for im in samples])
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, array)
        print(f"wrote {out} {array.shape}")
    n_steps = len(args.timesteps) if args.timesteps else args.steps
    print(
        f"load {load_s:.2f} s; sampling {args.batch_size} x {n_steps} step(s) in {dtype_label(args.dtype, dtype)} on {args.device}: "
        f"{sample_s:.3f} s ({sample_s / args.batch_size * 1000:.1f} ms per sample)"
    )
    return 0
