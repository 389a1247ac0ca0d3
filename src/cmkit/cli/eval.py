"""``cmkit eval``: FD-digits (with floor and class accuracy) or toy SWD of a pipeline, as a small table; with
``--fid``, FID as the papers measure it (:mod:`cmkit.cli.eval_fid`)."""

from __future__ import annotations

import argparse
from typing import Any

from .options import add_batch_size_argument, add_command, add_device_argument, add_model_argument, add_seed_argument

EPILOG = """examples:
  cmkit eval                                      # the bundled digits model at 1 and 2 steps
  cmkit eval --model runs/cd/pipeline --steps 1 2 4
  cmkit eval --model runs/cd/pipeline --timesteps 17 0 --draws 5
  cmkit eval --model runs/edm/pipeline            # an EDM teacher: Heun with 18 steps (35 NFE)
  cmkit eval --model runs/toy/pipeline --toy moons --json toy.json
  cmkit eval --model runs/cifar/pipeline --fid --fid-ref cifar10-32x32.npz --device cuda --json fid.json
                                                  # FID; weights: --inception-weights or CMKIT_INCEPTION_WEIGHTS

Digits: FD-digits between draws of 360 samples (36 per class) and the 360 held-out images, mean +- std over
--draws; the floor is class-balanced draws of 360 training images against the same held-out set; accuracy
is how often the classifier sees the requested class. Toys: SWD of --num-samples points against a fixed
reference set of as many, with its floor (fresh data against that reference).

FID (--fid): per run --num-samples (default 50,000) samples, one seed each (--seed, --seed + 1, ...), quantised to
uint8 like their PNGs, 2048-d Inception features against the --fid-ref statistics; --fid-runs (default 3) runs on
disjoint seed ranges, and the minimum is the number papers report (see docs/metrics.md).
"""


def register(subparsers: Any) -> None:
    """Add the ``eval`` subcommand."""
    p = add_command(
        subparsers, "eval",
        help="measure FD-digits / SWD of a pipeline against its floor, or FID (--fid)",
        description="Evaluate a consistency-model pipeline (or an EDM teacher) on digits (FD-digits, floor, "
        "class accuracy), on a 2-D toy (SWD and floor), or on images by FID as the papers measure it (--fid), and "
        "print a table.",
        epilog=EPILOG,
    )
    add_model_argument(p)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2], metavar="S",
                   help="consistency step counts to evaluate (default 1 2; 2 uses the tuned default timesteps)")
    p.add_argument("--timesteps", type=int, nargs="+", default=None, metavar="T",
                   help="also evaluate this explicit descending schedule, e.g. 17 0")
    p.add_argument("--eta", type=float, default=None, metavar="GAMMA",
                   help="TCD's gamma in [0, 1] for a TCDScheduler pipeline (default 0.3)")
    p.add_argument("--heun-steps", type=int, default=18,
                   help="for an EDM teacher: Heun steps (NFE = 2 * steps - 1; default 18 = 35 NFE)")
    p.add_argument("--toy", default=None, metavar="NAME",
                   help="evaluate a 2-D toy model by SWD against this data: 8gaussians, moons or swissroll")
    p.add_argument("--draws", type=int, default=5, help="independent draws to average (default 5)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples per draw (default 360 for digits, 10000 for toys; with --fid per run, default 50000)")
    add_seed_argument(p, "random seed of the samples")
    add_batch_size_argument(p, 1000)
    add_device_argument(p)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    add_fid_arguments(p)
    p.set_defaults(func=run)


def add_fid_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--fid`` flags: reference, runs, labels, feature network and its weights, saved images."""
    g = p.add_argument_group("FID as the papers measure it")
    g.add_argument("--fid", action="store_true",
                   help="measure FID by the EDM protocol (50k samples per run, min of 3 runs) instead of FD-digits/SWD")
    g.add_argument("--fid-ref", default=None, metavar="SOURCE",
                   help="reference: statistics (.npz with mu and sigma, e.g. EDM's fid-refs/cifar10-32x32.npz, or a "
                   "torch-fidelity .pt), or a dataset (a folder of images, or an .npz of uint8 images)")
    g.add_argument("--fid-ref-out", default=None, metavar="PATH.npz",
                   help="save the statistics computed from a --fid-ref dataset here, for reuse")
    g.add_argument("--fid-runs", type=int, default=3, help="runs on disjoint seed ranges; the minimum is reported (default 3)")
    g.add_argument("--fid-labels", choices=("random", "balanced"), default="random",
                   help="class labels: drawn per seed, as EDM does (random, default), or seed mod classes (balanced)")
    g.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="local weights-inception-2015-12-05-6726825d.pth (or set CMKIT_INCEPTION_WEIGHTS)")
    g.add_argument("--fid-extractor", default="inception-v3", metavar="NAME",
                   help="feature network registered in cmkit.metrics.fid (default inception-v3; others are not FID)")
    g.add_argument("--feature-batch-size", type=int, default=64, help="images per feature-network call (default 64)")
    g.add_argument("--save-images", default=None, metavar="DIR",
                   help="also save every sample as a PNG, DIR/<sampler>/<seed // 1000 * 1000>/<seed>.png")


def run(args: argparse.Namespace) -> int:
    """Sample each configuration, measure it, print the table (and write JSON)."""
    import json
    import statistics
    import time
    from pathlib import Path

    from ..io.atomic import atomic_write_text
    from ..metrics.fd_digits import balanced_class_labels, evaluate_digits
    from ..metrics.generate import generate_heun_samples, generate_samples, require_samples_fit, sampler_configs
    from ..pipeline_io import read_parameterization
    from ..metrics.swd import toy_swd, toy_swd_floor
    from ..pipeline import ConsistencyModelPipeline
    from .options import parse_device_flag
    from .sample import resolve_model

    if any(s < 1 for s in args.steps):
        raise ValueError(f"--steps must be positive, got {args.steps}")
    if args.fid:
        from .eval_fid import run_fid

        return run_fid(args)
    if args.draws < 1:
        raise ValueError(f"--draws must be >= 1, got {args.draws}")
    model_dir = resolve_model(args.model)
    device = parse_device_flag(args.device)
    pipe = ConsistencyModelPipeline.from_pretrained(model_dir, device=device)
    pipe.set_progress_bar_config(disable=True)
    is_teacher = read_parameterization(model_dir) == "edm"
    toy = args.toy
    if toy is None and len(pipe.sample_shape) != 3:
        raise ValueError(f"this model makes samples of shape {pipe.sample_shape}; name its data with --toy NAME")
    if toy is None and pipe.sample_shape[0] != 1:
        raise ValueError(
            f"FD-digits measures 1-channel digit images, this model makes {pipe.sample_shape}; for other image sets "
            "use FID (cmkit.metrics.fid)"
        )
    per_draw = args.num_samples or (10_000 if toy else 360)
    total = per_draw * args.draws
    require_samples_fit(pipe, total, args.batch_size)
    labels = None
    if toy is None and pipe.num_classes is not None:
        if pipe.num_classes != 10:
            raise ValueError(f"FD-digits needs a 10-class digits model, this one has {pipe.num_classes} classes")
        labels = balanced_class_labels(per_draw).repeat(args.draws)

    configs = sampler_configs(pipe, args.steps, args.timesteps, args.heun_steps if is_teacher else None)

    rows: list[dict[str, Any]] = []
    floor_text = ""
    for name, nfe, options in configs:
        t0 = time.perf_counter()
        if is_teacher:
            samples = generate_heun_samples(pipe, total, args.seed, class_labels=labels, batch_size=args.batch_size,
                                            **options)
        else:
            samples = generate_samples(pipe, total, args.seed, class_labels=labels, batch_size=args.batch_size,
                                       eta=args.eta, **options)
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"sampler": name, "nfe": nfe, "seconds": seconds, "num_samples": total}
        if toy is None:
            result = evaluate_digits(samples, labels, draws=args.draws)
            row.update(metric="fd_digits", mean=result.fd_mean, std=result.fd_std, draws=list(result.fd_draws),
                       floor_mean=result.floor_mean, floor_std=result.floor_std, ratio=result.ratio,
                       accuracy=result.accuracy)
            floor_text = (
                f"floor (train vs held-out, 5 draws of {per_draw}): {result.floor_mean:.2f} ± {result.floor_std:.2f}"
            )
        else:
            values = [toy_swd(chunk, toy) for chunk in samples.split(per_draw)]
            mean, std = statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
            floor_mean, floor_std = toy_swd_floor(toy, per_draw)
            row.update(metric=f"swd_{toy}", mean=mean, std=std, draws=values, floor_mean=floor_mean,
                       floor_std=floor_std, ratio=mean / floor_mean, accuracy=None)
            floor_text = f"floor (fresh {toy} data vs reference, n={per_draw}): {floor_mean:.4f} ± {floor_std:.4f}"
        rows.append(row)

    metric_name = "FD-digits" if toy is None else "SWD"
    digits = 2 if toy is None else 4
    print(f"model: {model_dir}")
    print(floor_text)
    value_title = metric_name + " (mean ± std)"
    header = f"{'sampler':<28} {'NFE':>4} {value_title:>22} {'x floor':>8} {'accuracy':>9} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        value = f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}"
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        print(f"{r['sampler']:<28} {r['nfe']:>4} {value:>22} {r['ratio']:>8.2f} {acc:>9} {r['seconds']:>8.2f}")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps({"model": str(model_dir), "results": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
