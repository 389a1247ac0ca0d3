"""benchmarks/gpu_check.py (``make gpu-check``): its no-CUDA exit, its table, and a full ``--quick`` run on the CPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| check ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_exits_2():
    done = _run(timeout=120)
    assert done.returncode == 2
    assert "skipped: no CUDA device" in done.stdout and "--device cpu --quick" in done.stdout


def test_a_failing_check_becomes_a_failed_row_and_budget_overruns_skip():
    gpu_check = _load_script()
    report = gpu_check.Report(torch.device("cpu"), budget_s=100.0)
    with report.guard("demo", "raises"):
        raise RuntimeError("boom | with a pipe\nsecond line")
    with report.guard("demo", "passes"):
        report.add("demo", "passes", "fine", True)
    assert report.over_budget("demo", "needs more time", need_s=1e6)
    assert not report.over_budget("demo", "fits", need_s=0.0)
    assert [(r.setting, r.status) for r in report.rows] == [
        ("raises", "fail"), ("passes", "pass"), ("needs more time", "skip"),
    ]
    assert report.rows[0].result == "RuntimeError: boom / with a pipe"  # one line, no table-breaking pipe
    table = report.markdown()
    assert table.splitlines()[0] == "| check | setting | result | pass |"
    assert "3 rows: 1 pass, 1 fail, 1 skip" in table


@pytest.mark.slow
def test_quick_cpu_run_prints_a_table_with_every_check_passing(tmp_path):
    out = tmp_path / "table.md"
    done = _run("--device", "cpu", "--quick", "--output", str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _table_rows(done.stdout)
    assert rows and all(len(r) == 4 for r in rows)
    failed = [r for r in rows if r[3] != "pass"]
    assert not failed, failed
    checks = {r[0] for r in rows}
    assert {"parity vs diffusers", "train 2 steps", "torchrun", "torch.compile", "speed vs diffusers"} <= checks
    settings = " ".join(r[1] for r in rows)
    for method in ("edm", "cd", "ct", "ict", "ect"):
        for precision in ("bf16 autocast", "fp16 autocast + GradScaler"):
            assert f"{method}, {precision}" in settings
    for dtype in ("fp32", "fp16", "bf16"):
        assert f"tiny UNet, {dtype}, batch 1" in settings and f"mini, {dtype}, batch 4" in settings
    assert out.read_text().strip() == done.stdout[done.stdout.index("## cmkit gpu-check"):].strip()
