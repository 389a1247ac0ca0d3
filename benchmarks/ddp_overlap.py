"""Data-parallel step time: DistributedDataParallel (gradient all-reduce overlapped with backward) against one flat
all_reduce after backward, on CPU processes (gloo).

Both variants run the real ``Trainer.step`` of the EDM objective on a UNet preset with random images. ``ddp`` is
what ``cmkit train`` does under torchrun (:class:`cmkit.training.distributed.GradientSync` wraps the network after
the first step); ``flat`` hides the objective's ``set_online``, so its gradient pass bypasses the wrapper and the
gradients are averaged by one ``all_reduce`` over a flat buffer after backward (the loop before DDP). The variants
alternate in rounds (ddp, flat, ddp, flat, ...) so load on a shared machine hits both alike; each round times
``--steps`` steps after ``--warmup`` untimed ones (the first step of a session is always flat). The table gives
the median and minimum seconds per step over all timed steps, as rank 0 measured them after a barrier.

    python benchmarks/ddp_overlap.py                  # UNet small, 32x32 RGB, global batch 16, 2 processes
    python benchmarks/ddp_overlap.py --quick          # tiny sizes: checks that it runs (no meaningful timing)
    python benchmarks/ddp_overlap.py --preset base --resolution 64 --batch-size 32 --processes 4 --threads 2

Run it on a quiet machine: each process gets ``--threads`` intra-op threads (default: the cores over the
processes). The script starts torchrun itself; ``--worker`` is the part torchrun runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="UNet preset (default: small)")
    p.add_argument("--resolution", type=int, default=32, help="image size in pixels (default: 32)")
    p.add_argument("--batch-size", type=int, default=16, help="global batch over all processes (default: 16)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default: 1)")
    p.add_argument("--processes", type=int, default=2, help="torchrun processes (default: 2)")
    p.add_argument("--threads", type=int, default=None, help="threads per process (default: cores / processes)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round and variant (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the first round (default: 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: UNet tiny at 8x8, batch 4, 1 round of 1 step")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.resolution, args.batch_size, args.steps, args.warmup, args.rounds = "tiny", 8, 4, 1, 1, 1
    return args


class Unrouted:
    """``objective`` without ``set_online``: its gradient pass bypasses DDP and the loop averages after backward."""

    def __init__(self, objective: Any) -> None:
        self.inner, self.model = objective, objective.model

    def __call__(self, *args: Any) -> Any:
        return self.inner(*args)

    def after_optimizer_step(self, step: int) -> None:
        self.inner.after_optimizer_step(step)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def worker(args: argparse.Namespace) -> None:
    import torch

    from cmkit.data import SamplerSource
    from cmkit.models.denoiser import Denoiser
    from cmkit.models.presets import unet_preset
    from cmkit.training.config import TrainConfig
    from cmkit.training.distributed import setup_distributed
    from cmkit.training.loop import Trainer
    from cmkit.training.objectives.edm import EDMObjective

    ctx = setup_distributed("cpu")
    shape = (3, args.resolution, args.resolution)
    data = SamplerSource(lambda n, g: torch.randn(n, *shape, generator=g) * 0.5, sample_shape=shape, kind="images")
    config = TrainConfig(method="edm", model=args.preset, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         lr=1e-4, ema_rates=(), export="online", progress=False, device="cpu",
                         output_dir="unused-no-files-written")

    def trainer(route: bool) -> Trainer:
        torch.manual_seed(0)
        net = unet_preset(args.preset, sample_size=args.resolution, in_channels=3, out_channels=3)
        objective = EDMObjective(Denoiser(net, "edm"))
        return Trainer(config, objective if route else Unrouted(objective), data, ctx)

    trainers = {"ddp": trainer(True), "flat": trainer(False)}
    step = {name: 0 for name in trainers}

    def run(name: str, n: int, times: list[float] | None) -> None:
        for _ in range(n):
            ctx.barrier()
            t0 = time.perf_counter()
            trainers[name].step(step[name])
            if times is not None:
                times.append(time.perf_counter() - t0)
            step[name] += 1

    for name in trainers:
        run(name, args.warmup, None)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name in trainers:
            run(name, args.steps, times[name])
    modes = {name: t.sync.last_mode for name, t in trainers.items()}
    params = sum(p.numel() for p in trainers["ddp"].params)
    for t in trainers.values():
        t.sync.close()
    ctx.close()
    if ctx.rank != 0:
        return
    print(f"UNet {args.preset} ({params / 1e6:.1f} M parameters), {args.resolution}x{args.resolution} RGB, "
          f"global batch {args.batch_size}, grad_accum {args.grad_accum}, {ctx.world_size} processes x {torch.get_num_threads()} "
          f"threads, gloo; {args.rounds} rounds x {args.steps} timed steps per variant\n")
    print("| variant | gradient averaging | median s/step | min s/step | median vs flat |")
    print("|---|---|---|---|---|")
    flat = statistics.median(times["flat"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {modes[name]} | {med:.4f} | {min(ts):.4f} | {flat / med:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.processes)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    forwarded = list(argv if argv is not None else sys.argv[1:])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.processes),
           str(Path(__file__).resolve()), "--worker", *forwarded]
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
