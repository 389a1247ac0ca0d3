"""``cmkit convert``: turn an original openai/consistency_models ``.pt`` checkpoint, or an EDM / EDM2 / ECT network
snapshot ``.pkl`` (read without running code from it), into a pipeline directory."""

from __future__ import annotations

import argparse

from .options import add_command

EPILOG = """\
examples:
  # consistency distillation, ImageNet-64 (class-conditional, 1000 classes; recognised as the imagenet64 preset)
  cmkit convert --checkpoint cd_imagenet64_l2.pt --out cd_imagenet64_l2 --scheduler cd
  # consistency training, LSUN bedroom 256 (unconditional; recognised as the lsun256 preset)
  cmkit convert --checkpoint ct_bedroom256.pt --out ct_bedroom256 --scheduler ct_lsun256
  # a training checkpoint {"model": ..., "ema": ...}: the EMA weights unless --state-dict-key model
  cmkit convert --checkpoint run.pt --out run_pipe --scheduler cd --state-dict-key model
  # your own architecture: its UNet2DModel config (a JSON file), or a preset and the keys that differ
  cmkit convert --checkpoint mine.pt --out mine --scheduler cd --unet-config mine_unet.json
  cmkit convert --checkpoint mine.pt --out mine --scheduler cd --preset imagenet64 --unet-config overrides.json
  # an EDM / EDM2 teacher or an ECT model (network-snapshot-*.pkl; the 'ema' entry unless --state-dict-key)
  cmkit convert --checkpoint edm-cifar10-32x32-uncond-vp.pkl --out edm_cifar10

The result loads with cmkit.ConsistencyModelPipeline.from_pretrained(OUT) and with diffusers'.
The published architectures (ImageNet-64, LSUN-256) are recognised by their weights' shapes; any other needs
--unet-config or --preset. Every key and shape is checked against the config; --num-classes and
--class-cond/--no-class-cond are checked against the weights.
A .pkl snapshot is read with an allowlist of globals: its recorded source code is never run, and the network is
rebuilt by cmkit from the recorded constructor arguments (EDMPrecond, EDM2 Precond: an EDM teacher for
`cmkit train --teacher`; ECT's ECMPrecond: a consistency model; VP/VE preconditioning is refused).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand."""
    p = add_command(
        subparsers, "convert",
        help="convert an OpenAI .pt checkpoint or an EDM / EDM2 / ECT .pkl snapshot into a pipeline directory",
        description="Convert an original openai/consistency_models .pt checkpoint (loaded with "
        "torch.load(weights_only=True)) or an EDM / EDM2 / ECT network snapshot .pkl (read safely) into a "
        "diffusers-layout ConsistencyModelPipeline directory.",
        epilog=EPILOG,
    )
    p.add_argument(
        "--checkpoint", required=True,
        help="the OpenAI .pt file: a state dict, bare or wrapped ({'model': ...}, {'ema': ...}, {'state_dict': ...}), "
        "keys optionally prefixed 'module.' (DDP); or an EDM / EDM2 / ECT network-snapshot .pkl",
    )  # fmt: skip
    p.add_argument(
        "--state-dict-key", default=None,
        help="which state dict to convert when the file holds several, e.g. model (default: the EMA weights; the "
        "choice and the other names are reported)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output pipeline directory (model_index.json, unet/, scheduler/)")
    p.add_argument(
        "--scheduler",
        default=None,
        choices=["cd", "ct_imagenet64", "ct_lsun256"],
        help="Karras grid of the published scheduler: cd (N=40), ct_imagenet64 (N=201), ct_lsun256 (N=151); required "
        "for a .pt, cd by default for a .pkl",
    )
    p.add_argument(
        "--unet-config", default=None,
        help="UNet2DModel config (JSON) of an architecture that is not a published one; with --preset, the keys "
        "that differ from it",
    )  # fmt: skip
    p.add_argument("--preset", default=None, help="a cmkit UNet preset to start from, e.g. imagenet64 or lsun256")
    p.add_argument("--num-classes", type=int, default=None, help="expected number of classes (checked)")
    p.add_argument(
        "--class-cond",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="assert that the checkpoint is (or, with --no-class-cond, is not) class-conditional",
    )
    p.add_argument(
        "--attention-head-dim",
        type=int,
        default=None,
        help="channels per attention head (OpenAI's --num_head_channels; default: the config's, else 64 as in every "
        "published model)",
    )
    p.add_argument("--num-heads", type=int, default=None, help="heads per attention layer, instead of a head width")
    p.add_argument(
        "--sample-size", type=int, default=None, help="image size (overrides the recognised or given config's)"
    )
    p.add_argument(
        "--qkv-layout",
        choices=["qkv_major", "head_major"],
        default="qkv_major",
        help="row order of the fused qkv weights: qkv_major (consistency models) or head_major "
        "(guided-diffusion's legacy attention)",
    )
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="dtype of the saved weights"
    )
    p.set_defaults(func=run)


#: options that describe an OpenAI UNet, which a .pkl snapshot records itself.
_OPENAI_ONLY = ("unet_config", "preset", "num_classes", "class_cond", "attention_head_dim", "num_heads", "sample_size")


def _run_snapshot(args: argparse.Namespace) -> int:
    import torch

    from ..convert.edm import convert_edm_snapshot
    from ..convert.openai import SCHEDULER_TIMESTEPS

    given = [f"--{name.replace('_', '-')}" for name in _OPENAI_ONLY if getattr(args, name) is not None]
    if given or args.qkv_layout != "qkv_major":
        raise ValueError(
            f"{', '.join(given) or '--qkv-layout'} describe an OpenAI checkpoint; a .pkl snapshot records its network "
            "itself: drop them"
        )
    scheduler = args.scheduler or "cd"
    out = convert_edm_snapshot(
        args.checkpoint, args.out, key=args.state_dict_key or "ema",
        num_train_timesteps=SCHEDULER_TIMESTEPS[scheduler], dtype=getattr(torch, args.dtype),
    )  # fmt: skip
    print(f"wrote {out} (scheduler {scheduler}); load it with ConsistencyModelPipeline.from_pretrained('{out}')")
    return 0


def run(args: argparse.Namespace) -> int:
    """Convert and report where the pipeline was written."""
    if str(args.checkpoint).endswith(".pkl"):
        return _run_snapshot(args)
    import torch

    from ..convert.openai import convert_openai_checkpoint

    if args.scheduler is None:
        raise ValueError("--scheduler is required for an OpenAI checkpoint: cd, ct_imagenet64 or ct_lsun256")

    out = convert_openai_checkpoint(
        args.checkpoint,
        args.out,
        scheduler=args.scheduler,
        state_dict_key=args.state_dict_key,
        unet_config=args.unet_config,
        preset=args.preset,
        num_classes=args.num_classes,
        class_cond=args.class_cond,
        attention_head_dim=args.attention_head_dim,
        num_heads=args.num_heads,
        sample_size=args.sample_size,
        qkv_layout=args.qkv_layout,
        dtype=getattr(torch, args.dtype),
    )
    print(f"wrote {out} (scheduler {args.scheduler}); load it with ConsistencyModelPipeline.from_pretrained('{out}')")
    return 0
