"""The training loop: schedules, EMA, config round trip, data batches, a tiny run's outputs, non-finite stops."""

import json
import math

import pytest
import torch

from cmkit.data import SamplerSource
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.training import checkpoint as ckpt
from cmkit.training.build import load_denoiser
from cmkit.training.config import TrainConfig
from cmkit.training.loop import NonFiniteLossError, Trainer, learning_rate
from cmkit.training.objectives.base import ObjectiveOutput
from cmkit.training.objectives.edm import EDMObjective
from builders import toy_config


def toy_data():
    from cmkit.data.toys import sample_toy

    return SamplerSource(lambda n, g: sample_toy("8gaussians", n, generator=g), sample_shape=(2,))


def tiny_denoiser(parameterization="edm", seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return Denoiser(MLPNet(sample_shape=(2,), width=16, num_blocks=1, embedding_dim=8, dropout=dropout), parameterization)


# ----- schedules and EMA ---------------------------------------------------------------------------------------
def test_learning_rate_warmup_and_cosine(tmp_path):
    cfg = toy_config(tmp_path, steps=110, lr=1.0, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)  # (0 + 1) / 10 of the way up
    assert learning_rate(cfg, 9) == pytest.approx(1.0)
    assert learning_rate(cfg, 60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: 0.55
    assert learning_rate(cfg, 110) == pytest.approx(0.1)
    const = toy_config(tmp_path, lr=0.5)
    assert [learning_rate(const, k) for k in (0, 3, 5)] == [0.5, 0.5, 0.5]


def test_learning_rate_inverse_sqrt_is_edm2s_decay(tmp_path):
    # ECT's ECM-XL: alpha_ref 7e-4, t_ref 2000 steps, no warm-up, 100k steps: constant, then 7e-4 sqrt(2000 / k).
    ect = toy_config(tmp_path, steps=100_000, lr=7e-4, lr_schedule="inverse_sqrt", lr_decay_steps=2000)
    expected = {0: 7e-4, 1999: 7e-4, 2000: 7e-4, 8000: 3.5e-4, 18_000: 7e-4 / 3, 100_000: 7e-4 / 50**0.5}
    for step, lr in expected.items():
        assert learning_rate(ect, step) == pytest.approx(lr, rel=1e-12), step
    assert learning_rate(ect, 100_000) == pytest.approx(0.1414 * 7e-4, rel=1e-3)  # the recipe README's final lr
    # with a warm-up (EDM2 multiplies the two): (k + 1) / 10 up to step 9, times sqrt(t_ref / k) past t_ref = 4
    warm = toy_config(tmp_path, steps=50, lr=1.0, warmup_steps=10, lr_schedule="inverse_sqrt", lr_decay_steps=4)
    assert [learning_rate(warm, k) for k in (0, 3, 4, 8, 16)] == pytest.approx([0.1, 0.4, 0.5, 0.9 / 2**0.5, 0.5])


# ----- config ----------------------------------------------------------------------------------------------------


# ----- deterministic batches -----------------------------------------------------------------------------------


# ----- a tiny run ----------------------------------------------------------------------------------------------
def test_tiny_run_outputs(tmp_path):
    cfg = toy_config(tmp_path, steps=5, save_every=2, sample_every=4, export_ema_rate=0.99)
    out = Trainer(cfg, EDMObjective(tiny_denoiser()), toy_data()).run()
    for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json", "train_config.json", "training_info.json", "loss.png",
                 "samples/step-00000004.png", "samples/step-00000005.png", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000004", "step-00000005"]  # keep 2
    info = json.loads((out / "training_info.json").read_text())
    assert info["exported_weights"] == "ema_0.99" and info["parameterization"] == "edm"
    assert TrainConfig.from_json(out / "train_config.json") == cfg
    # the exported network is the EMA 0.99 of the last checkpoint, with EDM preconditioning recorded
    loaded = load_denoiser(out)
    assert loaded.parameterization == "edm"
    last = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, last.ema["ema_0.99"][k]), k
    assert not torch.equal(last.ema["ema_0.99"]["net.output.weight"], last.model["net.output.weight"])
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5]  # log_every=10, plus the last step


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    cfg = toy_config(tmp_path, steps=3, save_every=0, precision=precision)
    trainer = Trainer(cfg, EDMObjective(tiny_denoiser()), toy_data())
    if precision == "fp16":
        assert trainer.scaler is not None
    out = trainer.run()
    assert all(math.isfinite(v) for v in trainer.losses) and len(trainer.losses) == 3
    assert next(trainer.model.parameters()).dtype == torch.float32  # master weights stay fp32
    assert (out / "unet/diffusion_pytorch_model.safetensors").is_file()


class NaNAt:
    """An EDM objective whose loss turns NaN from step ``bad`` on."""

    def __init__(self, model, bad):
        self.inner, self.model, self.bad = EDMObjective(model), model, bad

    def __call__(self, x0, class_labels, step, rng):
        out = self.inner(x0, class_labels, step, rng)
        return ObjectiveOutput(out.loss * float("nan"), {}) if step >= self.bad else out

    def after_optimizer_step(self, step):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = toy_config(tmp_path, steps=10, save_every=2)
    trainer = Trainer(cfg, NaNAt(tiny_denoiser(), bad=5), toy_data())
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 6.*last good checkpoint is .*step-00000004"):
        trainer.run()
    out = tmp_path / "run"
    assert ckpt.latest_checkpoint(out).name == "step-00000004"
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    assert all(torch.isfinite(v).all() for v in saved.model.values())
    assert len(saved.state["losses"]) == 4
    assert not (out / "model_index.json").exists()  # nothing exported from a failed run
    assert (out / "loss.png").is_file()


def test_checkpoint_pointer_falls_back_and_ignores_partial(tmp_path):
    out = tmp_path / "run"
    w = {"a": torch.ones(2)}
    ckpt.save_checkpoint(out, 1, w, {}, {"x": 1}, keep=0)
    ckpt.save_checkpoint(out, 2, w, {}, {"x": 2}, keep=0)
    (out / "checkpoints" / ".tmp-step-00000003-1").mkdir()  # a crash mid-write leaves only a temp dir
    (out / "checkpoints" / "latest.json").write_text("{broken")
    assert ckpt.latest_checkpoint(out).name == "step-00000002"
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(out)).state["x"] == 2


def test_optimizer_takes_the_configured_epsilon():
    from cmkit.training.loop import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    for optimizer in ("adam", "radam"):
        opt = make_optimizer(TrainConfig(optimizer=optimizer, betas=(0.9, 0.99), adam_eps=1e-11), params)
        assert opt.param_groups[0]["eps"] == 1e-11 and opt.param_groups[0]["betas"] == (0.9, 0.99)
    for bad in (0, -1e-8, 1.5, "1e-8", True):
        with pytest.raises(ValueError, match="adam_eps"):
            TrainConfig(adam_eps=bad)
