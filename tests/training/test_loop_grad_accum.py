"""``--grad-accum K``: K micro-batches give the gradient and the update of one batch K times their size (up to float
rounding), bad values of K are refused with the fix, the memory bound counts one micro-batch, and changing K on
resume is allowed. Resume exactness with K > 1 is in test_checkpoint.py; K against processes in test_distributed.py.

Tolerance: 1e-5 of each tensor's largest magnitude. The two computations differ only in float summation order
(a mean of K micro-batch means against one mean), since every sample's data, noise and sigma come from one draw.
"""

import warnings

import pytest
import torch

from cmkit.data import SamplerSource
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.training import build
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.distributed import DistContext
from cmkit.training.loop import Trainer, _check_resumable
from cmkit.training.objectives import build_objective
from builders import HookedObjective, toy_config

RTOL = 1e-5
BATCH = 16


def data():
    from cmkit.data.toys import sample_toy

    return SamplerSource(lambda n, g: sample_toy("8gaussians", n, generator=g), sample_shape=(2,))


def make_objective(method):
    """A fresh objective of ``method`` around an MLP (the same weights every call); CD with a fixed random teacher."""
    def net(seed):
        torch.manual_seed(seed)
        return MLPNet(sample_shape=(2,), width=32, num_blocks=2, embedding_dim=8)

    teacher = Denoiser(net(100), "edm").requires_grad_(False) if method in ("cd", "ect") else None
    options = {"total_steps": 50} if method in ("ct", "ict") else {}
    if method == "cd":
        options = {"num_scales": 10, "target_ema": 0.9, "init_from_teacher": False}
    if method == "ect":
        options = {"init_from_teacher": False}
    return build_objective(method, Denoiser(net(0), "edm" if method == "edm" else "consistency"), teacher, **options)


class Recording(HookedObjective):
    """``inner``, calling ``record(x0, rng)`` first on every call."""

    def __init__(self, inner, record):
        super().__init__(inner, at=None, hook=None)
        self.record = record

    def __call__(self, x0, class_labels, step, rng):
        self.record(x0, rng)
        return self.inner(x0, class_labels, step, rng)


def step_with_gradients(trainer, step):
    """Run ``trainer.step(step)``; returns the loss, the gradients the optimizer used and the weights after it."""
    grads = {}
    optimizer_step = trainer.optimizer.step

    def capture(*args, **kwargs):
        grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()})
        return optimizer_step(*args, **kwargs)

    trainer.optimizer.step = capture
    loss, _, metrics = trainer.step(step)
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return loss, grads, weights, metrics


def assert_close(a, b, what):
    assert a.keys() == b.keys()
    for name, x in a.items():
        scale = x.abs().max().item()
        assert scale > 0, f"{what} {name} is zero: the comparison would prove nothing"
        assert torch.allclose(x, b[name], rtol=0, atol=RTOL * scale), (what, name, (x - b[name]).abs().max().item())


@pytest.mark.parametrize("method", ["ict", "cd", "ct", "edm"])
def test_micro_batches_give_the_gradient_of_one_batch(tmp_path, method):
    runs = {}
    for k in (1, 4):
        cfg = toy_config(tmp_path, method=method, teacher="unused-by-Trainer" if method == "cd" else None,
                         batch_size=BATCH, grad_accum=k, grad_clip=None, lr=1e-2, output_dir=str(tmp_path / f"k{k}"))
        trainer = Trainer(cfg, make_objective(method), data())
        runs[k] = [step_with_gradients(trainer, step) for step in (0, 1, 2)], trainer
    (one, trainer_one), (four, trainer_four) = runs[1], runs[4]
    for step, ((loss1, grads1, weights1, metrics1), (loss4, grads4, weights4, metrics4)) in enumerate(zip(one, four)):
        assert loss4 == pytest.approx(loss1, rel=RTOL), step  # the logged loss is the whole batch's mean
        assert metrics4["loss"] == pytest.approx(metrics1["loss"], rel=RTOL)
        assert_close(grads1, grads4, f"step {step} gradient")
        assert_close(weights1, weights4, f"step {step} weights")
    if method == "cd":  # the target network follows the same weights
        targets = [t.objective.state_dict()["target"] for t in (trainer_one, trainer_four)]
        assert_close(*targets, "target")


def test_micro_batches_draw_the_noise_of_the_unsplit_batch(tmp_path):
    """Each micro-batch's StepRandom is its own slice of the global draw: the noises of K parts concatenate to one."""
    seen = {}
    for k in (1, 4):
        draws = []

        def record(x0, rng, draws=draws):
            draws.append((x0.clone(), rng.randn(2)))

        objective = Recording(make_objective("ict"), record)
        cfg = toy_config(tmp_path, method="ict", batch_size=BATCH, grad_accum=k, output_dir=str(tmp_path / f"k{k}"))
        Trainer(cfg, objective, data()).step(3)
        assert len(draws) == k and all(x.shape[0] == BATCH // k for x, _ in draws)
        seen[k] = [torch.cat(parts) for parts in zip(*draws)]
    assert torch.equal(seen[1][0], seen[4][0])  # the same samples in the same order
    assert torch.equal(seen[1][1], seen[4][1])  # and the same noise for each


@pytest.mark.parametrize(
    "value, message",
    [
        (0, r"grad_accum must be an integer >= 1 \(micro-batches per step"),
        (-2, r"grad_accum must be an integer >= 1"),
        (1.5, r"grad_accum must be an integer >= 1"),
        (True, r"grad_accum must be an integer >= 1"),
        ("2", r"grad_accum must be an integer >= 1"),
        (3, r"grad_accum 3 must divide batch_size 16 .*choose a divisor"),
    ],
)
def test_bad_grad_accum_is_refused(tmp_path, value, message):
    with pytest.raises(ValueError, match=message):
        toy_config(tmp_path, batch_size=16, grad_accum=value)


def test_grad_accum_must_divide_each_process_batch(tmp_path):
    cfg = toy_config(tmp_path, batch_size=12, grad_accum=4)  # 12 / 4 is fine for one process ...
    with pytest.raises(ValueError, match=r"grad_accum 4 must divide the batch of each process \(6 = batch_size 12 / 2"):
        Trainer(cfg, make_objective("edm"), data(), DistContext(rank=0, world_size=2))  # ... but not for 2 processes


def test_integral_float_grad_accum_from_json_becomes_an_int(tmp_path):
    assert toy_config(tmp_path, grad_accum=2.0).grad_accum == 2


def test_memory_bound_counts_one_micro_batch(tmp_path, monkeypatch):
    net = MLPNet(sample_shape=(2,), width=16, num_blocks=1)
    asked = []
    monkeypatch.setattr("cmkit.limits.require_memory", lambda nbytes, what, fix, _: asked.append((nbytes, what, fix)))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for k in (1, 8):
        cfg = TrainConfig(data=DataConfig(kind="toy", toy="moons"), model="mlp", batch_size=64, grad_accum=k)
        build.require_training_fits(cfg, data(), net)
    (bytes1, what1, fix), (bytes8, what8, _) = asked
    assert "a batch of 64 samples" in what1 and "a batch of 8 samples" in what8 and "raise --grad-accum" in fix
    params = sum(p.numel() for p in net.parameters())
    per_sample = int(net.activation_floats((2,)))  # floats the MLP keeps per sample for backward
    assert bytes1 - bytes8 == 4 * (64 - 8) * per_sample and bytes8 > 4 * params


def test_grad_accum_may_change_on_resume(tmp_path):
    saved = toy_config(tmp_path, batch_size=16, grad_accum=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "result differs" warning either: only rounding changes
        _check_resumable(saved, saved.replace(grad_accum=4))
    with pytest.raises(ValueError, match="batch_size differ"):  # unlike the global batch
        _check_resumable(saved, saved.replace(batch_size=32))
