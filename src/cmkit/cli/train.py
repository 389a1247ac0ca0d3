"""``cmkit train``: train an EDM teacher or a consistency model (CD, CT, iCT, ECT) from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..fields import default_of
from .options import add_command, add_dataclass_arguments, dataclass_help, key_values

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

def _methods_help() -> str:
    """Each method of the registry with its ``--option`` keys, defaults and help (from the options dataclasses)."""
    from ..training.objectives import METHOD_SPECS

    blocks = [f"  {name}: {spec.summary}{' (needs --teacher)' if spec.needs_teacher else ''}\n{dataclass_help(spec.options)}"
              for name, spec in METHOD_SPECS.items()]
    return "methods and their --option KEY=VALUE (total_steps defaults to --steps):\n" + "\n".join(blocks)


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand; its flags are generated from :class:`~cmkit.training.config.TrainConfig`."""
    add_command(
        subparsers, "train",
        help="train an EDM teacher or a consistency model (CD, CT, iCT, ECT)",
        description="Train on the embedded digits, a 2-D toy set or a folder of images, on one process or many "
        "(torchrun). Flags override --config, which overrides the defaults.",
        epilog=EPILOG,
        argument_default=argparse.SUPPRESS,
        populate=_add_arguments,
    )


def _add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``cmkit train`` (generated from the config dataclasses) and the methods' options in the epilog."""
    from ..training.config import DataConfig, TrainConfig

    p.epilog = EPILOG + "\n" + _methods_help()
    p.add_argument("--config", help="a train_config.json to start from (e.g. from an earlier run)")
    add_dataclass_arguments(p, TrainConfig)
    add_dataclass_arguments(p, DataConfig)
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The TrainConfig from defaults, then ``--config`` (or the resumed run's config), then the flags given."""
    from ..training.config import DataConfig, TrainConfig

    given = vars(args)
    base: dict[str, Any] = {}
    output = given.get("output_dir")
    if "config" in given:
        base = TrainConfig.from_json(given["config"]).to_dict()
    elif given.get("resume") and output and (Path(output) / "train_config.json").is_file():
        base = TrainConfig.from_json(Path(output) / "train_config.json").to_dict()
    data = dict(base.get("data") or {})
    if "data" in given:
        parsed = dataclasses.asdict(DataConfig.parse(given["data"]))
        # images in another place (a recipe's data set on this machine): the config's image options (resolution,
        # flips, classes, workers) stay; a switch to or from the 2-D toys starts from the defaults, and the hf:
        # column / split options stay only while the data stay hf:
        if data and "toy" not in (data.get("kind"), parsed["kind"]):
            hf_only = () if parsed["kind"] == "hf" else ("image_column", "label_column", "split")
            parsed = {**data, **{key: parsed[key] for key in ("kind", "toy", "path", *hf_only)}}
        data = parsed
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in given or f.name == "data":
            continue
        if isinstance(default_of(f), dict):  # repeated KEY=VALUE flags add to the loaded dict
            base[f.name] = {**base.get(f.name, {}), **key_values(given[f.name], f.metadata["flag"])}
        else:
            base[f.name] = given[f.name]
    data.update({name: value for name, value in given.items() if name in data_fields})
    base["data"] = data
    return TrainConfig.from_dict(base)


def run(args: argparse.Namespace) -> int:
    """Train and report where the pipeline was written."""
    import time

    from ..training.distributed import CollectiveError
    from ..training.loop import NonFiniteLossError, train
    from ..training.report import INFO_FILE
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
