"""`cmkit demo`: the bundled model's one-step | two-step grid, one row per class."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cmkit.cli import main
from cmkit.cli.demo import HEADER_HEIGHT, PAD, grid_size


def test_demo_writes_grid_of_the_right_size(tmp_path, capsys):
    out = tmp_path / "sub" / "demo.png"
    assert main(["demo", "--out", str(out), "--per-class", "3", "--scale", "2", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed
    assert "generation:" in printed and " s " in printed
    image = Image.open(out)
    # 10 rows of 8x8 digits at scale 2 with a 2-pixel border: 20 px cells; label + 3 + gap + 3 columns.
    assert image.size == (20 * 8, 20 * 10 + 20) == grid_size(3, 10, (8, 8), 2)
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    cell = 8 * 2 + 2 * PAD
    # every sample cell holds an image with contrast, not a flat fill
    for row in range(10):
        for col in (1, 2, 3, 5, 6, 7):
            y0, x0 = HEADER_HEIGHT + row * cell + PAD, col * cell + PAD
            assert pixels[y0 : y0 + 16, x0 : x0 + 16].std() > 20, (row, col)
    # the gap column is empty background
    gap = pixels[HEADER_HEIGHT:, 4 * cell : 5 * cell]
    assert gap.std() == 0


def test_demo_is_deterministic(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for path in (a, b):
        assert main(["demo", "--out", str(path), "--per-class", "1", "--seed", "3"]) == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--per-class", "0"], "--per-class must be >= 1"),
        (["--scale", "0"], "--scale must be >= 1"),
        (["--out", "grid.jpg"], "--out must be a .png"),
        (["--model", "/nonexistent/model"], "nonexistent"),
    ],
)
def test_demo_rejects_bad_arguments(tmp_path, capsys, argv, message):
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "x.png")]
    assert main(["demo", *argv]) == 1
    assert message in capsys.readouterr().err
