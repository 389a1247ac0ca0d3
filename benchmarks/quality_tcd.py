"""TCD against CD multistep: quality against NFE (1, 2, 4, 8) and gamma (0, 0.3, 0.5, 1.0), on the digits and a 2-D toy.

Both students distil the same EDM teacher. TCD (``cmkit train --method tcd``) samples with cmkit's ``TCDScheduler``
(strategic stochastic sampling, gamma = ``eta``); CD samples with CM's multistep sampler (Algorithm 1) over its
scheduler's evenly spaced grid points. The paper's claims (Zheng et al. 2024, sec. 5) tested here:

1. TCD's quality keeps improving as NFE grows, while CD multistep's saturates or worsens;
2. a moderate gamma (0.3) beats gamma = 0 at low NFE.

Digits: FD-digits over 5 draws of 360 class-balanced samples (lower is better; the floor is about 7), as in
``quality_digits.py``. Toys (8-Gaussians, seed 0): SWD / floor over 10k samples, as in ``quality.py``.

Usage (the digits runs come from the recipes; the toy runs are trained here when missing, about 4 CPU minutes)::

    bash recipes/digits/train.sh runs/digits && bash recipes/digits/baselines.sh runs/digits tcd
    bash recipes/digits/unet/train.sh runs/digits/unet data teacher cd tcd      # optional: the UNet rows (--unet)
    python benchmarks/quality_tcd.py --digits runs/digits --toys runs/toys --unet runs/digits/unet --json out/tcd.json \\
        --plot docs/images/tcd_nfe_gamma.png --grid docs/images/digits_mlp_tcd.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from cmkit.metrics import balanced_class_labels, evaluate_digits
from cmkit.metrics.generate import generate_samples
from cmkit.metrics.swd import sliced_wasserstein, toy_reference, toy_swd_floor
from cmkit.pipeline import ConsistencyModelPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the toy recipes and training driver)
from quality_digits import BUNDLED, DRAWS, PER_DRAW, _save_grid  # noqa: E402

NFES = (1, 2, 4, 8)
GAMMAS = (0.0, 0.3, 0.5, 1.0)
TOY = "8gaussians"
#: the gamma of the sample grid (``--grid``): TCD's recommended 0.3
GRID_GAMMA = 0.3
#: TCD's toy recipe: CD's (steps, learning rate, EMA) with TCD's defaults (50-point grid, skip 1, DDIM teacher step)
TCD_TOY_RECIPE = quality.Recipe(steps=5_000, lr=5e-4, options={"target_ema": 0.95, "loss": "l2"})


def _pipeline(directory: Path) -> ConsistencyModelPipeline:
    pipe = ConsistencyModelPipeline.from_pretrained(str(directory))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _settings() -> list[tuple[str, int, Optional[float]]]:
    """(method, NFE, gamma) of every row: TCD at each gamma, CD (no gamma) at each NFE."""
    return [("tcd", n, g) for n in NFES for g in GAMMAS] + [("cd", n, None) for n in NFES]


def digits_rows(
    runs: Path, seed: int, log=print, grid: Optional[Path] = None, data: str = "digits"
) -> list[dict[str, Any]]:
    """FD-digits of the TCD run ``runs/tcd`` and of CD (``runs/cd``, else the bundled model) at every setting; with
    ``grid``, a PNG of TCD's samples at gamma 0.3 (rows: classes; blocks: NFE 1, 2, 4, 8). ``data`` names the rows."""
    dirs = {"tcd": runs / "tcd", "cd": runs / "cd" if (runs / "cd" / "model_index.json").is_file() else BUNDLED}
    if not (dirs["tcd"] / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no TCD run in {dirs['tcd']}: bash recipes/digits/baselines.sh {runs} tcd (the UNet: bash "
            "recipes/digits/unet/train.sh RUNS tcd)"
        )
    pipes = {k: _pipeline(d) for k, d in dirs.items()}
    labels = balanced_class_labels(PER_DRAW).repeat(DRAWS)
    rows, drawn = [], []
    for method, nfe, gamma in _settings():
        t0 = time.perf_counter()
        samples = generate_samples(pipes[method], len(labels), seed, class_labels=labels, num_inference_steps=nfe,
                                   eta=gamma)  # fmt: skip
        result = evaluate_digits(samples, labels, draws=DRAWS)
        if method == "tcd" and gamma == GRID_GAMMA:
            drawn.append(samples)
        rows.append({"data": data, "method": method, "nfe": nfe, "gamma": gamma, "value": result.fd_mean,
                     "std": result.fd_std, "floor": result.floor_mean, "accuracy": result.accuracy,
                     "model": str(dirs[method]), "sample_seconds": time.perf_counter() - t0})  # fmt: skip
        log(f"{data} {method} NFE {nfe} gamma {gamma}: FD {result.fd_mean:.2f} ± {result.fd_std:.2f}")
    if grid is not None:
        log(f"wrote {_save_grid(grid, drawn, labels)}")
    return rows


def toy_rows(toys: Path, seed: int, log=print) -> list[dict[str, Any]]:
    """SWD / floor on 8-Gaussians of TCD and CD distilled from one EDM teacher (each trained here when missing)."""
    dirs = {m: toys / f"{TOY}-seed{seed}-{m}" for m in ("edm", "cd", "tcd")}
    recipes = {"edm": quality.RECIPES["edm"], "cd": quality.RECIPES["cd"], "tcd": TCD_TOY_RECIPE}
    cpu = {}
    for method in ("edm", "cd", "tcd"):
        if not (dirs[method] / "model_index.json").is_file():
            log(f"toys: training {method} into {dirs[method]}")
            teacher = dirs["edm"] if method != "edm" else None
            cpu[method] = quality.train(method, TOY, seed, recipes[method], dirs[method], teacher)[2]
    reference = toy_reference(TOY, quality.NUM_SAMPLES)
    floor, _ = toy_swd_floor(TOY, quality.NUM_SAMPLES)
    pipes = {m: _pipeline(dirs[m]) for m in ("cd", "tcd")}
    rows = []
    for method, nfe, gamma in _settings():
        samples = generate_samples(pipes[method], quality.NUM_SAMPLES, seed, num_inference_steps=nfe, eta=gamma)
        swd = sliced_wasserstein(samples, reference)
        rows.append({"data": TOY, "method": method, "nfe": nfe, "gamma": gamma, "value": swd / floor, "swd": swd,
                     "floor": floor, "model": str(dirs[method]), "train_cpu_seconds": cpu.get(method)})  # fmt: skip
        log(f"{TOY} {method} NFE {nfe} gamma {gamma}: SWD {swd / floor:.2f} x floor")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown table per data set: rows TCD at each gamma and CD, columns NFE."""
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        metric = "FD-digits" if data.startswith("digits") else "SWD x floor"
        out += [f"**{data}** ({metric}, lower is better)", "", "| sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
                "|---|" + "---|" * len(NFES)]  # fmt: skip
        for method, gamma in [("tcd", g) for g in GAMMAS] + [("cd", None)]:
            cells = [r for r in rows if r["data"] == data and r["method"] == method and r["gamma"] == gamma]
            by_nfe = {r["nfe"]: r["value"] for r in cells}
            name = f"TCD, gamma {gamma}" if method == "tcd" else "CD multistep"
            out.append(f"| {name} | " + " | ".join(f"{by_nfe[n]:.2f}" for n in NFES) + " |")
        out.append("")
    return "\n".join(out)


def claims(rows: list[dict[str, Any]]) -> list[str]:
    """The paper's two claims, checked per data set."""
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        value = {(r["method"], r["nfe"], r["gamma"]): r["value"] for r in rows if r["data"] == data}
        best_tcd = [min(value[("tcd", n, g)] for g in GAMMAS) for n in NFES]
        cd = [value[("cd", n, None)] for n in NFES]
        tcd_improves = all(b <= a * 1.02 for a, b in zip(best_tcd, best_tcd[1:]))  # within 2%: noise
        cd_saturates = cd[-1] >= 0.95 * min(cd[:-1])  # 8 steps gain under 5% over CD's best with fewer
        gamma_helps = [n for n in NFES[:2] if value[("tcd", n, 0.3)] < value[("tcd", n, 0.0)]]
        lines.append(
            f"{data}: TCD (best gamma) keeps improving with NFE: {'yes' if tcd_improves else 'no'} "
            f"({' -> '.join(f'{v:.2f}' for v in best_tcd)}); CD multistep saturates or worsens: "
            f"{'yes' if cd_saturates else 'no'} ({' -> '.join(f'{v:.2f}' for v in cd)}); gamma 0.3 beats gamma 0 at "
            f"NFE {gamma_helps or 'neither 1 nor 2'}"
        )
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Quality against NFE: one panel per data set, a line per gamma and one for CD multistep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        for method, gamma in [("tcd", g) for g in GAMMAS] + [("cd", None)]:
            pts = sorted((r["nfe"], r["value"]) for r in rows if r["data"] == data and r["method"] == method
                         and r["gamma"] == gamma)  # fmt: skip
            style = {"color": "black", "linestyle": "--", "marker": "s"} if method == "cd" else {"marker": "o"}
            ax.plot(*zip(*pts), label="CD multistep" if method == "cd" else f"TCD γ={gamma}", **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(NFES, [str(n) for n in NFES])
        ax.set_xlabel("NFE")
        ax.set_ylabel("FD-digits" if data.startswith("digits") else "SWD / floor")
        ax.set_title(data)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", type=Path, default=Path("runs/digits"), help="runs directory with tcd/ (and cd/)")
    parser.add_argument("--toys", type=Path, default=Path("runs/toys"), help="toy runs directory (trained when missing)")
    parser.add_argument("--unet", type=Path, default=None,
                        help="also the DDPM++ UNet runs (tcd/ and cd/ of recipes/digits/unet/train.sh)")
    parser.add_argument("--only", choices=("digits", "toys"), default=None, help="one data set only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="also write the quality-vs-NFE plot here")
    parser.add_argument("--grid", type=Path, default=None, help="also write TCD's digits at gamma 0.3, NFE 1/2/4/8")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    if args.only in (None, "digits"):
        rows += digits_rows(args.digits, args.seed, grid=args.grid)
        if args.unet is not None:
            rows += digits_rows(args.unet, args.seed, data="digits (UNet)")
    if args.only in (None, "toys"):
        rows += toy_rows(args.toys, args.seed)
    print(table(rows))
    print("\n".join(claims(rows)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
