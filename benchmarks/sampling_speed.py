"""Speed report: cmkit against diffusers on the ImageNet-64 consistency architecture (sampling and training).

All variants get the same random weights (the published cd_imagenet64 UNet config, ~296 M parameters) and the
same seeds. Each case is timed ``--reps`` times with the variants interleaved (A, B, C, A, B, C, ...) so load on
a shared machine hits all of them alike; the table gives the minimum and median seconds per pipeline call, the
speed-up over diffusers float32 (its median / the variant's median), the GFLOP/s achieved (network FLOPs per call
/ median seconds, FLOPs counted by ``torch.utils.flop_counter``) and that rate as a fraction of this machine's
matrix-product ceiling for the variant's dtype (the best of a few large square matmuls, measured in the same run).

Variants (all through the ordinary API, no special mode):

* ``diffusers-fp32``, ``diffusers-bf16``: diffusers 0.42's pipeline, its UNet cast with ``.to(torch.bfloat16)``;
* ``cmkit-fp32``, ``cmkit-bf16``: ``ConsistencyModelPipeline(...).to(dtype)``;
* ``cmkit-bf16-compiled``: the same with ``pipe.unet = torch.compile(pipe.unet)`` (one compile per batch size,
  done before timing and reported separately).

The training table times one forward + backward (mean-squared loss, no optimizer step) of cmkit's UNet and
diffusers' UNet2DModel on the same config: float32, bfloat16 autocast, and cmkit with activation checkpointing.

    python benchmarks/sampling_speed.py                # full report (roughly 15-40 min on 2 loaded cores)
    python benchmarks/sampling_speed.py --quick        # 1 step, batch 1, no compile, small training case
    python benchmarks/sampling_speed.py --threads 1    # on an oversubscribed machine: see docs/speed.md
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/sampling_speed.py            # as an AVX2-only CPU

The header names the CPU, the instruction sets ATen and oneDNN use (caps from the environment included), whether
bfloat16 is native, and the thread count. The summary compares cmkit with diffusers at the machine's fastest
dtype (``cmkit.hardware.fastest_dtype``: bfloat16 where native, else float32) against the 1.2x target. Where
bfloat16 is emulated, the bf16 variants are left out unless named with ``--variants`` (diffusers bf16 takes
minutes per image there).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from cmkit.hardware import cpu_info, fastest_dtype
from cmkit.models.presets import unet_preset_config

#: the published cd_imagenet64 UNet config (openai/diffusers-cd_imagenet64_*), from cmkit's presets.
IMAGENET64_UNET: dict[str, Any] = unet_preset_config("imagenet64")
SCHEDULER = dict(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)
TIMESTEPS = {1: [0], 2: [22, 0]}
BASELINE = "diffusers-fp32"
TARGET_SPEEDUP = 1.2  # cmkit over diffusers, both at the machine's fastest dtype
DTYPE_TAG = {torch.float32: "fp32", torch.bfloat16: "bf16"}

#: a sampling callable: (batch_size, num_steps, seed) -> output tensor.
SampleFn = Callable[[int, int, int], torch.Tensor]


@dataclass(frozen=True)
class Variant:
    """One implementation to time: ``build(state_dict)`` returns a sampling callable; ``dtype`` picks the ceiling."""

    name: str
    build: Callable[[dict[str, torch.Tensor]], SampleFn]
    dtype: torch.dtype


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


def _diffusers(dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], SampleFn]:
    def build(state: dict[str, torch.Tensor]) -> SampleFn:
        from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

        unet = UNet2DModel(**IMAGENET64_UNET)
        unet.load_state_dict(state)
        unet = unet.eval().to(dtype)
        return _runner(ConsistencyModelPipeline(unet, CMStochasticIterativeScheduler(**SCHEDULER)))

    return build


def _cmkit(dtype: torch.dtype, compiled: bool = False) -> Callable[[dict[str, torch.Tensor]], SampleFn]:
    def build(state: dict[str, torch.Tensor]) -> SampleFn:
        from cmkit import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

        unet = UNet2DModel(**IMAGENET64_UNET)
        unet.load_state_dict(state)
        pipe = ConsistencyModelPipeline(unet.eval(), CMStochasticIterativeScheduler(**SCHEDULER)).to(dtype)
        if compiled:
            pipe.unet = torch.compile(pipe.unet)
        return _runner(pipe)

    return build


VARIANTS: list[Variant] = [
    Variant("diffusers-fp32", _diffusers(torch.float32), torch.float32),
    Variant("diffusers-bf16", _diffusers(torch.bfloat16), torch.bfloat16),
    Variant("cmkit-fp32", _cmkit(torch.float32), torch.float32),
    Variant("cmkit-bf16", _cmkit(torch.bfloat16), torch.bfloat16),
    Variant("cmkit-bf16-compiled", _cmkit(torch.bfloat16, compiled=True), torch.bfloat16),
]


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ImageNet-64 UNet weights (diffusers' initialisation under ``seed``), shared by all variants."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**IMAGENET64_UNET).state_dict()


def matmul_ceiling(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 4096), reps: int = 5) -> float:
    """This machine's matrix-product rate in GFLOP/s for ``dtype``: the best size's median of ``reps`` matmuls."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        seconds = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - t0)
        best = max(best, 2 * n**3 / statistics.median(seconds) / 1e9)
    return best


def network_gflop(config: dict[str, Any], batch: int = 1) -> float:
    """GFLOP of one UNet forward on ``batch`` images (convolutions, matmuls, attention; 2 FLOP per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cmkit import UNet2DModel

    with torch.device("meta"):
        unet = UNet2DModel(**config)
    size = config["sample_size"]
    x = torch.zeros(batch, config.get("in_channels", 3), size, size, device="meta")
    labels = torch.zeros(batch, dtype=torch.long, device="meta") if config.get("num_class_embeds") else None
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(x, torch.zeros(batch, device="meta"), labels)
    return counter.get_total_flops() / 1e9


Times = dict[tuple[str, int, int], list[float]]
Ceilings = dict[tuple[torch.dtype, int, int], float]


def time_cases(
    fns: dict[str, SampleFn], cases: list[tuple[int, int]], reps: int, dtypes: list[torch.dtype]
) -> tuple[Times, dict[tuple[str, int], float], Ceilings]:
    """Seconds per call for every (variant, steps, batch), interleaved; first-call seconds; ceilings per case.

    The matmul ceiling is re-measured in every repetition (interleaved with the variants, so it sees the same
    machine load) and the best rate seen during a case is that case's ceiling.
    """
    times: Times = {}
    first: dict[tuple[str, int], float] = {}
    ceilings: Ceilings = {}
    for steps, batch in cases:
        for name, fn in fns.items():  # warm-up (and, for compiled variants, compilation for this shape)
            t0 = time.perf_counter()
            fn(batch, steps, 0)
            first.setdefault((name, batch), time.perf_counter() - t0)
        for rep in range(reps):
            for dtype in dtypes:
                rate = matmul_ceiling(dtype, sizes=(2048,), reps=3)
                ceilings[(dtype, steps, batch)] = max(ceilings.get((dtype, steps, batch), 0.0), rate)
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(batch, steps, rep)
                times.setdefault((name, steps, batch), []).append(time.perf_counter() - t0)
    return times, first, ceilings


def sampling_table(
    times: Times, dtypes: dict[str, torch.dtype], gflop_per_image: float, ceilings: Ceilings, errors: dict[str, float]
) -> str:
    """Markdown: variant, steps, batch, min/median s, speed-up vs diffusers fp32, GFLOP/s, fraction of ceiling."""
    lines = [
        f"| variant | steps | batch | min s | median s | speed-up vs {BASELINE} | vs diffusers, same dtype | GFLOP/s "
        f"| of dtype ceiling | max abs diff vs {BASELINE} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, steps, batch), ts in times.items():
        med = statistics.median(ts)
        base = times.get((BASELINE, steps, batch))
        speedup = f"{statistics.median(base) / med:.2f}" if base else "-"
        twin = times.get((f"diffusers-{DTYPE_TAG[dtypes[name]]}", steps, batch))
        same = f"{statistics.median(twin) / med:.2f}" if twin and name.startswith("cmkit") else "-"
        rate = gflop_per_image * batch * steps / med
        frac = rate / ceilings[(dtypes[name], steps, batch)]
        err = errors.get(name)
        err_text = f"{err:.1e}" if err is not None else "-"
        lines.append(
            f"| {name} | {steps} | {batch} | {min(ts):.3f} | {med:.3f} | {speedup} | {same} | {rate:.0f} | {frac:.0%} "
            f"| {err_text} |"
        )
    return "\n".join(lines)


def target_summary(times: Times, fastest: torch.dtype) -> str:
    """Lines: cmkit / diffusers at the fastest dtype per (steps, batch), against :data:`TARGET_SPEEDUP`."""
    tag = DTYPE_TAG[fastest]
    ours, theirs = f"cmkit-{tag}", f"diffusers-{tag}"
    lines = [f"target: {ours} >= {TARGET_SPEEDUP}x {theirs} ({tag} is this machine's fastest dtype)"]
    for (name, steps, batch), ts in times.items():
        base = times.get((theirs, steps, batch))
        if name != ours or not base:
            continue
        ratio = statistics.median(base) / statistics.median(ts)
        verdict = "met" if ratio >= TARGET_SPEEDUP else "MISSED"
        lines.append(f"  steps {steps} batch {batch}: {ratio:.2f}x ({verdict})")
    if len(lines) == 1:
        lines.append(f"  not measured: run both {ours} and {theirs}")
    return "\n".join(lines)


def onednn_isa() -> str:
    """The ISA oneDNN dispatches to in a process with this environment (its verbose start-up line)."""
    probe = "import torch; a = torch.ones(64, 64); torch.ones(1, 3, 8, 8).to_mkldnn(); a @ a"
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    found = re.search(r"cpu,isa:([^\n]+)", done.stdout + done.stderr)
    return found.group(1).strip() if found else "unknown (no oneDNN verbose output)"


def agreement(fns: dict[str, SampleFn]) -> dict[str, float]:
    """Largest |difference| of each variant's 2-step image (1 image, seed 0) from the baseline's."""
    outs = {name: fn(1, 2, 0).float() for name, fn in fns.items()}
    ref = outs.get(BASELINE, next(iter(outs.values())))
    return {name: float((o - ref).abs().max()) for name, o in outs.items()}


# ----- training step ---------------------------------------------------------------------------------------------
TrainFn = Callable[[], None]


def _train_step(unet: torch.nn.Module, batch: int, config: dict[str, Any], autocast: bool) -> TrainFn:
    size = config["sample_size"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, config.get("in_channels", 3), size, size, generator=gen)
    target = torch.randn(x.shape, generator=gen)
    t = torch.rand(batch, generator=gen) * 500
    labels = torch.randint(0, 1000, (batch,), generator=gen) if config.get("num_class_embeds") else None
    unet.train()

    def step() -> None:
        unet.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = unet(x, t, labels).sample
        torch.nn.functional.mse_loss(out.float(), target).backward()

    return step


def training_fns(config: dict[str, Any], batch: int) -> dict[str, TrainFn]:
    """Forward+backward callables: diffusers and cmkit in float32 and bf16 autocast, cmkit with checkpointing."""
    from diffusers import UNet2DModel as DiffusersUNet

    from cmkit import UNet2DModel

    torch.manual_seed(0)
    theirs = DiffusersUNet(**config)
    state = theirs.state_dict()

    def ours(checkpointing: bool = False) -> UNet2DModel:
        model = UNet2DModel(**config)
        model.load_state_dict(state)
        if checkpointing:
            model.enable_gradient_checkpointing()
        return model

    return {
        "diffusers-fp32": _train_step(theirs, batch, config, autocast=False),
        "cmkit-fp32": _train_step(ours(), batch, config, autocast=False),
        "diffusers-bf16-autocast": _train_step(theirs, batch, config, autocast=True),
        "cmkit-bf16-autocast": _train_step(ours(), batch, config, autocast=True),
        "cmkit-bf16-autocast-checkpointing": _train_step(ours(True), batch, config, autocast=True),
    }


def time_training(fns: dict[str, TrainFn], reps: int) -> dict[str, list[float]]:
    """Seconds per forward+backward for each callable, after one warm-up, repetitions interleaved."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times.setdefault(name, []).append(time.perf_counter() - t0)
    return times


def training_table(times: dict[str, list[float]], batch: int, preset: str) -> str:
    """Markdown: variant, min/median s per forward+backward, speed-up vs diffusers of the same precision."""
    lines = [
        f"| training step ({preset}, batch {batch}) | min s | median s | speed-up vs diffusers (same precision) |",
        "|---|---:|---:|---:|",
    ]
    for name, ts in times.items():
        ref = "diffusers-fp32" if "fp32" in name else "diffusers-bf16-autocast"
        speedup = statistics.median(times[ref]) / statistics.median(ts)
        lines.append(f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} | {speedup:.2f} |")
    return "\n".join(lines)


# ----- main ------------------------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> None:
    """Parse arguments, run the sampling and training cases and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 step, batch 1, 2 repetitions, no compile")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per case (default 3, quick 2)")
    parser.add_argument("--steps", type=int, nargs="+", choices=sorted(TIMESTEPS), default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 1 8, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--variants", nargs="+", default=None, help="subset of: " + ", ".join(v.name for v in VARIANTS))
    parser.add_argument("--train-preset", default=None, help="UNet preset for the training table (default imagenet64)")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--no-train", action="store_true", help="skip the training table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (2 if args.quick else 3)
    batches = args.batch or ([1] if args.quick else [1, 8])
    steps = args.steps or ([1] if args.quick else [1, 2])
    info = cpu_info()
    default_variants = [
        v.name for v in VARIANTS
        if not (args.quick and "compiled" in v.name) and (info.native_bf16 or v.dtype != torch.bfloat16)
    ]
    chosen = [v for v in VARIANTS if v.name in (args.variants or default_variants)]
    if not chosen:
        raise SystemExit(f"no variant matches {args.variants}; choose from {[v.name for v in VARIANTS]}")

    info = cpu_info()  # after set_num_threads
    print(f"CPU: {info.model_name}")
    print(f"ISA: ATen {info.aten_capability}; oneDNN {onednn_isa()}"
          + (f" (capped by ONEDNN_MAX_CPU_ISA={info.onednn_isa_cap})" if info.onednn_isa_cap else ""))
    print(f"{info.describe()}; fastest dtype: {fastest_dtype('cpu')}")
    print(f"torch {torch.__version__}, {info.threads} threads, {reps} repetitions, interleaved")
    if not info.native_bf16 and not args.variants:
        print("bf16 variants left out (bfloat16 is emulated here); name them with --variants to time them anyway")
    dtypes = sorted({v.dtype for v in chosen}, key=str)
    start = {dt: matmul_ceiling(dt) for dt in dtypes}
    gflop = network_gflop(IMAGENET64_UNET)
    rates = ", ".join(f"{str(dt).removeprefix('torch.')} {rate:.0f} GFLOP/s" for dt, rate in start.items())
    print(f"matmul ceiling at the start (best of 1024/2048/4096): {rates}; "
          f"ImageNet-64 UNet: {gflop:.1f} GFLOP per image per step\n")
    state = random_state_dict()
    fns = {v.name: v.build(state) for v in chosen}
    del state
    errors = agreement(fns)
    times, first, ceilings = time_cases(fns, [(s, b) for s in steps for b in batches], reps, dtypes)
    print(sampling_table(times, {v.name: v.dtype for v in chosen}, gflop, ceilings, errors))
    print()
    print(target_summary(times, fastest_dtype("cpu")))
    print("\nmatmul ceiling per case (2048x2048, best during the case), GFLOP/s:")
    for (dtype, s, b), rate in ceilings.items():
        print(f"  {str(dtype).removeprefix('torch.')} steps {s} batch {b}: {rate:.0f}")
    compiled = {k: v for k, v in first.items() if "compiled" in k[0]}
    for (name, batch), seconds in compiled.items():
        print(f"\n{name}: first call at batch {batch} (compilation included) took {seconds:.0f} s")
    del fns

    if not args.no_train:
        preset = args.train_preset or ("small" if args.quick else "imagenet64")
        config = unet_preset_config(preset)
        train_times = time_training(training_fns(config, args.train_batch), reps)
        print()
        print(training_table(train_times, args.train_batch, preset))


if __name__ == "__main__":
    main()
