"""``cmkit tune-timesteps``: find the best intermediate timestep for 2-step sampling and save it as the default."""

from __future__ import annotations

import argparse
from typing import Any

from .options import add_batch_size_argument, add_command, add_device_argument, add_model_argument, add_seed_argument

EPILOG = """examples:
  cmkit tune-timesteps --model runs/cd/pipeline              # FD-digits, ternary search, saved into the pipeline
  cmkit tune-timesteps --model runs/cd/pipeline --coarse 7   # a coarse grid of 7 indices first (noisy metrics)
  cmkit tune-timesteps --model runs/toy/pipeline --toy moons --no-save
  cmkit tune-timesteps --model runs/cd/pipeline --low 10 --high 30 --num-samples 1800

The search is over i in timesteps=[i, 0], an index into the scheduler's N-point Karras grid (index 0 is
sigma_max). Every candidate is sampled from the same --seed, so the objective is deterministic. The result is
written to model_index.json as "cmkit_default_timesteps": {"2": [i, 0]}, which the pipeline uses whenever it
is called with num_inference_steps=2 and no timesteps.
"""


def register(subparsers: Any) -> None:
    """Add the ``tune-timesteps`` subcommand."""
    p = add_command(
        subparsers, "tune-timesteps",
        help="search the 2-step intermediate timestep that minimises a metric and save it",
        description="Ternary search over the intermediate timestep of 2-step consistency sampling, minimising "
        "FD-digits (or SWD for a 2-D toy), then save it as the pipeline's default for 2 steps.",
        epilog=EPILOG,
    )
    add_model_argument(p)
    p.add_argument("--toy", default=None, metavar="NAME",
                   help="minimise SWD against this 2-D toy (8gaussians, moons, swissroll) instead of FD-digits")
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples per evaluation (default 720 = 2 draws of 360 for digits, 10000 for toys)")
    add_seed_argument(p, "seed shared by all evaluations")
    p.add_argument("--coarse", type=int, default=0, metavar="K",
                   help="evaluate K evenly spaced indices first, then search around the best (default 0: off)")
    p.add_argument("--low", type=int, default=1, help="smallest index searched (default 1)")
    p.add_argument("--high", type=int, default=None, help="largest index searched (default N-2)")
    add_batch_size_argument(p, 1000)
    add_device_argument(p)
    p.add_argument("--no-save", action="store_true", help="only print the result; leave model_index.json alone")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the search, print each evaluation and the winner, and save it unless --no-save."""
    import time

    from ..pipeline_io import read_parameterization
    from ..pipeline import ConsistencyModelPipeline
    from ..tuning import save_default_timesteps, tune_two_step_timestep
    from .options import parse_device_flag
    from .sample import resolve_model

    device = parse_device_flag(args.device)
    model_dir = resolve_model(args.model)
    parameterization = read_parameterization(model_dir)
    if parameterization == "edm":
        raise ValueError(f"{model_dir} is an EDM teacher (sampled with Heun); tune a consistency model instead")
    if parameterization in ("trigflow", "tcd"):
        raise ValueError(
            f"{model_dir} is a {'TrigFlow (sCM)' if parameterization == 'trigflow' else 'TCD'} model; tune-timesteps "
            "searches the Karras grid of CMStochasticIterativeScheduler only: pass its sampler's timesteps to "
            "cmkit sample / cmkit eval (--timesteps, and --eta for TCD) instead"
        )
    pipe = ConsistencyModelPipeline.from_pretrained(model_dir, device=device)
    pipe.set_progress_bar_config(disable=True)
    if args.toy is not None:
        from ..metrics.swd import toy_swd

        name = args.toy
        metric: Any = lambda samples, labels: toy_swd(samples, name)  # noqa: E731
        num_samples, metric_name = args.num_samples or 10_000, f"SWD ({name})"
    else:
        if len(pipe.sample_shape) != 3:
            raise ValueError(f"this model makes samples of shape {pipe.sample_shape}; name its data with --toy NAME")
        metric, num_samples, metric_name = "fd_digits", args.num_samples or 720, "FD-digits"

    n_train = int(pipe.scheduler.config.num_train_timesteps)
    print(f"model: {model_dir} (grid N = {n_train}); metric: {metric_name} of {num_samples} samples, seed {args.seed}")
    print(f"{'index':>5} {'tau (sigma)':>12} {metric_name:>14}")

    def report(index: int, tau: float, value: float) -> None:
        print(f"{index:>5} {tau:>12.4f} {value:>14.4f}", flush=True)

    t0 = time.perf_counter()
    result = tune_two_step_timestep(
        pipe, metric, num_samples=num_samples, seed=args.seed, coarse_points=args.coarse, low=args.low,
        high=args.high, batch_size=args.batch_size, on_evaluation=report,
    )
    seconds = time.perf_counter() - t0
    print(
        f"best: timesteps={result.timesteps} (tau = {result.tau:.4f}), {metric_name} {result.value:.4f}; "
        f"{len(result.evaluations)} evaluations in {seconds:.1f} s"
    )
    if args.no_save:
        return 0
    path = save_default_timesteps(model_dir, result.timesteps)
    print(f"saved as the default for num_inference_steps=2 in {path}")
    return 0
