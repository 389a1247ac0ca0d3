"""SCMScheduler: parity with diffusers 0.42's SCMScheduler (the oracle), config round trips, errors."""

import json
import math

import pytest
import torch

from cmkit import SCMScheduler
from cmkit.registry import component_entry, resolve_component_class

diffusers = pytest.importorskip("diffusers")
DSCM = diffusers.SCMScheduler

# (set_timesteps kwargs for cmkit, the same for diffusers with its explicit None rules)
SCHEDULES = [
    ({"num_inference_steps": 2}, {"num_inference_steps": 2}),
    ({"num_inference_steps": 2, "intermediate_timesteps": 1.1}, {"num_inference_steps": 2, "intermediate_timesteps": 1.1}),
    ({"num_inference_steps": 2, "max_timesteps": 1.56454}, {"num_inference_steps": 2, "max_timesteps": 1.56454}),
    ({"num_inference_steps": 1}, {"num_inference_steps": 1, "intermediate_timesteps": None}),
    ({"num_inference_steps": 4}, {"num_inference_steps": 4, "intermediate_timesteps": None}),
    ({"num_inference_steps": 7, "max_timesteps": 1.5}, {"num_inference_steps": 7, "max_timesteps": 1.5, "intermediate_timesteps": None}),
    (
        {"num_inference_steps": 3, "timesteps": [1.5708, 1.2, 0.6, 0.0]},
        {"num_inference_steps": 3, "timesteps": [1.5708, 1.2, 0.6, 0.0], "max_timesteps": None, "intermediate_timesteps": None},
    ),
]


@pytest.mark.parametrize("ours_kw,theirs_kw", SCHEDULES)
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_timesteps_and_steps_match_diffusers_bit_for_bit(ours_kw, theirs_kw, sigma_data):
    ours, theirs = SCMScheduler(sigma_data=sigma_data), DSCM(sigma_data=sigma_data)
    ours.set_timesteps(**ours_kw)
    theirs.set_timesteps(**theirs_kw)
    assert ours.timesteps.dtype == theirs.timesteps.dtype and torch.equal(ours.timesteps, theirs.timesteps)
    x = torch.randn(2, 3, 4, 4) * sigma_data
    x_ours, x_theirs = x.clone(), x.clone()
    g_ours, g_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for t in ours.timesteps[:-1]:
        out = torch.tanh(x_ours) * 0.7  # any model output, the same for both
        a = ours.step(out, t, x_ours, generator=g_ours)
        b = theirs.step(out, t, x_theirs, generator=g_theirs)
        assert torch.equal(a.prev_sample, b.prev_sample) and torch.equal(a.pred_original_sample, b.pred_original_sample)
        x_ours, x_theirs = a.prev_sample, b.prev_sample
    assert torch.equal(g_ours.get_state(), g_theirs.get_state())  # the same number of draws


def test_step_tuple_and_last_step_returns_x0_exactly():
    s = SCMScheduler()
    s.set_timesteps(1)
    x, out = torch.randn(2, 3), torch.randn(2, 3)
    prev, x0 = s.step(out, s.timesteps[0], x, return_dict=False)
    torch.testing.assert_close(x0, torch.cos(s.timesteps[0]) * x - torch.sin(s.timesteps[0]) * out)
    assert torch.equal(prev, x0)  # t = 0: cos 0 x0 + sin 0 z = x0


def test_config_round_trips_both_ways(tmp_path):
    ours = SCMScheduler(num_train_timesteps=50, sigma_data=0.7)
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "SCMScheduler"
    theirs = DSCM.from_pretrained(tmp_path / "ours")
    assert {k: theirs.config[k] for k in ("num_train_timesteps", "prediction_type", "sigma_data")} == {
        "num_train_timesteps": 50, "prediction_type": "trigflow", "sigma_data": 0.7}
    DSCM(num_train_timesteps=30, sigma_data=0.25).save_pretrained(tmp_path / "theirs")
    back = SCMScheduler.from_pretrained(tmp_path / "theirs")
    assert (back.config.num_train_timesteps, back.config.sigma_data, back.init_noise_sigma) == (30, 0.25, 0.25)


def test_registry_names_it_as_diffusers_does():
    assert component_entry(SCMScheduler()) == ("diffusers", "SCMScheduler")
    assert resolve_component_class("diffusers", "SCMScheduler") is SCMScheduler


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"num_inference_steps": 3, "intermediate_timesteps": 1.1}, "2 steps only"),
        ({"num_inference_steps": 2, "timesteps": [1.5, 0.0]}, "num_inference_steps \\+ 1 = 3"),
        ({"num_inference_steps": 2, "timesteps": [1.2, 1.3, 0.0]}, "strictly descending"),
        ({"num_inference_steps": 1, "timesteps": [2.0, 0.0]}, "in \\[0, 1.5708\\]"),
        ({"num_inference_steps": 1, "timesteps": [1.5, 0.0], "max_timesteps": 1.5}, "not both"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 2, "intermediate_timesteps": float("nan")}, "finite"),
    ],
)
def test_bad_schedules_name_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        SCMScheduler().set_timesteps(**kw)


def test_bad_config_and_misuse_raise():
    with pytest.raises(ValueError, match="prediction_type"):
        SCMScheduler(prediction_type="epsilon")
    s = SCMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(torch.zeros(1), 1.5708, torch.zeros(1))
    s.set_timesteps(1)
    s.step(torch.zeros(1), s.timesteps[0], torch.zeros(1))
    with pytest.raises(ValueError, match="timesteps\\[:-1\\]|set_timesteps again"):
        s.step(torch.zeros(1), s.timesteps[0], torch.zeros(1))


def test_per_sample_timestep_and_scale_model_input():
    s = SCMScheduler(sigma_data=0.5)
    s.set_timesteps(2)
    x = torch.randn(3, 2)
    assert torch.equal(s.scale_model_input(x, s.timesteps[0]), x / 0.5)
    out = s.step(torch.zeros(3, 2), s.timesteps[0].expand(3), x, generator=torch.Generator().manual_seed(0))
    assert s.step_index == 1 and math.isfinite(float(out.prev_sample.sum()))
