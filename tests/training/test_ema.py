"""EMA of the trained weights: decay and update."""

import pytest
import torch
from cmkit.training.ema import EMA, ema_decay


def test_ema_decay_and_update():
    assert ema_decay(0.999, 0, warmup=True) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay(0.999, 10_000, warmup=True) == 0.999
    assert ema_decay(0.9, 0, warmup=False) == 0.9
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = EMA(lin, [0.5, 0.0], warmup=False)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    ema.update(lin, step=0)
    assert torch.equal(ema.averages[0.5]["weight"], torch.full((1, 2), 2.0))  # 0.5 * 1 + 0.5 * 3
    assert torch.equal(ema.averages[0.0]["weight"], torch.full((1, 2), 3.0))
    copy = ema.copy_model(lin, 0.5)
    assert torch.equal(copy.weight, torch.full((1, 2), 2.0)) and torch.equal(lin.weight, torch.full((1, 2), 3.0))
    with pytest.raises(ValueError, match="distinct"):
        EMA(lin, [0.9, 0.9])
