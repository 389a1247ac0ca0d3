"""TCDScheduler and the beta schedules: parity with diffusers 0.42 (the oracle), round trips, errors,
and the two deliberate differences (x0 clipping/thresholding, zero-SNR epsilon prediction)."""

import json

import numpy as np
import pytest
import torch

from cmkit.schedulers import betas as B
from cmkit.schedulers.tcd import MIN_ALPHA_PROD, TCDScheduler, threshold_sample

diffusers = pytest.importorskip("diffusers")
DTCD = diffusers.TCDScheduler
pytestmark = pytest.mark.filterwarnings("ignore:.*(custom timesteps|zero SNR|distillation).*")

CONFIGS = [
    {},
    {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
    {"prediction_type": "sample", "set_alpha_to_one": False},
    {"prediction_type": "v_prediction", "beta_schedule": "linear"},
    {"num_train_timesteps": 500, "original_inference_steps": 25, "steps_offset": 1, "timestep_spacing": "trailing"},
    {"trained_betas": np.linspace(2e-4, 0.03, 1000).tolist()},
]
SCHEDULES = [
    {"num_inference_steps": 1},
    {"num_inference_steps": 4},
    {"num_inference_steps": 8, "strength": 0.5},
    {"num_inference_steps": 3, "original_inference_steps": 20},
    {"timesteps": [499, 259, 99]},
    {"timesteps": [400, 300, 10], "strength": 0.7},
]


def pair(**kw):
    return TCDScheduler(**kw), DTCD(**kw)


@pytest.mark.parametrize("kw", CONFIGS)
def test_tables_match_diffusers(kw):
    ours, theirs = pair(**kw)
    for name in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod", "timesteps"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert ours.init_noise_sigma == theirs.init_noise_sigma and len(ours) == len(theirs)


def test_timesteps_match_diffusers_for_many_settings():
    ours, theirs = pair()
    for n in range(1, 51):
        for kw in ({}, {"original_inference_steps": 50}, {"original_inference_steps": 100}, {"strength": 0.8}):
            if n > 40 and "strength" in kw:
                continue
            ours.set_timesteps(n, **kw)
            theirs.set_timesteps(n, **kw)
            assert torch.equal(ours.timesteps, theirs.timesteps), (n, kw)
            assert ours.num_inference_steps == theirs.num_inference_steps


@pytest.mark.parametrize("kw", CONFIGS)
def test_sampling_matches_diffusers_bitwise(kw):
    ours, theirs = pair(**kw)
    n_train = ours.config.num_train_timesteps
    for k, sched in enumerate(SCHEDULES):
        if "timesteps" in sched and max(sched["timesteps"]) >= n_train:
            continue
        for dtype, eta in ((torch.float32, 0.3), (torch.bfloat16, 1.0), (torch.float16, 0.0), (torch.float32, 0.75)):
            ours.set_timesteps(**sched)
            theirs.set_timesteps(**sched)
            assert torch.equal(ours.timesteps, theirs.timesteps)
            ga, gb = torch.Generator().manual_seed(k), torch.Generator().manual_seed(k)
            x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(9)).to(dtype)
            xa = xb = x
            for t in theirs.timesteps:
                out = torch.sin(0.7 * xb + float(t) / 500)
                a = ours.step(out, t, xa, eta=eta, generator=ga)
                b = theirs.step(out, t, xb, eta=eta, generator=gb)
                assert torch.equal(a.prev_sample, b.prev_sample), (kw, sched, dtype, eta, int(t))
                assert torch.equal(a.pred_noised_sample, b.pred_noised_sample)
                xa, xb = a.prev_sample, b.prev_sample


def test_generator_list_tuple_output_and_int_timesteps():
    ours, theirs = pair()
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    ga, gb = gens(), gens()
    xa = xb = torch.randn(2, 4, 4, 4)
    for t in theirs.timesteps:
        out = torch.cos(xb)
        prev, noised = ours.step(out, int(t), xa, generator=ga, return_dict=False)
        b = theirs.step(out, t, xb, generator=gb)
        assert torch.equal(prev, b.prev_sample) and torch.equal(noised, b.pred_noised_sample)
        xa, xb = prev, b.prev_sample
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ga, gb))


def test_add_noise_velocity_previous_timestep_match_diffusers():
    for kw in ({}, {"beta_schedule": "squaredcos_cap_v2"}):
        ours, theirs = pair(**kw)
        x, n = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
        t = torch.tensor([0, 500, 999])
        for dtype in (torch.float32, torch.float16):
            xd, nd = x.to(dtype), n.to(dtype)
            assert torch.equal(ours.add_noise(xd, nd, t), theirs.add_noise(xd, nd, t))
        assert torch.equal(ours.get_velocity(x, n, t), theirs.get_velocity(x, n, t))
        assert ours.previous_timestep(10) == theirs.previous_timestep(10)
        ours.set_timesteps(4)
        theirs.set_timesteps(4)
        for t in theirs.timesteps:
            assert ours.previous_timestep(t) == theirs.previous_timestep(t)


def test_beta_functions_match_diffusers():
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr

    for n in (10, 1000):
        assert torch.equal(B.cosine_betas(n), betas_for_alpha_bar(n))
        lin = B.linear_betas(1e-4, 0.02, n)
        assert torch.equal(B.rescale_zero_terminal_snr(lin), rescale_zero_terminal_snr(lin))
    zs = B.alphas_cumprod(B.rescale_zero_terminal_snr(B.scaled_linear_betas(0.00085, 0.012, 1000)))
    assert zs[-1] == 0 and zs[0] > 0.99  # Lin et al.: zero terminal SNR, first step unchanged


def test_zero_snr_epsilon_regression():
    """diffusers divides by alpha_bar_T = 0 at the first step; we stay finite and warn at construction."""
    kw = {"rescale_betas_zero_snr": True}
    with pytest.warns(UserWarning, match="zero SNR"):
        ours = TCDScheduler(**kw)
    theirs = DTCD(**kw)
    for s in (ours, theirs):
        s.set_timesteps(4)
    assert int(ours.timesteps[0]) == 999 and ours.alphas_cumprod[999] == 0
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = x + 0.01 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = ours.timesteps[0]
    bad = theirs.step(eps, t, x, generator=torch.Generator().manual_seed(2)).prev_sample
    assert not torch.isfinite(bad).all()  # the bug we work around
    good = ours.step(eps, t, x, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(good.prev_sample).all() and torch.isfinite(good.pred_noised_sample).all()
    x0 = (x - eps) / MIN_ALPHA_PROD**0.5  # the x0 implied by the documented stand-in for alpha_bar_T
    a_s = ours.alphas_cumprod[int((1 - 0.3) * int(ours.timesteps[1]))]
    assert torch.allclose(good.pred_noised_sample, a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps, rtol=1e-5, atol=1e-5)
    # later steps (alpha_bar_t > 0) are untouched: bitwise equal to diffusers
    xa = good.prev_sample
    for t in ours.timesteps[1:]:
        a = ours.step(torch.cos(xa), t, xa, eta=0.0).prev_sample
        b = theirs.step(torch.cos(xa), t, xa, eta=0.0).prev_sample
        assert torch.equal(a, b)
        xa = a


def test_clip_sample_applies_to_predicted_x0():
    s = TCDScheduler(prediction_type="sample", clip_sample=True, clip_sample_range=0.5)
    s.set_timesteps(2)
    x = torch.zeros(1, 1, 4, 4)
    x0 = torch.linspace(-2, 2, 16).reshape(1, 1, 4, 4)
    out = s.step(x0, s.timesteps[0], x, eta=0.0).pred_noised_sample
    t, t_s = int(s.timesteps[0]), int(s.timesteps[1])
    a_t, a_s = s.alphas_cumprod[t], s.alphas_cumprod[int(np.floor(1.0 * t_s))]
    eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # epsilon from the unclipped prediction (as DDIM)
    expected = a_s.sqrt() * x0.clamp(-0.5, 0.5) + (1 - a_s).sqrt() * eps
    assert torch.allclose(out, expected, atol=1e-6)
    unclipped = TCDScheduler(prediction_type="sample")
    unclipped.set_timesteps(2)
    assert not torch.allclose(unclipped.step(x0, unclipped.timesteps[0], x, eta=0.0).pred_noised_sample, out)


def test_thresholding_is_imagen_dynamic_thresholding():
    ddpm = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    scale = torch.tensor([0.5, 1.3, 3.0])[:, None, None, None]
    x0 = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(0)) * scale
    for dtype in (torch.float32, torch.bfloat16):
        ours = threshold_sample(x0.to(dtype), 0.9, 1.5)
        assert ours.dtype == dtype
        assert torch.equal(ours, ddpm._threshold_sample(x0.to(dtype)))
    inside = x0[:1].clamp(-1, 1)
    assert torch.equal(threshold_sample(inside, 0.9, 1.5), inside)  # s is at least 1: [-1, 1] is left alone
    s = TCDScheduler(prediction_type="sample", thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    s.set_timesteps(1)  # one step from t = 999 to s = 0
    x = torch.randn_like(x0)
    got = s.step(x0, 999, x).pred_noised_sample
    a_t, a_s = s.alphas_cumprod[999], s.alphas_cumprod[0]
    eps = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5  # epsilon from the raw prediction (as DDIM)
    want = a_s.sqrt() * threshold_sample(x0, 0.9, 1.5) + (1 - a_s).sqrt() * eps
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps, atol=1e-3)


def test_save_load_round_trips_with_diffusers(tmp_path):
    ours = TCDScheduler(beta_schedule="linear", prediction_type="v_prediction", trained_betas=None, steps_offset=1)
    data = json.loads(ours.save_pretrained(tmp_path / "ours").read_text())
    assert data["_class_name"] == "TCDScheduler" and data["beta_schedule"] == "linear"
    theirs = DTCD.from_pretrained(tmp_path / "ours")
    for k, v in ours.config.items():
        assert theirs.config[k] == v, k
    theirs.save_pretrained(tmp_path / "theirs")
    back = TCDScheduler.from_pretrained(tmp_path / "theirs")
    assert dict(back.config) == dict(ours.config)
    # trained betas (a numpy array) survive the JSON round trip in both directions
    tb = np.linspace(1e-4, 0.02, 1000)
    TCDScheduler(trained_betas=tb).save_pretrained(tmp_path / "tb")
    assert torch.equal(DTCD.from_pretrained(tmp_path / "tb").betas, TCDScheduler(trained_betas=tb).betas)
    # the common "swap the scheduler" idiom: TCDScheduler.from_config(other_scheduler.config)
    euler = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", steps_offset=1, use_karras_sigmas=True)
    euler_cfg = euler.config
    with pytest.warns(UserWarning, match="ignores unknown config keys: use_karras_sigmas$"):
        swapped = TCDScheduler.from_config(euler_cfg)
    assert swapped.config.steps_offset == 1 and torch.equal(swapped.betas, DTCD.from_config(euler_cfg).betas)


def test_set_timesteps_errors():
    s = TCDScheduler()
    with pytest.raises(ValueError, match="exactly one.*neither"):
        s.set_timesteps()
    with pytest.raises(ValueError, match="exactly one.*both"):
        s.set_timesteps(4, timesteps=[999, 0])
    with pytest.raises(ValueError, match="strictly descending"):
        s.set_timesteps(timesteps=[0, 999])
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        s.set_timesteps(timesteps=[1000, 0])
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        s.set_timesteps(timesteps=[999, -1])
    with pytest.raises(ValueError, match="integers"):
        s.set_timesteps(timesteps=[999.5, 0])
    with pytest.raises(ValueError, match="empty"):
        s.set_timesteps(timesteps=[])
    with pytest.raises(ValueError, match="keeps none"):
        s.set_timesteps(timesteps=[999, 499], strength=0.4)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1"):
            s.set_timesteps(bad)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        s.set_timesteps(1001)
    with pytest.raises(ValueError, match="original_inference_steps=50"):
        s.set_timesteps(51)
    with pytest.raises(ValueError, match="strength"):
        s.set_timesteps(4, strength=0.01)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"strength must lie in \(0, 1\]"):
            s.set_timesteps(4, strength=bad)
    with pytest.raises(ValueError, match="original_inference_steps"):
        TCDScheduler(num_train_timesteps=10).set_timesteps(2)
    with pytest.warns(UserWarning, match="not on the distillation schedule"):
        s.set_timesteps(timesteps=[999, 500])


def test_step_errors():
    s = TCDScheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999, x)
    s.set_timesteps(2)
    for eta in (-0.1, 1.01):
        with pytest.raises(ValueError, match=r"eta.*\[0, 1\]"):
            s.step(x, s.timesteps[0], x, eta=eta)
    assert s.step_index is None  # a rejected call leaves the state alone
    with pytest.raises(ValueError, match="integers"):
        s.step(x, 999.5, x)
    with pytest.raises(ValueError, match="not in this scheduler's timesteps"):
        s.step(x, 998, x)
    s.step(x, float(s.timesteps[0]), x)  # an integral float is accepted
    s.step(x, s.timesteps[1], x)
    with pytest.raises(ValueError, match="stepped through"):
        s.step(x, s.timesteps[1], x)


def test_constructor_errors():
    with pytest.raises(ValueError, match="beta_schedule"):
        TCDScheduler(beta_schedule="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prediction_type"):
        TCDScheduler(prediction_type="eps")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timestep_spacing"):
        TCDScheduler(timestep_spacing="even")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trained_betas"):
        TCDScheduler(trained_betas=[0.1, 0.2])
    with pytest.raises(ValueError, match="trained_betas"):
        TCDScheduler(num_train_timesteps=2, trained_betas=[0.1, 1.2])
    with pytest.raises(ValueError, match="dynamic_thresholding_ratio"):
        TCDScheduler(dynamic_thresholding_ratio=0.0)
    with pytest.raises(ValueError, match="positive"):
        TCDScheduler(clip_sample_range=0.0)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        TCDScheduler(num_train_timesteps=0)
    with pytest.raises(ValueError, match="original_inference_steps"):
        TCDScheduler(original_inference_steps=0)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_target_timestep_is_the_s_that_step_jumps_to(eta):
    """``target_timestep(t, eta)`` names the s of ``step``'s ``pred_noised_sample = sqrt(a_s) x0 + sqrt(1 - a_s) eps``."""
    scheduler = TCDScheduler(prediction_type="sample")
    scheduler.set_timesteps(4)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    seen = []
    for t in scheduler.timesteps:
        s = scheduler.target_timestep(t, eta)
        x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(int(t)))
        a_t, a_s = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[s]
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        out = scheduler.step(x0, t, x, eta=eta, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out.pred_noised_sample, a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps)
        seen.append(int(s))
        x = out.prev_sample
    prev = [*scheduler.timesteps[1:].tolist(), 0]
    assert seen == [int((1 - eta) * p) for p in prev]
    with pytest.raises(ValueError, match="eta"):
        scheduler.target_timestep(scheduler.timesteps[0], 1.5)
