"""recipes/digits/unet/export_digits.py: the training digits as a class-per-folder PNG tree that ``folder:`` reads
back as the same 1437 images (to 1/255) and labels."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from cmkit.data import build_dataset
from cmkit.data.digits import load_digits

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "digits" / "unet" / "export_digits.py"


@pytest.fixture(scope="module")
def export_digits():
    spec = importlib.util.spec_from_file_location("export_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["export_digits"] = module
    spec.loader.exec_module(module)
    return module.export_digits


def test_exported_digits_are_the_training_split(export_digits, tmp_path):
    from PIL import Image

    out = tmp_path / "png"
    assert export_digits(out) == 1437
    assert not (tmp_path / "png.partial").exists()
    x, y = load_digits("train")
    files = sorted(out.glob("*/*.png"), key=lambda p: int(p.stem))
    assert [int(p.stem) for p in files] == list(range(1437))
    assert [int(p.parent.name) for p in files] == y.tolist()
    pixels = np.stack([np.asarray(Image.open(p)) for p in files]).astype(np.float64)
    assert np.abs(pixels / 127.5 - 1 - x[:, 0].numpy()).max() <= 1 / 255 + 1e-6

    source = build_dataset("folder", path=str(out), resolution=8, channels=1)
    assert len(source) == 1437 and source.num_classes == 10
    assert list(source.class_names) == [str(c) for c in range(10)]  # class id c is the folder named c


def test_export_refuses_an_existing_folder(export_digits, tmp_path):
    with pytest.raises(FileExistsError, match="exists; remove it or pass a new folder"):
        export_digits(tmp_path)
