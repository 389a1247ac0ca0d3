"""GPU check: cmkit on a CUDA machine, reported as one markdown table (``make gpu-check``).

Each row is ``check | setting | result | pass``. The checks, in the order they run:

1. **parity**: cmkit's ConsistencyModelPipeline against diffusers 0.42's (a test-only oracle) with the same random
   weights, latents, labels and seeds; a tiny UNet and the ImageNet-64 architecture (``imagenet64`` preset), fp32 /
   fp16 / bf16, batch 1 and 64. fp32 compares 2-step images (TF32 off); fp16 / bf16 compare 1-step images, and
   pass when cmkit's mean error against its own fp32 image is at most 1.25x diffusers' (cmkit keeps the sampler
   state in fp32, diffusers does not, so the two half-precision images differ by more than either's error).
2. **train**: 20 steps of every method (edm, cd, ct, ict, ect) on a small UNet, bf16 autocast and fp16 autocast
   with a GradScaler, through :class:`cmkit.training.loop.Trainer`: the final loss is finite; the median step time.
3. **torchrun**: ``torchrun --standalone --nproc_per_node 1 -m cmkit train ...`` succeeds (a one-process run
   builds no process group), and an NCCL ``all_reduce`` under the same launcher is correct.
4. **compile**: ``pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)`` (as
   tests/test_pipeline_parity.py does on the CPU): images against eager, compile time and speed.
5. **speed**: sampling (1 step) on the ImageNet-64 architecture, fp16, batch 1 / 8 / 64, eager and compiled
   (``dynamic=True``: batches 8 and 64 share one graph, batch 1 gets its own since PyTorch specialises sizes 0
   and 1), cmkit against diffusers in ms/img; it passes when cmkit is at least 0.9x diffusers' speed.

Timings on CUDA use CUDA events around synchronised calls. The whole check is sized for about 6 minutes on one
H200; ``--budget-s`` (default 330) skips the compile-heavy rows, marked ``skip``, when too little time is left.

Without CUDA, ``--device cuda`` (the default) prints ``skipped: no CUDA device`` and exits with code 2, so
``make gpu-check`` fails visibly on a machine that cannot run it. ``--device cpu --quick`` runs every check with
tiny sizes on the CPU to smoke-test this script (tests/test_gpu_check.py); its speed rows only check that the
timing ran, since tiny models say nothing about speed, and it compiles with the ``eager`` backend (full-graph
capture without inductor's C++ compiles, which take minutes per graph on a small CPU; ``--compile-backend``).
Exit codes: 0 every row passed (or was skipped), 1 a row failed, 2 no CUDA.

    python benchmarks/gpu_check.py                      # on a CUDA machine (make gpu-check)
    python benchmarks/gpu_check.py --device cpu --quick # smoke test of the script itself
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
SCHEDULER = dict(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)
#: largest |cmkit - diffusers| of fp32 images in [0, 1] (a quarter of an 8-bit level).
FP32_TOL = 1e-3
#: a half-precision image's mean abs error against its fp32 image may be 1.25x diffusers' own, plus this slack.
HALF_SLACK = 1e-4
#: cmkit sampling must reach this fraction of diffusers' speed.
MIN_SPEED_RATIO = 0.9
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Sizes:
    """Model sizes, batches and repetitions of a run (full on a GPU, or ``--quick``)."""

    parity_batches: tuple[int, ...]
    tiny_size: int
    big_name: str
    big_overrides: dict[str, Any]
    train_preset: str
    train_overrides: dict[str, Any]
    train_size: int
    train_batch: int
    train_steps: int
    torchrun_steps: int
    compile_batch: int
    speed_batches: tuple[int, ...]
    reps: int
    quick: bool


FULL = Sizes((1, 64), 32, "imagenet64", {}, "small", {}, 32, 32, 20, 20, 8, (1, 8, 64), 5, quick=False)
QUICK = Sizes(
    (1, 4), 8, "imagenet64 layout, mini",
    dict(sample_size=16, block_out_channels=[16, 32, 48, 64], layers_per_block=1, attention_head_dim=8,
         norm_num_groups=8, attn_norm_num_groups=8),
    "tiny", dict(block_out_channels=[8, 16], norm_num_groups=4, attn_norm_num_groups=4, attention_head_dim=4),
    8, 4, 2, 3, 2, (1, 2), 1, quick=True,
)
#: seconds to set aside for compiling a new graph of the ImageNet-64 UNet in both libraries.
COMPILE_PAIR_S = 150.0


@dataclass
class Row:
    check: str
    setting: str
    result: str
    status: str  # "pass", "fail" or "skip"


@dataclass
class Report:
    """The table, built row by row; a check that raises becomes a failed row instead of ending the run."""

    device: torch.device
    budget_s: float
    #: torch.compile backend: "inductor" (with mode="reduce-overhead") or e.g. "eager" (graph capture only).
    backend: str = "inductor"
    rows: list[Row] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {message}", file=sys.stderr, flush=True)

    def add(self, check: str, setting: str, result: str, ok: bool) -> None:
        self.rows.append(Row(check, setting, result, "pass" if ok else "fail"))
        self.log(f"{check} | {setting} | {result} | {self.rows[-1].status}")

    def over_budget(self, check: str, setting: str, need_s: float) -> bool:
        """Whether less than ``need_s`` of the time budget is left; if so the check gets a ``skip`` row."""
        left = self.budget_s - self.elapsed()
        if left >= need_s:
            return False
        result = f"skipped: {left:.0f} s of the time budget left, needs ~{need_s:.0f} s"
        self.rows.append(Row(check, setting, result, "skip"))
        self.log(f"{check} | {setting} | skipped (time budget)")
        return True

    @contextlib.contextmanager
    def guard(self, check: str, setting: str) -> Iterator[None]:
        """Run a block as one check: an error raised inside becomes a failed row and the run goes on."""
        self.log(f"{check} | {setting} ...")
        try:
            yield
        except Exception as err:  # noqa: BLE001 - reported in the table, the run goes on
            traceback.print_exc(file=sys.stderr)
            message = f"{type(err).__name__}: {err}".splitlines()[0][:160].replace("|", "/")
            self.add(check, setting, message, False)

    def markdown(self) -> str:
        lines = ["| check | setting | result | pass |", "|---|---|---|---|"]
        lines += [f"| {r.check} | {r.setting} | {r.result} | {r.status} |" for r in self.rows]
        counts = {s: sum(r.status == s for r in self.rows) for s in ("pass", "fail", "skip")}
        lines.append(f"\n{len(self.rows)} rows: {counts['pass']} pass, {counts['fail']} fail, {counts['skip']} skip; "
                     f"{self.elapsed():.0f} s")
        return "\n".join(lines)


# ----- helpers -----------------------------------------------------------------------------------------------------
def seconds_of(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()``; on CUDA measured by events between synchronisations."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000.0


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """fp32 means fp32: TF32 matmuls and convolutions off inside the block (parity checks)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def unet_config(name: str, sizes: Sizes) -> dict[str, Any]:
    from cmkit.models.presets import unet_preset_config

    if name == "tiny":
        return unet_preset_config("tiny", num_class_embeds=1000, sample_size=sizes.tiny_size)
    return unet_preset_config("imagenet64", **sizes.big_overrides)


def unet_pair(config: dict[str, Any], device: torch.device, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(diffusers UNet2DModel, cmkit UNet2DModel) with the same random weights, fp32, on ``device``."""
    from diffusers import UNet2DModel as DiffusersUNet

    from cmkit import UNet2DModel

    torch.manual_seed(seed)
    with torch.device(device):
        theirs = DiffusersUNet(**config).eval()
        ours = UNet2DModel(**config).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def pipelines(theirs: torch.nn.Module, ours: torch.nn.Module, dtype: torch.dtype) -> tuple[Any, Any]:
    """(diffusers pipeline, cmkit pipeline) over copies of the UNets in ``dtype``."""
    from diffusers import CMStochasticIterativeScheduler as DiffusersScheduler
    from diffusers import ConsistencyModelPipeline as DiffusersPipeline

    from cmkit import CMStochasticIterativeScheduler, ConsistencyModelPipeline

    d = DiffusersPipeline(copy.deepcopy(theirs).to(dtype), DiffusersScheduler(**SCHEDULER))
    c = ConsistencyModelPipeline(copy.deepcopy(ours), CMStochasticIterativeScheduler(**SCHEDULER))
    c.to(dtype, silence_dtype_warnings=True)
    d.set_progress_bar_config(disable=True)
    c.set_progress_bar_config(disable=True)
    return d, c


def sampler(pipe: Any, batch: int, timesteps: list[int], config: dict[str, Any]) -> Callable[[], torch.Tensor]:
    """A call of ``pipe`` with fixed float32 latents, labels and generator seed: ``[B, C, H, W]`` images in [0, 1]."""
    g = torch.Generator().manual_seed(batch)
    size, channels = config["sample_size"], config.get("in_channels", 3)
    latents = torch.randn(batch, channels, size, size, generator=g)
    labels = torch.randint(0, 1000, (batch,), generator=g).tolist()

    def call() -> torch.Tensor:
        return pipe(
            batch_size=batch, class_labels=labels, num_inference_steps=None, timesteps=timesteps, latents=latents,
            generator=torch.Generator().manual_seed(0), output_type="pt",
        ).images.float()

    return call


def compiled(module: torch.nn.Module, backend: str, dynamic: Optional[bool] = None) -> torch.nn.Module:
    """``torch.compile(module, mode="reduce-overhead", fullgraph=True)`` with inductor; other backends get no mode."""
    if backend == "inductor":
        return torch.compile(module, mode="reduce-overhead", fullgraph=True, dynamic=dynamic)
    return torch.compile(module, backend=backend, fullgraph=True, dynamic=dynamic)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def mean_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().mean())


# ----- 1. parity with diffusers --------------------------------------------------------------------------------------
def check_parity(report: Report, sizes: Sizes) -> None:
    device = report.device
    for name in ("tiny", sizes.big_name):
        config = unet_config(name, sizes)
        label = "tiny UNet" if name == "tiny" else name
        with report.guard("parity vs diffusers", f"{label}: build"), no_tf32():
            theirs, ours = unet_pair(config, device)
            refs: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
            for dname, dtype in DTYPES.items():
                d, c = pipelines(theirs, ours, dtype)
                for batch in sizes.parity_batches:
                    setting = f"{label}, {dname}, batch {batch}"
                    with report.guard("parity vs diffusers", setting):
                        if dtype == torch.float32:
                            diff = max_diff(sampler(c, batch, [22, 0], config)(), sampler(d, batch, [22, 0], config)())
                            report.add("parity vs diffusers", setting + ", 2 steps", f"max abs diff {diff:.1e}",
                                       diff <= FP32_TOL)
                            refs[(name, batch)] = (sampler(c, batch, [0], config)(), sampler(d, batch, [0], config)())
                            continue
                        ours_img, theirs_img = sampler(c, batch, [0], config)(), sampler(d, batch, [0], config)()
                        ref_ours, ref_theirs = refs[(name, batch)]
                        err_ours, err_theirs = mean_diff(ours_img, ref_ours), mean_diff(theirs_img, ref_theirs)
                        report.add(
                            "parity vs diffusers", setting + ", 1 step",
                            f"max abs diff {max_diff(ours_img, theirs_img):.1e}; mean abs error vs own fp32: cmkit "
                            f"{err_ours:.1e}, diffusers {err_theirs:.1e}",
                            math.isfinite(err_ours) and err_ours <= 1.25 * err_theirs + HALF_SLACK,
                        )
                del d, c
                release(device)
            del theirs, ours
            release(device)


# ----- 2. training -------------------------------------------------------------------------------------------------
def check_training(report: Report, sizes: Sizes) -> None:
    from cmkit.data import TensorSource
    from cmkit.models.denoiser import Denoiser
    from cmkit.models.presets import unet_preset
    from cmkit.training.config import TrainConfig
    from cmkit.training.distributed import DistContext
    from cmkit.training.loop import Trainer
    from cmkit.training.objectives import METHODS, build_objective, method_spec

    size, batch = sizes.train_size, sizes.train_batch
    g = torch.Generator().manual_seed(0)
    data = TensorSource(torch.rand(4 * batch, 3, size, size, generator=g) * 2 - 1, labels=torch.arange(4 * batch) % 10)

    def net(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return unet_preset(sizes.train_preset, sample_size=size, num_class_embeds=10, **sizes.train_overrides)

    for precision in ("bf16", "fp16"):
        for method in METHODS:
            setting = f"{method}, {precision} autocast{' + GradScaler' if precision == 'fp16' else ''}, " \
                      f"{sizes.train_preset} UNet {size}x{size}, batch {batch}"
            with report.guard(f"train {sizes.train_steps} steps", setting), tempfile.TemporaryDirectory() as out:
                spec = method_spec(method)
                teacher = Denoiser(net(1), "edm") if spec.needs_teacher else None
                model = Denoiser(net(0), spec.parameterization)
                options = {"total_steps": sizes.train_steps} if method in ("ct", "ict") else {}
                cfg = TrainConfig(
                    method=method, steps=sizes.train_steps, batch_size=batch, lr=1e-4, precision=precision,
                    output_dir=out, progress=False, teacher=out if teacher is not None else None,
                )
                trainer = Trainer(cfg, build_objective(method, model, teacher, **options), data,
                                  DistContext(device=report.device))
                losses, times = [], []
                for k in range(sizes.train_steps):
                    times.append(seconds_of(lambda: losses.append(trainer.step(k)[0]), report.device))
                step_ms = 1000 * statistics.median(times[1:] or times)
                report.add(f"train {sizes.train_steps} steps", setting,
                           f"final loss {losses[-1]:.4g}, {step_ms:.1f} ms/step", all(map(math.isfinite, losses)))
            release(report.device)


# ----- 3. torchrun -------------------------------------------------------------------------------------------------
def _launch(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def check_torchrun(report: Report, sizes: Sizes) -> None:
    device = report.device.type
    setting = (f"torchrun --standalone --nproc_per_node 1 -m cmkit train --method edm --data toy:8gaussians "
               f"--device {device}")
    with report.guard("torchrun", setting), tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        done = _launch(["-m", "cmkit", "train", "--method", "edm", "--data", "toy:8gaussians", "--device", device,
                        "--steps", str(sizes.torchrun_steps), "--batch-size", "64", "--save-every", "0",
                        "--num-samples", "16", "--no-progress", "--output", str(out)], timeout=240)
        info_path = out / "training_info.json"
        if done.returncode != 0 or not info_path.is_file():
            raise RuntimeError(f"exit {done.returncode}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        info = json.loads(info_path.read_text())
        report.add("torchrun", setting, f"exit 0, world size {info['world_size']}, {info['steps']} steps, final loss "
                   f"{info['final_loss']:.4g}, pipeline exported", (out / "model_index.json").is_file())
    backend = "nccl" if device == "cuda" else "gloo"
    setting = f"torchrun --standalone --nproc_per_node 1 gpu_check.py --collective-probe ({backend})"
    with report.guard("torchrun", setting):
        done = _launch([str(Path(__file__).resolve()), "--collective-probe", "--device", device], timeout=120)
        line = next((x for x in done.stdout.splitlines() if x.startswith("probe")), "no probe output")
        report.add("torchrun", setting, line if done.returncode == 0 else f"exit {done.returncode}: {line}",
                   done.returncode == 0 and line.endswith("ok"))


def collective_probe(device_name: str) -> int:
    """Under torchrun: one all_reduce over NCCL (CUDA) or gloo (CPU); prints ``probe ... ok`` when it is right."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if device_name == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = dist.get_world_size()
    value = torch.full((1024,), float(dist.get_rank() + 1), device=device)
    dist.all_reduce(value)
    ok = bool((value == world * (world + 1) / 2).all())
    print(f"probe backend={dist.get_backend()} world_size={world} sum={float(value[0]):g} {'ok' if ok else 'WRONG'}",
          flush=True)
    dist.destroy_process_group()
    return 0 if ok else 1


# ----- 4. torch.compile --------------------------------------------------------------------------------------------
def compile_label(backend: str, dynamic: bool = False) -> str:
    mode = "mode=reduce-overhead" if backend == "inductor" else f"backend={backend}"
    return f"{mode}, fullgraph{', dynamic' if dynamic else ''}"


def check_compile(report: Report, sizes: Sizes) -> None:
    config, batch = unet_config("tiny", sizes), sizes.compile_batch
    setting = f"tiny UNet, fp32, batch {batch}, 2 steps, {compile_label(report.backend)}"
    if report.over_budget("torch.compile", setting, need_s=60):
        return
    with report.guard("torch.compile", setting), no_tf32():
        _, c = pipelines(*unet_pair(config, report.device), torch.float32)
        call = sampler(c, batch, [22, 0], config)
        eager = call()
        eager_s = statistics.median(seconds_of(call, report.device) for _ in range(max(2, sizes.reps)))
        c.unet = compiled(c.unet, report.backend)
        compile_s = seconds_of(call, report.device)
        call()  # reduce-overhead records its CUDA graph on a later call
        diff = max_diff(call(), eager)
        compiled_s = statistics.median(seconds_of(call, report.device) for _ in range(max(2, sizes.reps)))
        report.add("torch.compile", setting,
                   f"max abs diff vs eager {diff:.1e}; first call {compile_s:.1f} s; eager {1000 * eager_s:.1f} ms, "
                   f"compiled {1000 * compiled_s:.1f} ms per call ({eager_s / compiled_s:.2f}x)", diff <= 1e-4)
    release(report.device)


# ----- 5. sampling speed against diffusers ---------------------------------------------------------------------------
def time_pair(
    report: Report, calls: dict[str, Callable[[], Any]], reps: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(first-call seconds, median seconds over ``reps`` interleaved calls) of each callable."""
    first = {name: seconds_of(call, report.device) for name, call in calls.items()}
    for call in calls.values():
        call()  # reduce-overhead records its CUDA graph on a call after the first
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            times[name].append(seconds_of(call, report.device))
    return first, {name: statistics.median(t) for name, t in times.items()}


def check_speed(report: Report, sizes: Sizes) -> None:
    config = unet_config(sizes.big_name, sizes)
    for compile_it in (False, True):
        mode = compile_label(report.backend, dynamic=True) if compile_it else "eager"
        # compiled: batches >= 2 share one dynamic-shape graph (compiled first), batch 1 gets its own (sizes 0 and 1
        # are always specialised); each new graph is compiled only when the time budget allows
        batches = sorted(sizes.speed_batches, key=lambda b: (b == 1, -b)) if compile_it else sizes.speed_batches
        with report.guard("speed vs diffusers", f"{sizes.big_name}, fp16, {mode}: build"):
            d, c = pipelines(*unet_pair(config, report.device), torch.float16)
            if compile_it:
                d.unet, c.unet = compiled(d.unet, report.backend, True), compiled(c.unet, report.backend, True)
            graphs: set[bool] = set()
            for batch in batches:
                setting = f"{sizes.big_name}, fp16, batch {batch}, 1 step, {mode}"
                if compile_it and (batch == 1) not in graphs and report.over_budget(
                    "speed vs diffusers", setting, COMPILE_PAIR_S if report.backend == "inductor" else 0
                ):
                    continue
                graphs.add(batch == 1)
                with report.guard("speed vs diffusers", setting):
                    calls = {"cmkit": sampler(c, batch, [0], config), "diffusers": sampler(d, batch, [0], config)}
                    first, median_s = time_pair(report, calls, sizes.reps)
                    ms = {name: 1000 * t / batch for name, t in median_s.items()}
                    ratio = ms["diffusers"] / ms["cmkit"]
                    timed = all(math.isfinite(v) and v > 0 for v in ms.values())
                    result = (f"cmkit {ms['cmkit']:.2f} ms/img, diffusers {ms['diffusers']:.2f} ms/img, speed ratio "
                              f"{ratio:.2f}x (first call: cmkit {first['cmkit']:.1f} s, diffusers "
                              f"{first['diffusers']:.1f} s)")
                    fast_enough = sizes.quick or ratio >= MIN_SPEED_RATIO
                    report.add("speed vs diffusers", setting, result, timed and fast_enough)
            del d, c
            release(report.device)


# ----- main --------------------------------------------------------------------------------------------------------
CHECKS = {"parity": check_parity, "train": check_training, "torchrun": check_torchrun, "compile": check_compile,
          "speed": check_speed}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of this script)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="skip compile-heavy rows past this (default 330)")
    parser.add_argument("--checks", nargs="+", choices=tuple(CHECKS), default=list(CHECKS), help="default: all")
    parser.add_argument("--compile-backend", choices=("auto", "inductor", "eager"), default="auto",
                        help="auto (default): inductor, except eager with --quick on the CPU, where inductor's C++ "
                             "compiles take minutes; eager still captures the full graph")
    parser.add_argument("--output", help="also write the table to this markdown file")
    parser.add_argument("--collective-probe", action="store_true", help=argparse.SUPPRESS)  # run by the torchrun row
    args = parser.parse_args(argv)
    if args.collective_probe:
        return collective_probe(args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check skipped: no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda}). "
              "Run it on a CUDA machine; `--device cpu --quick` smoke-tests the script itself.", flush=True)
        return 2
    try:
        import diffusers
    except ImportError:
        print("gpu-check needs diffusers as its oracle: pip install 'diffusers==0.42.1'", flush=True)
        return 1
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    backend = args.compile_backend
    if backend == "auto":
        backend = "eager" if args.quick and device.type == "cpu" else "inductor"
    report = Report(device, args.budget_s, backend)
    report.log(f"cmkit gpu-check on {name}: torch {torch.__version__}, CUDA {torch.version.cuda}, "
               f"diffusers {diffusers.__version__}, compile backend {backend}{', quick' if args.quick else ''}")
    sizes = QUICK if args.quick else FULL
    for check in args.checks:
        CHECKS[check](report, sizes)
    table = (f"## cmkit gpu-check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, diffusers "
             f"{diffusers.__version__}{' (--quick)' if args.quick else ''}\n\n{report.markdown()}")
    print(table, flush=True)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 1 if any(r.status == "fail" for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
