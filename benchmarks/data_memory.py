"""Memory of the streaming image loader: peak RSS of the training process and of each loader worker.

Writes ``--count`` random PNGs (``--size`` pixels square, in ``--classes`` class folders) into ``--dir`` once
(reused when complete), then runs, in a fresh Python process, the ``folder:`` loader over ``--steps`` steps of
``--batch`` images with ``--workers`` workers, and prints one row per process: peak RSS (``VmHWM`` from
/proc/<pid>/status; without /proc, the largest RSS psutil sampled), and PSS at the end where /proc has it (pages
shared by the forked workers counted once). Before the fix a folder was decoded into every process: the table
also prints what that in-memory copy would weigh (N x C x R x R bytes per process).

    python benchmarks/data_memory.py --count 20000
    python benchmarks/data_memory.py --count 200000 --workers 2 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

MARKER = ".complete"


def _write_range(args: tuple[str, int, int, int, int]) -> None:
    import numpy as np
    from PIL import Image

    root, start, stop, size, classes = args
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        path = Path(root) / f"class{i % classes:03d}" / f"img{i:08d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, compress_level=1)


def make_images(root: Path, count: int, size: int, classes: int) -> Path:
    """``count`` random ``size`` x ``size`` PNGs in ``classes`` sub-folders of ``root`` (kept once complete)."""
    marker = root / MARKER
    wanted = {"count": count, "size": size, "classes": classes}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    import multiprocessing

    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    chunks = [(str(root), s, min(s + 1000, count), size, classes) for s in range(0, count, 1000)]
    with multiprocessing.Pool(max(1, min(8, os.cpu_count() or 1))) as pool:
        pool.map(_write_range, chunks)
    marker.write_text(json.dumps(wanted))
    return root


def _status_kib(pid: int, field: str) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _pss_kib(pid: int) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_kib(pid: int) -> Optional[int]:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss // 1024
    except Exception:  # noqa: BLE001 - psutil missing or the process gone
        return _status_kib(pid, "VmRSS")


def child(args: argparse.Namespace) -> None:
    """Run the loader in this (fresh) process and print the memory table as JSON."""
    import multiprocessing

    import torch

    from cmkit.data import build_dataset

    me = os.getpid()
    baseline = _rss_kib(me)
    src = build_dataset(args.data, path=str(args.path), resolution=args.size)
    after_index = _rss_kib(me)
    sampled: dict[int, int] = {}
    with src.loader(0, 0, args.steps, args.batch, workers=args.workers) as batches:
        for step, (x, _) in enumerate(batches):
            assert x.shape[0] == args.batch and x.dtype == torch.float32
            if step % 5 == 0 or step == args.steps - 1:
                for pid in [me, *(p.pid for p in multiprocessing.active_children())]:
                    sampled[pid] = max(sampled.get(pid, 0), _rss_kib(pid) or 0)
        rows = []
        for pid in sampled:
            rows.append({
                "process": "main" if pid == me else "worker", "pid": pid,
                "peak_rss_kib": _status_kib(pid, "VmHWM") or sampled[pid], "pss_kib": _pss_kib(pid),
            })
    files = getattr(getattr(src, "records", None), "files", None)
    print(json.dumps({
        "rows": rows, "baseline_rss_kib": baseline, "after_index_rss_kib": after_index, "images": len(src),
        "index_bytes": int(files.nbytes) if files is not None else None,
        "in_memory_copy_bytes": len(src) * 3 * args.size**2,
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=20000, help="images to generate (default 20000)")
    p.add_argument("--size", type=int, default=32, help="image size in pixels (default 32)")
    p.add_argument("--classes", type=int, default=10, help="class sub-folders (default 10)")
    p.add_argument("--dir", type=Path, default=None, help="image folder (default: one per count/size in the temp dir)")
    p.add_argument("--workers", type=int, default=2, help="loader workers (default 2)")
    p.add_argument("--steps", type=int, default=50, help="steps to load (default 50)")
    p.add_argument("--batch", type=int, default=256, help="images per step (default 256)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default="folder", help=argparse.SUPPRESS)
    p.add_argument("--path", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    root = args.dir or Path(tempfile.gettempdir()) / f"cmkit-bench-images-{args.count}-{args.size}"
    make_images(root, args.count, args.size, args.classes)
    cmd = [sys.executable, __file__, "--child", "--path", str(root), "--size", str(args.size), "--workers",
           str(args.workers), "--steps", str(args.steps), "--batch", str(args.batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    mib = 1 / 1024
    print(f"folder:{root}: {result['images']:,} images of 3x{args.size}x{args.size}, {args.steps} steps of "
          f"{args.batch}, {args.workers} worker(s)")
    print(f"file index: {result['index_bytes'] / 2**20:.1f} MiB; the old in-memory copy would be "
          f"{result['in_memory_copy_bytes'] / 2**20:.1f} MiB in every process")
    print(f"main RSS after imports: {result['baseline_rss_kib'] * mib:.0f} MiB, after the index: "
          f"{result['after_index_rss_kib'] * mib:.0f} MiB")
    print(f"{'process':<8} {'pid':>8} {'peak RSS MiB':>13} {'PSS MiB':>9}")
    for row in result["rows"]:
        pss = f"{row['pss_kib'] * mib:9.0f}" if row["pss_kib"] is not None else f"{'-':>9}"
        print(f"{row['process']:<8} {row['pid']:>8} {row['peak_rss_kib'] * mib:13.0f} {pss}")


if __name__ == "__main__":
    main()
