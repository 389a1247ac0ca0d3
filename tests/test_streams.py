import pytest
import torch

from cmkit.streams import StepRandom, step_seed


def test_slices_of_one_global_draw():
    full = StepRandom(3, 10, 8)
    halves = [StepRandom(3, 10, 8, offset=o, local_batch=4) for o in (0, 4)]
    for method, args in (("randn", (2, 2)), ("rand", (3,)), ("randint", (40,)), ("choice", (torch.tensor([0.2, 0.8]),))):
        whole = getattr(full, method)(*args)
        parts = torch.cat([getattr(h, method)(*args) for h in halves])
        assert torch.equal(whole, parts), method


def test_depends_on_seed_and_step_only():
    assert torch.equal(StepRandom(1, 2, 4).randn(5), StepRandom(1, 2, 4).randn(5))
    assert not torch.equal(StepRandom(1, 2, 4).randn(5), StepRandom(1, 3, 4).randn(5))
    assert step_seed(1, 2) != step_seed(2, 1)


def test_bad_slice():
    with pytest.raises(ValueError, match="does not fit"):
        StepRandom(0, 0, 4, offset=3, local_batch=2)


def test_data_does_not_import_training():
    """The random streams sit below both data and training: importing the data sources loads no training module."""
    import subprocess
    import sys

    code = "import sys, cmkit.data, cmkit.data.folder; print(sorted(m for m in sys.modules if m.startswith('cmkit.training')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
