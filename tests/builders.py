"""Small builders shared by several test modules (imported as ``from builders import ...``; pytest puts tests/
on the path)."""

import json
import os

import numpy as np
import pytest
import torch

from cmkit import CMStochasticIterativeScheduler, ConsistencyModelPipeline
from cmkit.models.mlp import MLPNet
from cmkit.training.config import DataConfig, TrainConfig


def make_mlp_pipe(sample_shape=(2,), num_class_embeds=None, seed=0):
    """An in-memory pipeline around a tiny MLP (no clamping), progress bar off."""
    torch.manual_seed(seed)
    net = MLPNet(sample_shape=sample_shape, width=16, num_blocks=1, embedding_dim=8, num_class_embeds=num_class_embeds)
    pipe = ConsistencyModelPipeline(net.eval(), CMStochasticIterativeScheduler(num_train_timesteps=40, clip_denoised=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline_dir(path, sample_shape, num_classes=None, parameterization=None):
    """A saved tiny MLP pipeline at ``path`` (optionally marked with a ``cmkit_parameterization``)."""
    torch.manual_seed(0)
    net = MLPNet(sample_shape=sample_shape, width=32, num_blocks=1, num_class_embeds=num_classes)
    ConsistencyModelPipeline(net, CMStochasticIterativeScheduler(num_train_timesteps=8)).save_pretrained(path)
    if parameterization:
        index = json.loads((path / "model_index.json").read_text())
        index["cmkit_parameterization"] = parameterization
        (path / "model_index.json").write_text(json.dumps(index))
    return path


def toy_config(tmp_path, **kw):
    """A 6-step EDM run on 8-Gaussians with an MLP, checkpoints every 2 steps; ``kw`` overrides fields."""
    base = dict(
        method="edm", data=DataConfig(kind="toy", toy="8gaussians"), model="mlp", steps=6, batch_size=16, lr=1e-3,
        output_dir=str(tmp_path / "run"), save_every=2, progress=False, num_samples=16, ema_rates=(0.9, 0.99),
    )
    base.update(kw)
    return TrainConfig(**base)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of two feature sets by scipy's ``sqrtm``, as a reference."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


class HookedObjective:
    """An objective that calls ``hook(step)`` before step ``at`` (to crash, raise a signal, ...), else delegates."""

    def __init__(self, inner, at, hook):
        self.inner, self.model, self.at, self.hook = inner, inner.model, at, hook

    def __call__(self, x0, class_labels, step, rng):
        if step == self.at:
            self.hook(step)
        return self.inner(x0, class_labels, step, rng)

    def after_optimizer_step(self, step):
        self.inner.after_optimizer_step(step)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def torchrun_env():
    """The environment for a ``torchrun`` child: this checkout's ``src`` and ``tests`` first on the path, one intra-op
    thread per process (the workers share the cores), and none of the rendezvous variables of an enclosing job."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    paths = [str(root / "src"), str(root / "tests")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(paths))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    return env
