"""Sampling speed: cmkit's ConsistencyModelPipeline against diffusers' on the ImageNet-64 architecture.

Both pipelines get the same random weights (the published cd_imagenet64 UNet config, ~296 M parameters) and the
same seed. Each case is timed ``--reps`` times, with the variants interleaved (A, B, A, B, ...) so that load on a
shared machine hits all of them alike; the table reports the minimum and the median seconds per call and the
speed-up of each variant over the baseline (baseline median / variant median; > 1 means faster).

The script is a small table runner: a *variant* is a name plus a function that builds a sampling callable, so
new variants (bfloat16, torch.compile, ...) are one entry in ``VARIANTS``.

    python benchmarks/sampling_speed.py            # steps 1,2 x batch 1,8, 3 repetitions (a few minutes)
    python benchmarks/sampling_speed.py --quick    # batch 1 only, 2 repetitions
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from cmkit.models.presets import unet_preset_config

#: the published cd_imagenet64 UNet config (openai/diffusers-cd_imagenet64_*), from cmkit's presets.
IMAGENET64_UNET: dict[str, Any] = unet_preset_config("imagenet64")
SCHEDULER = dict(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)
TIMESTEPS = {1: [0], 2: [22, 0]}

#: a sampling callable: (batch_size, num_steps, seed) -> output tensor.
SampleFn = Callable[[int, int, int], torch.Tensor]


@dataclass(frozen=True)
class Variant:
    """One implementation to time: ``build(state_dict)`` returns a sampling callable."""

    name: str
    build: Callable[[dict[str, torch.Tensor]], SampleFn]


def _runner(pipe: Any) -> SampleFn:
    pipe.set_progress_bar_config(disable=True)

    def sample(batch: int, steps: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return pipe(
            batch_size=batch,
            num_inference_steps=None,
            timesteps=TIMESTEPS[steps],
            class_labels=[145] * batch,
            generator=gen,
            output_type="pt",
        ).images

    return sample


def build_diffusers(state: dict[str, torch.Tensor]) -> SampleFn:
    """diffusers 0.42's pipeline (the baseline)."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    unet = UNet2DModel(**IMAGENET64_UNET)
    unet.load_state_dict(state)
    return _runner(ConsistencyModelPipeline(unet.eval(), CMStochasticIterativeScheduler(**SCHEDULER)))


def build_cmkit(state: dict[str, torch.Tensor]) -> SampleFn:
    """cmkit's pipeline, float32."""
    from cmkit import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    unet = UNet2DModel(**IMAGENET64_UNET)
    unet.load_state_dict(state)
    return _runner(ConsistencyModelPipeline(unet.eval(), CMStochasticIterativeScheduler(**SCHEDULER)))


VARIANTS: list[Variant] = [Variant("diffusers", build_diffusers), Variant("cmkit", build_cmkit)]


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ImageNet-64 UNet weights (diffusers' initialisation under ``seed``), shared by all variants."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**IMAGENET64_UNET).state_dict()


def time_cases(
    fns: dict[str, SampleFn], cases: list[tuple[int, int]], reps: int, warmup: bool = True
) -> dict[tuple[str, int, int], list[float]]:
    """Seconds per call for every (variant, steps, batch), repetitions interleaved across variants."""
    times: dict[tuple[str, int, int], list[float]] = {}
    for steps, batch in cases:
        if warmup:
            for fn in fns.values():
                fn(batch, steps, 0)
        for rep in range(reps):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(batch, steps, rep)
                times.setdefault((name, steps, batch), []).append(time.perf_counter() - t0)
    return times


def markdown_table(times: dict[tuple[str, int, int], list[float]], baseline: str) -> str:
    """One markdown table: variant, steps, batch, min and median seconds, speed-up over ``baseline``."""
    lines = [
        f"| variant | steps | batch | min s | median s | speed-up vs {baseline} (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (name, steps, batch), ts in times.items():
        med = statistics.median(ts)
        base = statistics.median(times[(baseline, steps, batch)])
        lines.append(f"| {name} | {steps} | {batch} | {min(ts):.3f} | {med:.3f} | {base / med:.2f} |")
    return "\n".join(lines)


def check_agreement(fns: dict[str, SampleFn]) -> float:
    """Largest difference between the variants' images for one seed (sanity check that they compute the same)."""
    outs = [fn(1, 2, 0).float() for fn in fns.values()]
    return max(float((o - outs[0]).abs().max()) for o in outs)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the cases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only and 2 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per case (default 3, quick 2)")
    parser.add_argument("--steps", type=int, nargs="+", choices=sorted(TIMESTEPS), default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 1 8, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--variants", nargs="+", default=None, help="subset of: " + ", ".join(v.name for v in VARIANTS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (2 if args.quick else 3)
    batches = args.batch or ([1] if args.quick else [1, 8])
    chosen = [v for v in VARIANTS if args.variants is None or v.name in args.variants]
    if not chosen:
        raise SystemExit(f"no variant matches {args.variants}; choose from {[v.name for v in VARIANTS]}")
    baseline = chosen[0].name

    state = random_state_dict()
    fns = {v.name: v.build(state) for v in chosen}
    del state
    print(f"max |difference| between variants (1 image, 2 steps): {check_agreement(fns):.2e}")
    cases = [(s, b) for s in args.steps for b in batches]
    times = time_cases(fns, cases, reps, warmup=not args.quick)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {reps} repetitions, interleaved\n")
    print(markdown_table(times, baseline))


if __name__ == "__main__":
    main()
