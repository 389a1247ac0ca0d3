"""``cmkit train``: train an EDM teacher or a consistency model (CD, CT, iCT, ECT) from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples:
  # an EDM teacher on a 2-D toy set, then consistency distillation (CD) from it
  cmkit train --method edm --data toy:8gaussians --steps 4000 --lr 2e-3 --output runs/teacher
  cmkit train --method cd --teacher runs/teacher --data toy:8gaussians --steps 3000 --option num_scales=18 --output runs/cd

  # improved consistency training (iCT) from scratch on the embedded digits, in bfloat16
  cmkit train --method ict --data digits --model tiny --steps 20000 --batch-size 128 --precision bf16 --output runs/ict

  # easy consistency tuning (ECT) starting from the teacher, stage doubling every 500 steps
  cmkit train --method ect --teacher runs/teacher --data toy:8gaussians --steps 2000 --option steps_per_stage=500 --output runs/ect

  # your own images: class labels from sub-folders, 32x32 centre crops, random flips
  cmkit train --method ict --data folder:~/pictures --resolution 32 --flip --model small --output runs/pictures

  cmkit train --config runs/cd/train_config.json --output runs/cd_again   # a saved config reproduces its run
  cmkit train --output runs/cd --resume                                   # continue exactly from the last checkpoint
  torchrun --nproc_per_node 4 -m cmkit train --method ict --data digits --batch-size 256 --output runs/ict4

The output directory is a pipeline: ConsistencyModelPipeline.from_pretrained(DIR) and `cmkit sample --model DIR`
load it. It also holds train_config.json, training_info.json, checkpoints/, samples/, loss.png and metrics.jsonl.

SIGTERM (sent by SLURM or Kubernetes before preemption) or Ctrl-C stops training after the current step with a
checkpoint and exit status 0; --resume continues exactly. Exit status 3: the loss became NaN or infinite.
"""

#: CLI flag -> TrainConfig field, for flags that map one-to-one.
_FIELDS = {
    "method": "method", "model": "model", "teacher": "teacher", "steps": "steps", "batch_size": "batch_size",
    "lr": "lr", "optimizer": "optimizer", "warmup_steps": "warmup_steps", "lr_schedule": "lr_schedule",
    "min_lr_ratio": "min_lr_ratio", "precision": "precision", "ema_rates": "ema_rates", "export": "export",
    "export_ema_rate": "export_ema_rate", "output": "output_dir", "save_every": "save_every",
    "keep_checkpoints": "keep_checkpoints", "sample_every": "sample_every", "num_samples": "num_samples",
    "log_every": "log_every", "seed": "seed", "device": "device", "tau": "tau",
    "scheduler_timesteps": "scheduler_timesteps", "weight_decay": "weight_decay", "dist_timeout": "dist_timeout",
}
_DATA_FIELDS = ("resolution", "resize", "flip", "channels", "class_labels")


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train an EDM teacher or a consistency model (CD, CT, iCT, ECT)",
        description="Train on the embedded digits, a 2-D toy set or a folder of images, on one process or many "
        "(torchrun). Flags override --config, which overrides the defaults.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="a train_config.json to start from (e.g. from an earlier run)")
    p.add_argument("--method", choices=("edm", "cd", "ct", "ict", "ect"), help="what to train (default ict)")
    p.add_argument("--data", help="digits | toy:8gaussians | toy:moons | toy:swissroll | folder:PATH (default digits)")
    p.add_argument("--resolution", type=int, help="image size in pixels (digits: a multiple of 8; folders: required unless --resize none)")
    p.add_argument("--resize", choices=("crop", "stretch", "none"), help="folder images: centre crop, stretch, or keep (default crop)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--channels", type=int, choices=(1, 3), help="folder images: 1 (grayscale) or 3 (RGB, default)")
    p.add_argument("--class-labels", dest="class_labels", action=argparse.BooleanOptionalAction,
                   help="use class labels (digits classes, folder sub-folders); default: when the data have them")
    p.add_argument("--model", help="auto | mlp | a UNet preset: tiny, small, base, imagenet64, lsun256 (default auto)")
    p.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
                   help="network constructor override, repeatable (e.g. width=64, dropout=0.1)")
    p.add_argument("--teacher", help="output directory of an `--method edm` run (needed by cd and ect)")
    p.add_argument("--option", dest="objective_options", action="append", metavar="KEY=VALUE",
                   help="objective option, repeatable (e.g. num_scales=18, loss=pseudo_huber, target_ema=0.95)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, help="global batch size over all processes (default 64)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    p.add_argument("--optimizer", choices=("radam", "adam"), help="default radam")
    p.add_argument("--weight-decay", type=float, help="default 0")
    p.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up (default 0)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), help="default constant")
    p.add_argument("--min-lr-ratio", type=float, help="cosine: final lr as a fraction of --lr (default 0)")
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm (default 1.0; 0 turns clipping off)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="autocast precision (default fp32; bf16 is the fast CPU type)")
    p.add_argument("--ema-rates", type=float, nargs="+", help="EMA decay rates (default 0.999)")
    p.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_false", help="use the EMA rates from step 0")
    p.add_argument("--export", choices=("ema", "online"), help="which weights the pipeline gets (default ema)")
    p.add_argument("--export-ema-rate", type=float, help="which EMA to export (default the first rate)")
    p.add_argument("--output", help="output directory (default runs/cmkit)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (default 1000; 0: only at the end)")
    p.add_argument("--keep-checkpoints", type=int, help="how many checkpoints to keep (default 2; 0 keeps all)")
    p.add_argument("--sample-every", type=int, help="sample grid / scatter plot every N steps (default: only at the end)")
    p.add_argument("--num-samples", type=int, help="samples per grid (default 64)")
    p.add_argument("--log-every", type=int, help="metrics.jsonl interval (default 10)")
    p.add_argument("--seed", type=int, help="seed for initialisation, data order and noise (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="torchrun: how long a process waits for the others before a dead or frozen one ends the job "
                   "(default 300)")
    p.add_argument("--tau", type=float, help="save the 2-step intermediate sigma tau as the pipeline's default")
    p.add_argument("--scheduler-timesteps", type=int, help="N of the saved scheduler's grid (default: the run's N)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=run)


def _key_values(items: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # a bare string such as loss=pseudo_huber
    return out


def build_config(args: argparse.Namespace):
    """The TrainConfig from defaults, then ``--config`` (or the resumed run's config), then the flags given."""
    from ..training.config import DataConfig, TrainConfig

    given = vars(args)
    base: dict[str, Any] = {}
    if "config" in given:
        base = TrainConfig.from_json(given["config"]).to_dict()
    elif given.get("resume") and "output" in given and (Path(given["output"]) / "train_config.json").is_file():
        base = TrainConfig.from_json(Path(given["output"]) / "train_config.json").to_dict()
    for flag, field in _FIELDS.items():
        if flag in given:
            base[field] = given[flag]
    if "grad_clip" in given:
        base["grad_clip"] = given["grad_clip"] or None
    if "ema_warmup" in given:
        base["ema_warmup"] = given["ema_warmup"]
    if "progress" in given:
        base["progress"] = given["progress"]
    if "model_options" in given:
        base["model_options"] = {**base.get("model_options", {}), **_key_values(given["model_options"], "--model-option")}
    if "objective_options" in given:
        base["objective_options"] = {**base.get("objective_options", {}), **_key_values(given["objective_options"], "--option")}
    data = dict(base.get("data") or {})
    if "data" in given:
        data = dataclasses.asdict(DataConfig.parse(given["data"]))
    for name in _DATA_FIELDS:
        if name in given:
            data[name] = given[name]
    base["data"] = data
    return TrainConfig.from_dict(base)


def run(args: argparse.Namespace) -> int:
    """Train and report where the pipeline was written."""
    import time

    from ..training.distributed import CollectiveError
    from ..training.loop import INFO_FILE, NonFiniteLossError, train
    from ..training.preemption import TrainingStopped

    config = build_config(args)
    if getattr(args, "print_config", False):
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    start = time.perf_counter()
    is_main = os.environ.get("RANK", "0") == "0"
    try:
        out = train(config, resume=getattr(args, "resume", False))
    except NonFiniteLossError as err:
        print(f"cmkit train: {err}", file=sys.stderr)
        return 3
    except TrainingStopped as stop:
        if is_main:
            print(f"cmkit train: {stop}", file=sys.stderr)
        return 0
    except CollectiveError as err:  # printed by every process that saw it: each names its rank
        print(f"cmkit train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside the training steps (set-up, final export): nothing half-written
        if is_main:
            print(f"cmkit train: interrupted; the checkpoints in {config.output_dir} are intact (continue with --resume "
                  "if it holds one)", file=sys.stderr)
        return 130
    info_path = out / INFO_FILE
    if info_path.is_file() and is_main:
        info = json.loads(info_path.read_text())
        print(
            f"trained {config.method} for {config.steps} steps ({info['steps_this_session']} this session) in "
            f"{time.perf_counter() - start:.1f} s; pipeline ({info['exported_weights']} weights) in {out}"
        )
    return 0
