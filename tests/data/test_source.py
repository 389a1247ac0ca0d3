"""Deterministic batches: tensor sources (epochs, slices, flips) and sampler sources."""

import pytest
import torch
from cmkit.data import SamplerSource, TensorSource


def toy_data():
    from cmkit.data.toys import sample_toy

    return SamplerSource(lambda n, g: sample_toy("8gaussians", n, generator=g), sample_shape=(2,))


def test_tensor_source_epochs_and_slices():
    data = torch.arange(10.0).reshape(10, 1)
    src = TensorSource(data, torch.arange(10), kind="points")
    seen = torch.cat([src.indices(3, step, 5) for step in range(2)])  # one epoch = two steps of 5
    assert sorted(seen.tolist()) == list(range(10))
    whole_x, whole_y = src.batch(3, 7, 8)
    parts = [src.batch(3, 7, 8, offset=o, local_batch=4) for o in (0, 4)]
    assert torch.equal(whole_x, torch.cat([p[0] for p in parts]))
    assert torch.equal(whole_y, torch.cat([p[1] for p in parts]))
    assert torch.equal(whole_x[:, 0].long(), whole_y)  # labels stay with their samples
    assert not torch.equal(src.batch(3, 7, 8)[0], src.batch(4, 7, 8)[0])


def test_tensor_source_flip_and_uint8():
    img = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    img[:, :, :, 0] = 255  # left column white
    src = TensorSource(img, flip=True)
    x, _ = src.batch(0, 0, 64)
    assert x.min() == -1.0 and x.max() == 1.0
    flipped = (x[:, 0, 0, 1] == 1.0).float().mean()
    assert 0.25 < flipped < 0.75
    assert torch.equal(x, src.batch(0, 0, 64)[0])


def test_sampler_source_slices():
    src = toy_data()
    whole, _ = src.batch(1, 5, 6)
    parts = torch.cat([src.batch(1, 5, 6, offset=o, local_batch=3)[0] for o in (0, 3)])
    assert torch.equal(whole, parts)
    with pytest.raises(ValueError, match="does not fit"):
        src.batch(1, 5, 6, offset=4, local_batch=3)
