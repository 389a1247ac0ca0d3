"""The bundled digits consistency model: it loads, fits the size budget, and its samples are digits."""

from __future__ import annotations

import json

import torch

from cmkit.cli.sample import default_model_dir
from cmkit.metrics import balanced_class_labels, classifier_accuracy, fd_digits, fd_digits_floor
from cmkit.metrics.generate import generate_samples
from cmkit.pipeline_io import read_parameterization
from cmkit.pipeline import ConsistencyModelPipeline

MODEL_DIR = default_model_dir()
MAX_BYTES = 10 * 1024 * 1024


def _pipe() -> ConsistencyModelPipeline:
    pipe = ConsistencyModelPipeline.from_pretrained(str(MODEL_DIR))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_bundled_model_layout_and_size():
    index = json.loads((MODEL_DIR / "model_index.json").read_text())
    assert read_parameterization(MODEL_DIR) == "consistency"
    weights = sorted((MODEL_DIR / "unet").glob("*.safetensors"))
    assert len(weights) == 1, "ship exactly one safetensors weights file"
    assert not list(MODEL_DIR.rglob("*.bin")) and not list(MODEL_DIR.rglob("*.pt"))
    total = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"bundled model is {total} bytes, over the 10 MB budget"
    # the tuned 2-step schedule is saved as the pipeline's default
    (tau_index, last), = [index["cmkit_default_timesteps"]["2"]]
    assert last == 0 and tau_index > 0


def test_bundled_model_loads_as_class_conditional_digits():
    pipe = _pipe()
    assert pipe.sample_shape == (1, 8, 8)
    assert pipe.num_classes == 10
    assert "2" in pipe.default_timesteps


def test_bundled_model_one_step_samples_are_the_requested_digits():
    pipe = _pipe()
    labels = balanced_class_labels(100)
    samples = generate_samples(pipe, 100, seed=0, class_labels=labels, num_inference_steps=1)
    assert samples.shape == (100, 1, 8, 8) and torch.isfinite(samples).all()
    assert classifier_accuracy(samples, labels) >= 0.9  # measured 1.00 on this seed


def test_bundled_model_one_step_fd_is_near_the_floor():
    pipe = _pipe()
    labels = balanced_class_labels(360)
    samples = generate_samples(pipe, 360, seed=0, class_labels=labels, num_inference_steps=1)
    floor, _ = fd_digits_floor()
    # measured 1.57x the floor on this seed (10.7 vs 6.85); noise-like samples score tens of times the floor
    assert fd_digits(samples) <= 2.5 * floor
