"""The training loop: schedules, EMA, config round trip, data batches, a tiny run's outputs, non-finite stops."""

import json
import math

import pytest
import torch

from cmkit.data import SamplerSource, TensorSource
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.training import checkpoint as ckpt
from cmkit.training.build import load_denoiser
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.ema import EMA, ema_decay
from cmkit.training.loop import NonFiniteLossError, Trainer, learning_rate
from cmkit.training.objectives.base import ObjectiveOutput
from cmkit.training.objectives.edm import EDMObjective


def toy_config(tmp_path, **kw):
    base = dict(
        method="edm", data=DataConfig(kind="toy", toy="8gaussians"), model="mlp", steps=6, batch_size=16, lr=1e-3,
        output_dir=str(tmp_path / "run"), save_every=2, progress=False, num_samples=16, ema_rates=(0.9, 0.99),
    )
    base.update(kw)
    return TrainConfig(**base)


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


# ----- config ----------------------------------------------------------------------------------------------------
def test_config_json_round_trip(tmp_path):
    cfg = toy_config(tmp_path, objective_options={"num_scales": 18}, betas=(0.9, 0.99), tau=0.8)
    path = cfg.to_json(tmp_path / "c.json")
    again = TrainConfig.from_json(path)
    assert again == cfg
    assert json.loads(path.read_text())["data"] == {
        "kind": "toy", "toy": "8gaussians", "path": None, "resolution": None, "resize": "crop", "flip": False,
        "channels": None, "class_labels": None,
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"precision": "fp8"}, "precision must be one of 'fp32', 'bf16', 'fp16'"),
        ({"method": "gan"}, "method must be one of"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"ema_rates": (1.2,)}, r"EMA rates must lie in \[0, 1\)"),
        ({"ema_rates": ()}, "export='ema' needs at least one EMA rate"),
        ({"export_ema_rate": 0.5}, "not one of ema_rates"),
        ({"method": "cd"}, "pass the teacher's directory"),
        ({"lr": 0.0}, "lr must be positive"),
    ],
)
def test_config_errors(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        toy_config(tmp_path, **changes)


def test_config_unknown_key_and_data_spec(tmp_path):
    d = toy_config(tmp_path).to_dict()
    d["learning_rate"] = 1
    with pytest.raises(ValueError, match="unknown key.*learning_rate"):
        TrainConfig.from_dict(d)
    assert DataConfig.parse("toy:moons") == DataConfig(kind="toy", toy="moons")
    assert DataConfig.parse("folder:/x/y", resolution=32).path == "/x/y"
    assert DataConfig.parse("digits").spec() == "digits"
    with pytest.raises(ValueError, match="cannot read the data spec"):
        DataConfig.parse("imagenet")


# ----- deterministic batches -----------------------------------------------------------------------------------
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
