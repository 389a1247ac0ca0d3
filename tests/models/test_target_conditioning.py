"""TCD's target time ``s`` as a UNet input (``target_conditioning``, :mod:`cmkit.models.target_time`), for
UNet2DModel, SongUNet, DhariwalUNet and EDM2UNet: off changes nothing, a student built from a teacher is exactly the
teacher, a trained target embedding tells targets apart, errors, save / load, and one TCD step that trains it."""

from __future__ import annotations

import json

import pytest
import torch

from cmkit.models.denoiser import Denoiser
from cmkit.models.dhariwal_unet import DhariwalUNet
from cmkit.models.edm2_unet import EDM2UNet
from cmkit.models.song_unet import SongUNet
from cmkit.models.unet import UNet2DModel
from cmkit.streams import StepRandom
from cmkit.training.objectives import build_objective

# network class, tiny constructor arguments (8 x 8, one channel, 3 classes), the target embedding's last layer
NETS = {
    "unet2d": (UNet2DModel, dict(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8, num_class_embeds=3,
    ), "target_embedding.linear_2.weight"),
    "ncsnpp": (SongUNet, dict(
        img_resolution=8, in_channels=1, out_channels=1, label_dim=3, model_channels=16, channel_mult=(1, 2),
        num_blocks=1, attn_resolutions=(4,), embedding_type="fourier", encoder_type="residual", dropout=0.0,
    ), "target_embedding.layer1.weight"),
    "adm": (DhariwalUNet, dict(
        img_resolution=8, in_channels=1, out_channels=1, label_dim=3, model_channels=16, channel_mult=(1, 2),
        num_blocks=1, attn_resolutions=(4,), dropout=0.0,
    ), "target_embedding.layer1.weight"),
    "edm2": (EDM2UNet, dict(
        img_resolution=8, img_channels=1, label_dim=3, model_channels=16, channel_mult=(1, 2), num_blocks=1,
        attn_resolutions=(4,), channels_per_head=8,
    ), "target_embedding.gain"),
}
BATCH = 4


def _build(name, seed=0, **overrides):
    cls, kwargs, _ = NETS[name]
    torch.manual_seed(seed)
    return cls(**{**kwargs, **overrides})


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 1, 8, 8, generator=g)
    sigma = torch.exp(torch.randn(BATCH, generator=g) * 1.2 - 0.4)
    return x, sigma, torch.tensor([0, 2, 1, 0])


def _pair(name):
    teacher = Denoiser(_build(name), "edm").eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a "trained" teacher: the zero-initialised output layers (SongUNet, EDM2's gain) move off 0
        for p in teacher.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    student = Denoiser(_build(name, seed=1, target_conditioning=True), "tcd")
    return teacher, student


def _perturb_(net, name):
    last = net.get_parameter(NETS[name][2])
    with torch.no_grad():
        last.copy_(torch.randn(last.shape, generator=torch.Generator().manual_seed(3)) * 0.5 + 1.0)


@pytest.mark.parametrize("name", NETS)
def test_off_changes_nothing_and_on_only_adds_the_target_embedding_last(name, tmp_path):
    plain, off = _build(name).eval(), _build(name, target_conditioning=False).eval()
    on = _build(name, target_conditioning=True)
    prefixes = type(on).target_embedding_prefixes
    assert list(off.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in off.state_dict().items())
    assert not off.accepts_target_timestep and on.accepts_target_timestep
    # the new tensors come last and under the declared prefix; every other one is drawn exactly as without them
    new = [k for k in on.state_dict() if k not in plain.state_dict()]
    assert new and all(k.startswith(prefixes) for k in new)
    assert list(on.state_dict())[: len(plain.state_dict())] == list(plain.state_dict())
    assert all(torch.equal(on.state_dict()[k], v) for k, v in plain.state_dict().items())
    x, sigma, labels = _inputs()
    with torch.no_grad():
        assert torch.equal(off(x, 250 * sigma.log(), labels, return_dict=False)[0],
                           plain(x, 250 * sigma.log(), labels, return_dict=False)[0])
    off.save_pretrained(tmp_path / "off")
    on.save_pretrained(tmp_path / "on")
    saved_off = json.loads((tmp_path / "off" / "config.json").read_text())
    assert json.loads((tmp_path / "on" / "config.json").read_text())["target_conditioning"] is True
    if name == "unet2d":  # diffusers' config exactly while off
        assert "target_conditioning" not in saved_off
    else:
        assert saved_off["target_conditioning"] is False


@pytest.mark.parametrize("name", NETS)
def test_a_student_built_from_its_teacher_is_exactly_the_teacher_for_any_target(name):
    teacher, student = _pair(name)
    build_objective("tcd", student, teacher)
    student.eval()
    x, sigma, labels = _inputs()
    with torch.no_grad():
        want = teacher(x, sigma, labels)
        for s in (sigma, sigma / 3, torch.full((BATCH,), 0.002), torch.full((BATCH,), 80.0)):
            assert torch.equal(student(x, sigma, labels, s), want)
    assert not student.net.get_parameter(NETS[name][2]).any()  # it starts at zero; the first layer is random


@pytest.mark.parametrize("name", NETS)
def test_a_trained_target_embedding_tells_targets_apart(name):
    teacher, student = _pair(name)
    build_objective("tcd", student, teacher)
    _perturb_(student.net, name)
    student.eval()
    x, sigma, labels = _inputs()
    with torch.no_grad():
        near, far = student(x, sigma, labels, sigma / 2), student(x, sigma, labels, torch.full((BATCH,), 0.01))
        assert not torch.allclose(near, far, atol=1e-5)
        assert not torch.allclose(near, teacher(x, sigma, labels), atol=1e-5)
        # the target reaches the network per sample: changing one sample's target changes only that sample
        moved = student(x, sigma, labels, torch.cat([sigma[:1] / 5, sigma[1:] / 2]))
        assert not torch.allclose(moved[0], near[0], atol=1e-5) and torch.equal(moved[1:], near[1:])


@pytest.mark.parametrize("name", NETS)
def test_a_missing_or_unexpected_target_is_refused(name):
    x, sigma, labels = _inputs()
    timestep = 250 * sigma.log()
    with pytest.raises(ValueError, match="target-conditioned.*pass target_timestep"):
        _build(name, target_conditioning=True)(x, timestep, labels)
    with pytest.raises(ValueError, match="no target embedding; build it with target_conditioning=True"):
        _build(name)(x, timestep, labels, target_timestep=timestep - 100)
    with pytest.raises(ValueError, match="target_conditioning must be one of"):
        _build(name, target_conditioning="yes")


@pytest.mark.parametrize("name", NETS)
def test_save_and_load_keep_the_option_and_the_outputs(name, tmp_path):
    net = _build(name, target_conditioning=True).eval()
    _perturb_(net, name)
    net.save_pretrained(tmp_path)
    back = type(net).from_pretrained(tmp_path).eval()
    assert back.config["target_conditioning"] is True and back.accepts_target_timestep
    x, sigma, labels = _inputs()
    t, s = 250 * sigma.log(), 250 * (sigma / 4).log()
    with torch.no_grad():
        assert torch.equal(back(x, t, labels, target_timestep=s, return_dict=False)[0],
                           net(x, t, labels, target_timestep=s, return_dict=False)[0])


@pytest.mark.parametrize("name", NETS)
def test_one_tcd_step_trains_the_target_embedding(name):
    teacher, student = _pair(name)
    objective = build_objective("tcd", student, teacher, s_sampling="uniform")
    last = f"net.{NETS[name][2]}"
    before = student.state_dict()[last].clone()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    x0 = torch.randn(BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.5
    out = objective(x0, torch.tensor([1, 0, 2, 2]), 0, StepRandom(0, 0, BATCH))
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    assert student.get_parameter(last).grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(student.state_dict()[last], before)


def test_tcd_training_turns_the_option_on_for_a_unet_student():
    from cmkit.training.build import build_data, build_model
    from cmkit.training.config import DataConfig, TrainConfig

    digits = build_data(TrainConfig(data=DataConfig(kind="digits")))
    teacher = Denoiser(_build("unet2d", num_class_embeds=10), "edm").eval()
    student = build_model(TrainConfig(method="tcd", teacher="t"), digits, teacher)
    assert student.net.accepts_target_timestep and student.net.config["target_conditioning"] is True
    released = build_model(
        TrainConfig(method="tcd", teacher="t", model_options={"target_conditioning": False}), digits, teacher
    )
    assert not released.net.accepts_target_timestep
