"""``--resume`` continues exactly: after a crash, the final weights are bit-identical to an uninterrupted run (CPU)."""

import pytest
import torch

from cmkit.data import SamplerSource
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.training import checkpoint as ckpt
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.loop import Trainer
from cmkit.training.objectives.cd import CDObjective, CDOptions
from cmkit.training.objectives.edm import EDMObjective
from cmkit.io.weights import load_state_dict


class Crash(Exception):
    pass


class CrashAt:
    """Wraps an objective and raises :class:`Crash` at step ``at`` (a killed process, as far as the loop knows)."""

    def __init__(self, inner, at):
        self.inner, self.model, self.at = inner, inner.model, at

    def __call__(self, x0, class_labels, step, rng):
        if step == self.at:
            raise Crash(step)
        return self.inner(x0, class_labels, step, rng)

    def after_optimizer_step(self, step):
        self.inner.after_optimizer_step(step)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def data():
    from cmkit.data.toys import sample_toy

    return SamplerSource(lambda n, g: sample_toy("moons", n, generator=g), sample_shape=(2,))


def net(seed, dropout=0.0):
    torch.manual_seed(seed)
    return MLPNet(sample_shape=(2,), width=16, num_blocks=2, embedding_dim=8, dropout=dropout)


def make_edm(seed):
    return EDMObjective(Denoiser(net(seed, dropout=0.2), "edm"))


def make_cd(seed):
    teacher = Denoiser(net(100), "edm")  # the same (random) teacher in every run
    student = Denoiser(net(seed), "consistency")
    return CDObjective(student, teacher, CDOptions(num_scales=10, target_ema=0.9, init_from_teacher=False))


@pytest.mark.parametrize(
    "make, extra",
    [
        (make_edm, dict(method="edm", lr_schedule="cosine", warmup_steps=3, precision="fp32")),
        (make_cd, dict(method="cd", teacher="unused-by-Trainer", optimizer="adam", grad_clip=0.05)),
    ],
    ids=["edm-dropout-cosine", "cd-target-ema-clip"],
)
def test_resume_is_bit_identical(tmp_path, make, extra):
    def config(name):
        return TrainConfig(
            data=DataConfig(kind="toy", toy="moons"), model="mlp", steps=7, batch_size=8, lr=3e-3,
            output_dir=str(tmp_path / name), save_every=3, progress=False, num_samples=8,
            ema_rates=(0.5, 0.9), **extra,
        )

    full = Trainer(config("full"), make(0), data())
    full.run()

    crashed = Trainer(config("crashed"), CrashAt(make(0), at=4), data())
    with pytest.raises(Crash):
        crashed.run()
    assert ckpt.latest_checkpoint(tmp_path / "crashed").name == "step-00000003"

    resumed = Trainer(config("crashed"), make(seed=123), data())  # different init: everything must come from disk
    assert resumed.resume() and resumed.start_step == 3
    resumed.run()

    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for rate_key, avg in full.ema.state_dict().items():
        for name, value in avg.items():
            assert torch.equal(value, resumed.ema.state_dict()[rate_key][name]), (rate_key, name)
    assert full.losses == resumed.losses
    exported = [load_state_dict(tmp_path / d / "unet/diffusion_pytorch_model.safetensors") for d in ("full", "crashed")]
    assert exported[0].keys() == exported[1].keys()
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])
    # and the run really depended on the restored state: the fresh init alone gives other weights
    assert not torch.equal(make(seed=123).model.state_dict()["net.output.weight"], full.model.state_dict()["net.output.weight"])
