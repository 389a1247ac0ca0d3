"""benchmarks/quality_digits.py: the sample-grid layout, x-teacher ratios within a network family, and the UNet rows
listed as missing when their runs are absent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "quality_digits.py"


@pytest.fixture(scope="module")
def qd():
    spec = importlib.util.spec_from_file_location("quality_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_digits"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _samples(block: int, labels: torch.Tensor) -> torch.Tensor:
    """[N, 1, 8, 8] images whose pixels encode (block, class, position in the batch)."""
    n = len(labels)
    value = block * 1000 + labels.float() * 100 + torch.arange(n, dtype=torch.float32)
    return value.view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()


def test_grid_samples_rows_are_classes_and_blocks_are_nfe(qd):
    labels = torch.arange(3).repeat_interleave(5).repeat(2)  # 3 classes, 5 each, two draws
    one, two = _samples(1, labels), _samples(2, labels)
    cells = qd.grid_samples([one, two], labels, per_class=2)
    cols = 2 * (2 + 1) - 1
    assert cells.shape == (3 * cols, 1, 10, 10)
    grid = cells.view(3, cols, 1, 10, 10)
    frame = qd.GRID_FRAME
    assert (grid[..., 0, :] == frame).all() and (grid[..., :, -1] == frame).all()  # one-pixel frame
    assert (grid[:, 2] == frame).all()  # the empty cell between the 1-step and 2-step blocks
    centre = grid[:, :, 0, 5, 5]
    for c in range(3):
        first = [c * 5, c * 5 + 1]  # the first two samples of class c
        assert centre[c, :2].tolist() == [1000 + c * 100 + i for i in first]
        assert centre[c, 3:].tolist() == [2000 + c * 100 + i for i in first]


def test_grid_samples_refuses_a_class_with_too_few_samples(qd):
    labels = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="class 1 has 1 samples, fewer than the grid's 2"):
        qd.grid_samples([_samples(0, labels)], labels, per_class=2)


def test_saved_grid_has_one_row_per_class(qd, tmp_path):
    from PIL import Image

    labels = qd.balanced_class_labels(10 * qd.GRID_PER_CLASS)
    path = qd._save_grid(tmp_path / "g.png", [torch.zeros(len(labels), 1, 8, 8)] * 2, labels)
    cell = 10 * qd.GRID_SCALE
    cols = 2 * (qd.GRID_PER_CLASS + 1) - 1
    assert Image.open(path).size == (cols * cell, 10 * cell)


def test_teacher_ratio_uses_the_teacher_of_the_same_network(qd):
    records = [
        {"key": "edm", "method": "edm", "value": 10.0},
        {"key": "cd", "method": "cd", "value": 13.0},
        {"key": "unet-edm", "method": "edm", "value": 20.0},
        {"key": "unet-cd", "method": "cd", "value": 30.0},
        {"key": "unet-ect", "method": "ect", "value": None},
    ]
    qd.add_teacher_ratios(records)
    assert [r["x_teacher"] for r in records] == [1.0, 1.3, 1.0, 1.5, None]
    without_unet_teacher = [dict(r) for r in records if r["key"] != "unet-edm"]
    qd.add_teacher_ratios(without_unet_teacher)
    assert [r["x_teacher"] for r in without_unet_teacher] == [1.0, 1.3, None, None]


def test_missing_unet_runs_are_listed_not_evaluated(qd, tmp_path):
    logged: list[str] = []
    records = qd.run(tmp_path, ["unet-edm", "unet-cd", "unet-ect"], seed=0, log=logged.append, grids=tmp_path)
    assert [(r["method"], r["network"], r["value"]) for r in records] == [
        ("edm", "unet", None), ("cd", "unet", None), ("ect", "unet", None)]
    assert all("no run in" in line and "unet" in line for line in logged)
    text = qd.table(records)
    assert text.count("| unet | - |") == 3 and text.count("not trained") == 3
    assert not list(tmp_path.glob("*.png"))
