"""Export the pipeline of one checkpoint of a training run, to measure a run part-way (recipes/digits/ict_curve.sh).

    python recipes/digits/export_checkpoint.py RUN_DIR STEP OUT_DIR

The weights are those the run exports (its ``--export`` choice, the 0.999 EMA in the digits recipes) as they
were at that checkpoint; the scheduler's grid is the run's own N at that step (its curriculum, with K = the run's
steps), so a mid-run checkpoint is the run at that point, not a shorter run with its own faster curriculum.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch

from cmkit.training import checkpoint as ckpt
from cmkit.training import report
from cmkit.training.report import CONFIG_FILE
from cmkit.training.build import build_data, build_model, build_objective, scheduler_num_timesteps
from cmkit.training.config import TrainConfig
from cmkit.training.ema import ema_key


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run's output directory (holds train_config.json, checkpoints/)")
    parser.add_argument("step", type=int, help="the checkpoint's step")
    parser.add_argument("out", type=Path, help="the pipeline directory to write")
    args = parser.parse_args(argv)
    config = TrainConfig.from_json(args.run / CONFIG_FILE)
    if config.teacher is not None:
        raise SystemExit(f"{args.run} distils a teacher; this script exports teacher-free runs (ct, ict, edm) only")
    saved = ckpt.load_checkpoint(ckpt.checkpoint_dir(args.run, args.step))
    data = build_data(config)
    torch.manual_seed(config.seed)
    model = build_model(config, data, None)
    objective = build_objective(config, model, None)
    model.load_state_dict(saved.model)
    rate = config.exported_ema_rate
    if rate is not None:
        state = model.state_dict()
        for name, value in saved.ema[ema_key(rate)].items():
            state[name].copy_(value)
    model.eval()
    at_step = config.replace(steps=args.step)  # the scheduler's N is N(step - 1) of the run's own curriculum
    num_timesteps = scheduler_num_timesteps(at_step, objective)
    info = {"exported_weights": "online" if rate is None else ema_key(rate), "steps": args.step,
            "run_steps": config.steps, "checkpoint": str(saved.path)}
    report.write_outputs(args.out, config, model, data, parameterization=model.parameterization,
                         num_train_timesteps=num_timesteps, info=info)
    print(f"exported {saved.path} (grid N = {num_timesteps}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
