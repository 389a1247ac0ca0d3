"""``cmkit eval --fid``: FID of a pipeline by the papers' protocol (:mod:`cmkit.metrics.fid_protocol`), as a table
with every run and their minimum, optionally as JSON.

Everything that can fail fast does so before any sampling: the flags, the feature network (its weights file
and the ``fid`` extra) and the reference statistics.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any


def _check_flags(args: argparse.Namespace) -> None:
    if args.toy is not None:
        raise ValueError("--fid measures images; drop --toy (2-D toys are measured by SWD)")
    if args.fid_ref is None:
        raise ValueError(
            "--fid needs --fid-ref: reference statistics (.npz with mu and sigma, e.g. EDM's fid-refs/cifar10-32x32.npz "
            "from https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/) or the training images (a folder or an .npz)"
        )
    if not Path(args.fid_ref).expanduser().exists():
        raise FileNotFoundError(
            f"--fid-ref {args.fid_ref} not found; pass reference statistics (.npz with mu and sigma) or the training "
            "images (a folder or an .npz)"
        )
    if args.fid_runs < 1:
        raise ValueError(f"--fid-runs must be >= 1, got {args.fid_runs}")
    if args.feature_batch_size < 1:
        raise ValueError(f"--feature-batch-size must be >= 1, got {args.feature_batch_size}")
    if args.seed < 0:
        raise ValueError(f"--seed (the first seed of the first run) must be >= 0, got {args.seed}")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_fid(args: argparse.Namespace) -> int:
    """Load the feature network and the reference, then measure each sampler's FID runs; print, write JSON."""
    import json
    import warnings

    from ..io.atomic import atomic_write_text
    from ..metrics.fid import INCEPTION, load_feature_extractor
    from ..metrics.fid_protocol import PAPER_NUM_SAMPLES, paper_fid, seed_ranges, small_sample_note
    from ..metrics.fid_stats import check_compatible, is_stats_file, reference_stats
    from ..metrics.generate import sampler_configs
    from ..pipeline import ConsistencyModelPipeline
    from ..pipeline_io import read_parameterization
    from .options import parse_device_flag
    from .sample import resolve_model

    _check_flags(args)
    num_samples = PAPER_NUM_SAMPLES if args.num_samples is None else args.num_samples
    ranges = seed_ranges(num_samples, args.fid_runs, args.seed)
    if args.fid_ref_out is not None and is_stats_file(args.fid_ref):
        raise ValueError(
            f"--fid-ref {args.fid_ref} is a statistics file already; --fid-ref-out saves statistics computed from a "
            "dataset (drop it, or pass the dataset)"
        )
    device = parse_device_flag(args.device)
    name = args.fid_extractor
    try:
        extractor = load_feature_extractor(name, args.inception_weights, device)
    except ImportError as err:
        print(f"cmkit eval: error: {err}", file=sys.stderr)
        return 1
    reference = reference_stats(args.fid_ref, extractor, name, device=device, batch_size=args.feature_batch_size,
                                save_to=args.fid_ref_out)
    check_compatible(reference, name)

    model_dir = resolve_model(args.model)
    pipe = ConsistencyModelPipeline.from_pretrained(model_dir, device=device)
    pipe.set_progress_bar_config(disable=True)
    if len(pipe.sample_shape) != 3:
        raise ValueError(f"FID measures images; this model makes samples of shape {pipe.sample_shape}")
    is_teacher = read_parameterization(model_dir) == "edm"
    configs = sampler_configs(pipe, args.steps, args.timesteps, args.heun_steps if is_teacher else None)

    metric = "FID" if name == INCEPTION else f"FD ({name}, not FID)"
    print(f"model: {model_dir}")
    print(f"reference: {args.fid_ref} ({reference.num_images or 'unknown number of'} images"
          + (f"; saved to {args.fid_ref_out})" if args.fid_ref_out else ")"))
    print(f"{metric}: {num_samples:,} samples per run, seeds " + ", ".join(f"{r[0]}-{r[-1]}" for r in ranges)
          + f"; labels {args.fid_labels}; minimum of {len(ranges)}")
    note = small_sample_note(num_samples)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for sampler_name, nfe, options in configs:
        save = None if args.save_images is None else Path(args.save_images) / _slug(sampler_name)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="FID from", category=UserWarning)  # printed once above
            result = paper_fid(
                pipe, reference, extractor, name, num_samples=num_samples, runs=args.fid_runs, first_seed=args.seed,
                save_images=save, sampler=options, labels=args.fid_labels, batch_size=args.batch_size,
                feature_batch_size=args.feature_batch_size, device=device,
            )
        rows.append({"sampler": sampler_name, "nfe": nfe, **result.as_dict()})

    header = f"{'sampler':<28} {'NFE':>4} " + " ".join(f"{f'run {k + 1}':>9}" for k in range(len(ranges)))
    header += f" {'min':>9} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        runs = " ".join(f"{run['fid']:>9.3f}" for run in r["runs"])
        seconds = sum(run["seconds"] for run in r["runs"])
        print(f"{r['sampler']:<28} {r['nfe']:>4} {runs} {r['fid_min']:>9.3f} {seconds:>8.1f}")
    if args.json:
        summary = {
            "model": str(model_dir), "metric": "fid" if name == INCEPTION else f"fd_{name}",
            "reference": {"source": str(args.fid_ref), "num_images": reference.num_images,
                          "extractor": reference.extractor, "saved_to": args.fid_ref_out},
            "protocol": {"num_samples": num_samples, "runs": len(ranges), "first_seed": args.seed,
                         "labels": args.fid_labels, "quantization": "uint8, floor(127.5 x + 128)"},
            "results": rows,
        }
        atomic_write_text(Path(args.json), json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
