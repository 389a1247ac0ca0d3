import pytest
import torch

from cmkit.training.random import StepRandom, step_seed


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
