"""Images per second the data loaders deliver, against the samples per second a training step consumes.

For ``folder:``, ``prepared:`` and ``zip:`` copies of the same ``--count`` random PNGs (``--size`` pixels; made
once under ``--dir`` by ``benchmarks/data_memory.py``'s generator, ``cmkit data prepare`` and an EDM-style zip),
runs each loader at ``--workers`` (default 0 1 2) for ``--steps`` steps of ``--batch`` images (the first step,
which starts the workers, is not counted) and prints images/s. Then times ``--train-steps`` iCT steps of
``--model`` at that batch and resolution on in-memory data, so the table says how many times over each loader
keeps up with training on this machine (CPU model from ``lscpu``).

    python benchmarks/data_throughput.py --count 20000 --model small --batch 64
    python benchmarks/data_throughput.py --count 200 --steps 3 --train-steps 2 --model tiny --batch 8   # a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_memory import make_images  # noqa: E402 - the sibling benchmark's image generator


def cpu_name() -> str:
    """The CPU model as ``lscpu`` names it (or the platform's processor string)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    import platform

    return platform.processor() or "unknown CPU"


def make_zip(folder: Path, path: Path) -> Path:
    """An EDM-style archive (stored PNGs ``00000/img00000000.png``, ``dataset.json`` labels) of ``folder``'s images."""
    if path.is_file():
        return path
    from cmkit.data.folder import FolderRecords

    records = FolderRecords(folder)
    tmp = path.with_name(path.name + ".tmp")
    labels = []
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(len(records)):
            name = f"{i // 1000:05d}/img{i:08d}.png"
            zf.write(records.path(i), name)
            labels.append([name, int(records.labels[i]) if records.labels is not None else 0])
        zf.writestr("dataset.json", json.dumps({"labels": labels}))
    os.replace(tmp, path)
    return path


def loader_rate(spec: str, size: int, batch: int, steps: int, workers: int) -> float:
    """Images per second of the loader of ``spec`` over ``steps`` steps (the first one not counted)."""
    from cmkit.data import build_dataset

    kind, _, path = spec.partition(":")
    src = build_dataset(kind, path=path, resolution=None if kind == "prepared" else size, flip=True)
    with src.loader(0, 0, steps + 1, batch, workers=workers) as batches:
        next(batches)
        start = time.perf_counter()
        for _ in batches:
            pass
        return steps * batch / (time.perf_counter() - start)


def training_rate(model: str, size: int, batch: int, steps: int) -> float:
    """Samples per second of iCT training steps of ``model`` on random in-memory images."""
    import torch

    from cmkit.data import TensorSource
    from cmkit.training.build import build_model, build_objective
    from cmkit.training.config import DataConfig, TrainConfig
    from cmkit.training.loop import Trainer

    data = TensorSource(torch.randint(0, 256, (4 * batch, 3, size, size), dtype=torch.uint8))
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(method="ict", data=DataConfig(kind="folder", path="unused", resolution=size), model=model,
                             batch_size=batch, steps=steps + 1, output_dir=out, progress=False, device="cpu")
        torch.manual_seed(0)
        trainer = Trainer(config, build_objective(config, build_model(config, data, None), None), data)
        trainer.step(0)
        start = time.perf_counter()
        for step in range(1, steps + 1):
            trainer.step(step)
        return steps * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=5000, help="images (default 5000)")
    p.add_argument("--size", type=int, default=32, help="image size in pixels (default 32)")
    p.add_argument("--dir", type=Path, default=None, help="where the data live (default: the temp dir)")
    p.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--steps", type=int, default=30, help="loader steps timed (default 30)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts (default 0 1 2)")
    p.add_argument("--kinds", nargs="+", default=["folder", "prepared", "zip"], help="loaders (default all three)")
    p.add_argument("--model", default="small", help="UNet preset of the training step (default small)")
    p.add_argument("--train-steps", type=int, default=5, help="training steps timed (default 5)")
    args = p.parse_args()

    root = args.dir or Path(tempfile.gettempdir()) / f"cmkit-bench-images-{args.count}-{args.size}"
    folder = make_images(root, args.count, args.size, 10)
    specs = {"folder": f"folder:{folder}"}
    if "prepared" in args.kinds:
        prepared = folder.with_name(folder.name + f"-prepared{args.size}")
        if not prepared.is_dir():
            from cmkit.data import open_records
            from cmkit.data.prepared import prepare_images

            prepare_images(open_records("folder", str(folder)), prepared, resolution=args.size,
                           workers=min(8, os.cpu_count() or 1))
        specs["prepared"] = f"prepared:{prepared}"
    if "zip" in args.kinds:
        specs["zip"] = f"zip:{make_zip(folder, folder.with_name(folder.name + '.zip'))}"

    import torch

    print(f"CPU: {cpu_name()}; {os.cpu_count()} logical CPUs; torch {torch.__version__}, {torch.get_num_threads()} threads")
    train = training_rate(args.model, args.size, args.batch, args.train_steps)
    print(f"training: iCT, model {args.model}, batch {args.batch}, {args.size}x{args.size}: {train:,.0f} samples/s")
    print(f"{'data':<10} {'workers':>7} {'images/s':>10} {'x training':>11}")
    for kind in args.kinds:
        for workers in args.workers:
            rate = loader_rate(specs[kind], args.size, args.batch, args.steps, workers)
            print(f"{kind:<10} {workers:>7} {rate:>10,.0f} {rate / train:>11.1f}")


if __name__ == "__main__":
    main()
