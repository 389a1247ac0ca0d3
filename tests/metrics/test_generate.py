"""Evaluation samples: seeded and batch-size invariant; Heun's evaluation count."""

import pytest
import torch
from cmkit.metrics import (
    balanced_class_labels,
)
from builders import tiny_pipeline_dir


def test_generate_samples_is_seeded_and_batch_size_invariant(tmp_path):
    from cmkit.metrics.generate import generate_heun_samples, generate_samples
    from cmkit.pipeline import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained(tiny_pipeline_dir(tmp_path / "p", (1, 8, 8), 10))
    pipe.set_progress_bar_config(disable=True)
    labels = balanced_class_labels(20)
    a = generate_samples(pipe, 20, 1, num_inference_steps=2, class_labels=labels, batch_size=20)
    b = generate_samples(pipe, 20, 1, num_inference_steps=2, class_labels=labels, batch_size=20)
    assert torch.equal(a, b) and a.shape == (20, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    direct = pipe(batch_size=20, class_labels=labels, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(1), output_type="pt").images * 2 - 1
    assert torch.equal(a, direct)
    heun = generate_heun_samples(pipe, 6, 0, heun_steps=3, class_labels=labels[:6], batch_size=4)
    assert heun.shape == (6, 1, 8, 8) and torch.isfinite(heun).all()
    with pytest.raises(ValueError, match="one per sample"):
        generate_samples(pipe, 20, class_labels=labels[:5])


def test_generate_heun_samples_makes_2n_minus_1_evaluations_per_batch(tmp_path):
    from cmkit.metrics.generate import generate_heun_samples
    from cmkit.pipeline import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained(tiny_pipeline_dir(tmp_path / "t", (1, 8, 8), 10, "edm"))
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    generate_heun_samples(pipe, 6, 0, heun_steps=3, class_labels=torch.arange(6), batch_size=4)
    assert calls == [4] * 5 + [2] * 5  # the NFE `cmkit eval` reports: 2 * heun_steps - 1 per batch
