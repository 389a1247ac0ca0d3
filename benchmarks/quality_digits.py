"""Sample quality on the embedded 8x8 digits: FD-digits of every method's trained run, against its floor.

Rows: the EDM teacher (Heun, 18 steps = 35 NFE), and CD (the bundled model), iCT, ECT and CT at 1 and 2
steps, all with cmkit's MLP; then an EDM teacher, CD and ECT with a scaled-down DDPM++ UNet (``unet-*`` rows,
trained through the streaming ``prepared:`` data path). Each run is the output of the recipe scripts, which fix
every step count and option:

    bash recipes/digits/train.sh          # teacher + CD -> runs/digits/{teacher,cd}, copied into the package
    bash recipes/digits/baselines.sh      # iCT, ECT, CT -> runs/digits/{ict,ect,ct}
    bash recipes/digits/baselines.sh runs/digits sct scd   # sCT, sCD (sCM, TrigFlow) -> runs/digits/{sct,scd}
    bash recipes/digits/unet/train.sh     # UNet teacher, CD, ECT -> runs/digits/unet/{teacher,cd,ect}

This script only samples and measures (a few minutes on 2 cores); runs that are missing are listed as such.
FD-digits compares 5 draws of 360 class-balanced samples with the 360 held-out images (cmkit.metrics);
2 steps use each pipeline's tuned default timestep (``cmkit tune-timesteps``), else tau = 0.8 is reported.
TrigFlow (sCT / sCD) pipelines, which ``cmkit tune-timesteps`` does not search, take the intermediate TrigFlow time
with the lowest FD on seed ``seed + 1`` over ``TRIGFLOW_T_GRID`` (the paper's 1.1 among them); its tau column is
that time's EDM sigma ``sigma_d tan t``.

    python benchmarks/quality_digits.py                          # table (markdown) on stdout
    python benchmarks/quality_digits.py --json out/digits.json --plot out/quality_digits.png
    python benchmarks/quality_digits.py --grids docs/images      # also a sample grid per run (digits_NET_METHOD.png)

"x teacher" divides by the FD of the teacher with the same network (MLP rows by the MLP teacher's, UNet rows by
the UNet teacher's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkit.karras import karras_grid_sigmas, sigma_to_grid_index
from cmkit.metrics import balanced_class_labels, evaluate_digits
from cmkit.metrics.generate import generate_heun_samples, generate_samples
from cmkit.pipeline_io import read_parameterization
from cmkit.pipeline import ConsistencyModelPipeline
from cmkit.training.plots import save_image_grid
from cmkit.trigflow import T_MAX, t_to_sigma

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "src" / "cmkit" / "assets" / "digits_cm"


@dataclass(frozen=True)
class Run:
    """One row group: its ``--methods`` key, training method, directory under ``--runs`` and network family."""

    key: str
    method: str
    subdir: str
    network: str


#: the MLP rows first (CD is read from the bundled model when its run directory is absent), then the UNet rows.
RUNS = (
    Run("edm", "edm", "teacher", "mlp"), Run("cd", "cd", "cd", "mlp"), Run("ict", "ict", "ict", "mlp"),
    Run("ect", "ect", "ect", "mlp"), Run("ct", "ct", "ct", "mlp"),
    Run("sct", "sct", "sct", "mlp"), Run("scd", "scd", "scd", "mlp"),
    Run("unet-edm", "edm", "unet/teacher", "unet"), Run("unet-cd", "cd", "unet/cd", "unet"),
    Run("unet-ect", "ect", "unet/ect", "unet"),
)  # fmt: skip
RUN_BY_KEY = {run.key: run for run in RUNS}
#: targets of issues 4 and 12 as multiples of the teacher's FD (consistency rows) or of the floor (teacher row).
TARGETS = {
    ("edm", 35): ("floor", 2.0), ("cd", 1): ("teacher", 1.3), ("cd", 2): ("teacher", 1.0), ("scd", 2): ("teacher", 1.1),
}
FALLBACK_TAU = 0.8
#: 2-step intermediate TrigFlow times searched for sCT / sCD (sCM's default: 1.1)
TRIGFLOW_T_GRID = (0.5, 0.7, 0.9, 1.1, 1.3)
PER_DRAW, DRAWS = 360, 5
#: sample grids: this many samples of each class per NFE, each framed by one pixel of this grey ([-1, 1] scale).
GRID_PER_CLASS, GRID_FRAME, GRID_SCALE = 8, -0.5, 4


def _run_info(run_dir: Path) -> dict[str, Any]:
    """Steps and seconds of a run from its training_info.json and the recipe's cpu_seconds.json (if any)."""
    info_path = run_dir / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    cpu_path = run_dir / "cpu_seconds.json"
    cpu = json.loads(cpu_path.read_text()).get("cpu_seconds") if cpu_path.is_file() else None
    return {"steps": info.get("steps"), "seconds": info.get("seconds_this_session"), "cpu_seconds": cpu}


def _resolve(run: Run, runs: Path) -> Optional[Path]:
    run_dir = runs / run.subdir
    if (run_dir / "model_index.json").is_file():
        return run_dir
    if run.key == "cd" and (BUNDLED / "model_index.json").is_file():
        return BUNDLED
    return None


def grid_samples(samples: list[Tensor], labels: Tensor, per_class: int = GRID_PER_CLASS) -> Tensor:
    """One row per class: the first ``per_class`` samples of that class from each tensor in ``samples`` (one per
    NFE), the blocks separated by an empty cell; every 8x8 sample framed by one grey pixel. Returns
    ``[rows * cols, C, H + 2, W + 2]`` images in row order (``cols = len(samples) * (per_class + 1) - 1``)."""
    framed = [F.pad(s, (1, 1, 1, 1), value=GRID_FRAME) for s in samples]
    gap = torch.full_like(framed[0][:1], GRID_FRAME)
    cells = []
    for c in labels.unique(sorted=True).tolist():
        index = (labels == c).nonzero().flatten()[:per_class]
        if len(index) < per_class:
            raise ValueError(f"class {c} has {len(index)} samples, fewer than the grid's {per_class}")
        for block, images in enumerate(framed):
            if block:
                cells.append(gap)
            cells.append(images[index])
    return torch.cat(cells)


def _save_grid(path: Path, samples: list[Tensor], labels: Tensor) -> Path:
    cols = len(samples) * (GRID_PER_CLASS + 1) - 1
    return save_image_grid(grid_samples(samples, labels), path, cols=cols, scale=GRID_SCALE)


def evaluate_run(run: Run, model_dir: Path, seed: int, grid: Optional[Path] = None) -> list[dict[str, Any]]:
    """FD-digits rows (one per NFE) of one pipeline directory; with ``grid``, also a PNG of some of the samples
    (rows: classes; blocks: NFE, as in the rows)."""
    pipe = ConsistencyModelPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    labels = balanced_class_labels(PER_DRAW).repeat(DRAWS)
    total = PER_DRAW * DRAWS
    info = _run_info(model_dir)
    network = f"{type(pipe.model).__name__} {sum(p.numel() for p in pipe.model.parameters()) / 1e6:.2f} M"
    configs: list[tuple[int, dict[str, Any], Optional[float]]]
    parameterization = read_parameterization(model_dir)
    if parameterization == "edm":
        configs = [(35, {"heun_steps": 18}, None)]
    elif parameterization == "trigflow":
        t_mid = best_trigflow_t(pipe, labels, seed + 1)
        tau = float(t_to_sigma(t_mid, float(pipe.scheduler.config.sigma_data)))
        configs = [(1, {"num_inference_steps": 1}, None), (2, {"timesteps": [T_MAX, t_mid]}, tau)]
    else:
        n = int(pipe.scheduler.config.num_train_timesteps)
        tuned = pipe.default_timesteps.get("2")
        index = tuned[0] if tuned else sigma_to_grid_index(FALLBACK_TAU, n, interior=True)
        tau = float(karras_grid_sigmas([index], n)[0])
        configs = [(1, {"num_inference_steps": 1}, None), (2, {"timesteps": [index, 0]}, tau)]
    rows, drawn = [], []
    for nfe, options, tau in configs:
        t0 = time.perf_counter()
        if "heun_steps" in options:
            samples = generate_heun_samples(pipe, total, seed, class_labels=labels, **options)
        else:
            samples = generate_samples(pipe, total, seed, class_labels=labels, **options)
        sample_seconds = time.perf_counter() - t0
        result = evaluate_digits(samples, labels, draws=DRAWS)
        drawn.append(samples)
        rows.append({
            "data": "digits", "key": run.key, "method": run.method, "network": network, "seed": seed, "nfe": nfe,
            "tau": tau, "model": str(model_dir),
            "metric": "fd_digits", "value": result.fd_mean, "std": result.fd_std, "floor": result.floor_mean,
            "x_floor": result.ratio, "accuracy": result.accuracy, "sample_seconds": sample_seconds, **info,
        })
    if grid is not None:
        rows[0]["grid"] = str(_save_grid(grid, drawn, labels))
    return rows


def best_trigflow_t(pipe: ConsistencyModelPipeline, labels: Tensor, seed: int) -> float:
    """The 2-step intermediate TrigFlow time in ``TRIGFLOW_T_GRID`` with the lowest FD-digits on ``seed``."""
    scores = {
        t: evaluate_digits(generate_samples(pipe, len(labels), seed, class_labels=labels, num_inference_steps=None,
                                            timesteps=[T_MAX, t]), labels, draws=DRAWS).fd_mean
        for t in TRIGFLOW_T_GRID
    }
    return min(scores, key=scores.get)


def run(
    runs: Path, methods: list[str], seed: int, log=print, grids: Optional[Path] = None
) -> list[dict[str, Any]]:
    """Evaluate every available run; a missing run becomes a record with ``value=None``. With ``grids``, each
    evaluated run also writes ``grids/digits_NETWORK_METHOD.png``."""
    records = []
    for key in methods:
        spec = RUN_BY_KEY[key]
        model_dir = _resolve(spec, runs)
        if model_dir is None:
            log(f"digits {key}: no run in {runs / spec.subdir} (see recipes/digits/)")
            records.append({"data": "digits", "key": key, "method": spec.method, "network": spec.network,
                            "nfe": None, "value": None})  # fmt: skip
            continue
        grid = None if grids is None else grids / f"digits_{spec.network}_{spec.method}.png"
        for row in evaluate_run(spec, model_dir, seed, grid):
            log(f"digits {key} NFE {row['nfe']}: FD {row['value']:.2f} ± {row['std']:.2f} "
                f"({row['x_floor']:.2f}x floor, accuracy {row['accuracy']:.3f})")
            records.append(row)
    add_teacher_ratios(records)
    return records


def add_teacher_ratios(records: list[dict[str, Any]]) -> None:
    """Set each record's ``x_teacher``: its FD over the FD of the EDM teacher of the same network family (None
    when either is missing)."""
    teachers = {RUN_BY_KEY[r["key"]].network: r["value"] for r in records
                if r["method"] == "edm" and r["value"] is not None}  # fmt: skip
    for r in records:
        teacher = teachers.get(RUN_BY_KEY[r["key"]].network)
        r["x_teacher"] = None if teacher is None or r["value"] is None else r["value"] / teacher


def _target_text(r: dict[str, Any]) -> str:
    target = TARGETS.get((r["method"], r["nfe"]))
    if target is None:
        return ""
    base, factor = target
    value = r["x_floor"] if base == "floor" else r.get("x_teacher")
    if value is None:
        return f"<= {factor:g}x {base}"
    return f"<= {factor:g}x {base}: {'ok' if value <= factor else 'MISSED'}"


def table(records: list[dict[str, Any]]) -> str:
    """Markdown table of the digits records."""
    lines = [
        "| data | method | network | NFE | tau | train steps | train s (wall) | train CPU s | FD-digits (5 x 360) "
        "| x floor | x teacher | accuracy | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in records:
        if r["value"] is None:
            lines.append(f"| digits | {r['method']} | {r['network']} | - | - | - | - | - | not trained | - | - | - | |")
            continue
        lines.append(
            f"| digits | {r['method']} | {r['network']} | {r['nfe']} | {fmt(r['tau'], '.3g')} | "
            f"{fmt(r['steps'], 'd')} | "
            f"{fmt(r['seconds'], '.0f')} | {fmt(r['cpu_seconds'], '.0f')} | {r['value']:.2f} ± {r['std']:.2f} | "
            f"{r['x_floor']:.2f} | {fmt(r['x_teacher'], '.2f')} | {r['accuracy']:.3f} | {_target_text(r)} |"
        )
    floor = next((r["floor"] for r in records if r.get("floor") is not None), None)
    if floor is not None:
        lines.append(f"\nFD-digits floor (train vs held-out, 5 draws of 360): {floor:.2f}")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Quality (x floor) against NFE, one line per method, both axes log-scaled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in dict.fromkeys(r["key"] for r in records if r["value"] is not None):
        rows = sorted((r for r in records if r["key"] == key and r["value"] is not None), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rows], [r["x_floor"] for r in rows], marker="o", label=key)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("FD-digits / floor")
    ax.set_title("digits: quality against NFE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "digits", help="recipe output folder")
    parser.add_argument("--methods", nargs="+", default=list(RUN_BY_KEY), choices=list(RUN_BY_KEY))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the records here")
    parser.add_argument("--plot", type=Path, default=None, help="also write a quality-vs-NFE PNG here")
    parser.add_argument("--grids", type=Path, default=None, help="also write a sample grid PNG per run in this folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = run(args.runs, args.methods, args.seed, log=lambda s: print(s, file=sys.stderr, flush=True),
                  grids=args.grids)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1))
    if args.plot:
        plot(records, args.plot)
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
