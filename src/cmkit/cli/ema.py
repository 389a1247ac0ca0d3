"""``cmkit ema reconstruct``: EDM2's post-hoc EMA, the power EMA of any ``sigma_rel`` from a run's snapshots."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .options import add_command

EPILOG = """examples:
  # train with EDM2's two stored power EMAs, snapshotted every 100 steps (exports the EMA of std 0.05)
  cmkit train --method ict --data digits --steps 20000 --ema-std 0.05 0.10 --ema-snapshot-every 100 --output runs/ict
  # the power EMA of std 0.08 as of the last snapshot, as a pipeline
  cmkit ema reconstruct --std 0.08 runs/ict --output runs/ict_std0.08
  cmkit sample --model runs/ict_std0.08
  # several stds at once (one pipeline each in DIR/std-<X>/), as of step 10000
  cmkit ema reconstruct --std 0.04 --std 0.08 --std 0.15 runs/ict --output runs/ict_stds --step 10000

A std between (or near) the stored ones reconstructs well; far outside them, or from few snapshots, the combined
profile misses part of the target and a warning gives by how much. The run must have finished (its exported
pipeline supplies the network's architecture and scheduler). Snapshots are read as safetensors only.
"""


def register(subparsers: Any) -> None:
    """Add the ``ema`` subcommand and its ``reconstruct`` action."""
    p = add_command(
        subparsers, "ema",
        help="post-hoc EMA: reconstruct the power-function EMA of any std from a run's snapshots",
        description="Post-hoc EMA (Karras et al. 2024, EDM2): a run trained with --ema-std and --ema-snapshot-every "
        "stores snapshots of its power-function EMAs; `reconstruct` combines them into the EMA of another relative "
        "standard deviation.",
        epilog=EPILOG,
    )
    actions = p.add_subparsers(dest="ema_command", metavar="ACTION", required=True)
    r = actions.add_parser(
        "reconstruct", help="write the power EMA of --std X as a pipeline directory",
        description="Reconstruct the power-function EMA of relative standard deviation X at a snapshot step (least "
        "squares over the snapshots' EMA profiles, EDM2 Algorithm 3) and write it as a pipeline directory.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("run", metavar="RUN", help="output directory of a `cmkit train --ema-std ... --ema-snapshot-every N` run")
    r.add_argument("--std", action="append", type=float, required=True, metavar="X",
                   help="sigma_rel to reconstruct, in (0, 0.2887); repeat for several (EDM2 stores 0.05 and 0.10)")
    r.add_argument("--output", required=True, metavar="DIR",
                   help="the pipeline directory to write (with several --std: one pipeline per std in DIR/std-<X>/)")
    r.add_argument("--step", type=int, default=None, metavar="K",
                   help="reconstruct the EMA as of step K, a step with snapshots (default: the last snapshot's)")
    r.set_defaults(func=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    """Reconstruct each ``--std`` and write it as a pipeline beside a record of how it was combined."""
    import json
    import warnings
    from pathlib import Path

    from ..io.atomic import atomic_write_text
    from ..models.denoiser import Denoiser
    from ..pipeline import ConsistencyModelPipeline
    from ..training.checkpoint import CHECKPOINTS
    from ..training.ema_snapshots import SNAPSHOT_DIR, list_snapshots, load_weights, reconstruct_averages
    from ..training.power_ema import check_sigma_rel

    run_dir, out = Path(args.run), Path(args.output)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"the run directory {run_dir} does not exist; pass the --output of a `cmkit train` run")
    stds = list(dict.fromkeys(check_sigma_rel("--std", s) for s in args.std))
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise ValueError(
            f"{run_dir / SNAPSHOT_DIR} holds no power-EMA snapshots; train with --ema-std 0.05 0.10 and "
            "--ema-snapshot-every N (e.g. a hundredth of --steps) to write them"
        )
    if not (run_dir / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{run_dir} has no exported pipeline (model_index.json) yet, which gives the network's architecture and "
            f"scheduler; it is written when the run finishes: finish it (cmkit train --output {run_dir} --resume), "
            "then reconstruct"
        )
    if out.resolve() == run_dir.resolve() or (out / CHECKPOINTS).exists():
        raise ValueError(f"--output {out} holds a training run, whose exported pipeline it would overwrite; choose "
                         "another directory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = reconstruct_averages(snapshots, stds, args.step)
    for warning in caught:
        print(f"cmkit ema reconstruct: warning: {warning.message}", file=sys.stderr)
    pipe = ConsistencyModelPipeline.from_pretrained(run_dir)
    holder = Denoiser(pipe.unet, pipe.parameterization)  # the layout the snapshots were taken of
    for result in results:
        plan = result.plan
        target = out if len(results) == 1 else out / f"std-{plan.sigma_rel:.10g}"
        load_weights(holder, result.weights)
        pipe.save_pretrained(target)
        step = int(plan.t)
        record = {
            "run": str(run_dir.resolve()), "sigma_rel": plan.sigma_rel, "gamma": plan.gamma, "step": step,
            "samples_seen": next(s.samples_seen for s in result.snapshots if s.step == step),
            "relative_residual": plan.relative_residual,
            "snapshots": [{"file": s.path.name, "step": s.step, "std": s.std, "coefficient": float(c)}
                          for s, c in zip(result.snapshots, plan.coefficients)],
        }
        atomic_write_text(target / "ema_reconstruction.json", json.dumps(record, indent=1) + "\n")
        print(f"sigma_rel {plan.sigma_rel} (gamma {plan.gamma:.3f}) at step {step} from {len(result.snapshots)} "
              f"snapshots, profile residual {plan.relative_residual:.2%}: {target}")
    return 0
