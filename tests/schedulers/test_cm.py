"""CMStochasticIterativeScheduler: bitwise parity with diffusers 0.42 (the oracle), round trips, errors."""

import json
import random
import warnings

import pytest
import torch

from cmkit.karras import consistency_scalings, karras_sigmas
from cmkit.sampling import sample_consistency
from cmkit.schedulers.base import SchedulerOutput
from cmkit.schedulers.cm import CMStochasticIterativeScheduler

diffusers = pytest.importorskip("diffusers")
DCM = diffusers.CMStochasticIterativeScheduler

CONFIGS = [
    {},  # CD: N = 40
    {"num_train_timesteps": 201},  # CT ImageNet-64
    {"num_train_timesteps": 151, "clip_denoised": False},  # CT LSUN
    {"num_train_timesteps": 2},
    {"num_train_timesteps": 17, "sigma_min": 0.01, "sigma_max": 50.0, "rho": 5.0, "sigma_data": 0.7, "s_noise": 1.007},
]


def pair(**kw):
    return CMStochasticIterativeScheduler(**kw), DCM(**kw)


def assert_same_schedule(ours, theirs):
    for name in ("sigmas", "timesteps"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert a.dtype == b.dtype and a.device == b.device, name
        assert torch.equal(a, b), name


def fake_unet(x, t):
    """A deterministic stand-in for the network F(c_in x, t), nonlinear in both inputs."""
    return torch.tanh(1.3 * x + 0.001 * float(t)) - 0.1 * x


def run_loop(scheduler, x, generator, dtype=None):
    out = []
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(fake_unet(model_in, t), t, x, generator=generator).prev_sample
        out.append(x)
    return out


@pytest.mark.parametrize("kw", CONFIGS)
def test_grids_match_diffusers_bitwise(kw):
    ours, theirs = pair(**kw)
    assert_same_schedule(ours, theirs)
    assert ours.init_noise_sigma == theirs.init_noise_sigma and len(ours) == len(theirs)
    n_train = ours.config.num_train_timesteps
    for n in range(1, n_train + 1):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert_same_schedule(ours, theirs)


@pytest.mark.parametrize(
    "n_train,timesteps",
    [(40, [22, 0]), (40, [17, 0]), (40, [18, 0]), (40, [39, 0]), (40, [0]), (40, [39, 20, 7, 0]),
     (201, [106, 0]), (151, [67, 0]), (151, [62, 0]), (201, [200, 150, 3])],
)
def test_custom_timesteps_match_diffusers(n_train, timesteps):
    ours, theirs = pair(num_train_timesteps=n_train)
    ours.set_timesteps(timesteps=timesteps)
    theirs.set_timesteps(timesteps=timesteps)
    assert_same_schedule(ours, theirs)
    assert ours.custom_timesteps and ours.num_inference_steps == len(timesteps)


def test_random_descending_timesteps_match_diffusers():
    rng = random.Random(0)
    for _ in range(30):
        n_train = rng.choice([40, 151, 201, 7])
        ts = sorted(rng.sample(range(n_train), rng.randint(1, min(6, n_train))), reverse=True)
        ours, theirs = pair(num_train_timesteps=n_train)
        ours.set_timesteps(timesteps=torch.tensor(ts))  # tensors are accepted too
        theirs.set_timesteps(timesteps=ts)
        assert_same_schedule(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kw", CONFIGS[:3] + CONFIGS[4:])
def test_sampling_loop_bitwise_equal(dtype, kw):
    n_train = kw.get("num_train_timesteps", 40)
    schedules = [{"num_inference_steps": 1}, {"num_inference_steps": 3}, {"timesteps": [n_train // 2, 0]}]
    for seed, sched in zip((0, 1, 2), schedules):
        ours, theirs = pair(**kw)
        ours.set_timesteps(**sched)
        theirs.set_timesteps(**sched)
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed)).to(dtype) * ours.init_noise_sigma
        a = run_loop(ours, x, torch.Generator().manual_seed(seed + 10))
        b = run_loop(theirs, x, torch.Generator().manual_seed(seed + 10))
        for xa, xb in zip(a, b):
            assert xa.dtype == xb.dtype == dtype
            assert torch.equal(xa, xb), (kw, sched, dtype)


def test_generator_lists_and_tuple_output_match_diffusers():
    ours, theirs = pair(num_train_timesteps=201)
    ours.set_timesteps(timesteps=[106, 0])
    theirs.set_timesteps(timesteps=[106, 0])
    x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(4)) * 80
    gens = lambda: [torch.Generator().manual_seed(s) for s in (7, 8, 9)]  # noqa: E731
    ga, gb = gens(), gens()
    xa = xb = x
    for t in ours.timesteps:
        xa = ours.step(fake_unet(ours.scale_model_input(xa, t), t), t, xa, generator=ga, return_dict=False)
        assert isinstance(xa, tuple) and len(xa) == 1
        xa = xa[0]
        xb = theirs.step(fake_unet(theirs.scale_model_input(xb, t), t), t, xb, generator=gb).prev_sample
    assert torch.equal(xa, xb)
    # every generator of the list advanced exactly as in diffusers
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ga, gb))


def test_step_output_holds_only_the_result():
    s = CMStochasticIterativeScheduler()
    s.set_timesteps(1)
    t = s.timesteps[0]
    x = torch.randn(2, 1, 3, 3) * 80
    out = s.step(fake_unet(s.scale_model_input(x, t), t), t, x)
    assert out.keys() == list(out) == ["prev_sample"] and len(out) == 1
    assert out[0] is out["prev_sample"] is out.prev_sample and out.to_tuple() == (out.prev_sample,)
    # step bookkeeping belongs to the scheduler; a pasted copy on the output raised AttributeError when called
    methods = {n for n, v in vars(SchedulerOutput).items() if callable(v) and not n.startswith("__")}
    assert methods == {"to_tuple", "keys"}
    assert not hasattr(out, "_current_step_index")


def test_one_step_draws_no_noise_and_multistep_draws_every_step():
    for n, draws in ((1, 0), (2, 2)):
        s = CMStochasticIterativeScheduler()
        s.set_timesteps(n)
        g = torch.Generator().manual_seed(0)
        run_loop(s, torch.randn(1, 2, 3, 3) * 80, g)
        ref = torch.Generator().manual_seed(0)
        for _ in range(draws):
            torch.randn(1, 2, 3, 3, generator=ref)
        assert torch.equal(g.get_state(), ref.get_state())


def test_step_accepts_float_timestep_forms():
    base = CMStochasticIterativeScheduler()
    base.set_timesteps(timesteps=[22, 0])
    x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * 80
    ref = run_loop(base, x, torch.Generator().manual_seed(1))[-1]
    for convert in (lambda t: t.item(), lambda t: t.float(), lambda t: t):
        s = CMStochasticIterativeScheduler()
        s.set_timesteps(timesteps=[22, 0])
        g = torch.Generator().manual_seed(1)
        y = x
        for t in s.timesteps:
            tt = convert(t)
            y = s.step(fake_unet(s.scale_model_input(y, tt), t), tt, y, generator=g).prev_sample
        assert torch.equal(y, ref)


def test_scheduler_loop_equals_pure_sampler():
    """One implementation of the step math: the scheduler loop and cmkit.sampling agree."""
    s = CMStochasticIterativeScheduler(clip_denoised=True)
    s.set_timesteps(timesteps=[22, 0])
    sigmas = s.sigmas[:-1].double()

    def consistency_fn(x, sigma, class_labels=None):
        sig = sigma[0].float()
        c_skip, c_out = consistency_scalings(sig)
        return c_skip * x + c_out * fake_unet(x / (sig**2 + 0.25) ** 0.5, 0.0)

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 80
    pure = sample_consistency(consistency_fn, x, sigmas, torch.Generator().manual_seed(5), clip_denoised=True)
    g = torch.Generator().manual_seed(5)
    y = x
    for t in s.timesteps:
        y = s.step(fake_unet(s.scale_model_input(y, t), 0.0), t, y, generator=g).prev_sample
    assert torch.allclose(pure, y, atol=1e-5)


def test_scheduler_step_is_the_shared_consistency_step(monkeypatch):
    """The scheduler adapts model outputs to cmkit.sampling.consistency_step instead of re-writing Algorithm 1."""
    import cmkit.schedulers.cm as cm
    from cmkit.sampling import consistency_step

    seen = []

    def spy(denoised, sigma_next, z=None, **kwargs):
        seen.append((float(sigma_next), kwargs))
        return consistency_step(denoised, sigma_next, z, **kwargs)

    monkeypatch.setattr(cm, "consistency_step", spy)
    s = CMStochasticIterativeScheduler(clip_denoised=True)
    s.set_timesteps(timesteps=[22, 0])
    x = torch.randn(1, 3, 4, 4) * 80
    for t in s.timesteps:
        x = s.step(fake_unet(s.scale_model_input(x, t), 0.0), t, x, generator=torch.Generator().manual_seed(0))[0]
    assert [sigma for sigma, _ in seen] == pytest.approx([float(s.sigmas[1]), 0.002])
    assert all(kw == {"sigma_min": 0.002, "clip_denoised": True} for _, kw in seen)


def test_helpers_match_diffusers():
    ours, theirs = pair(num_train_timesteps=40, sigma_data=0.6)
    sig = torch.tensor([0.002, 0.3, 5.0, 80.0])
    for a, b in zip(ours.get_scalings_for_boundary_condition(sig), theirs.get_scalings_for_boundary_condition(sig)):
        assert torch.equal(a, b)
    for a, b in zip(ours.get_scalings(sig), theirs.get_scalings(sig)):
        assert torch.equal(a, b)
    assert (ours.sigma_to_t(sig.double().numpy()) == theirs.sigma_to_t(sig.double().numpy())).all()
    assert ours.sigma_to_t(3.0) == theirs.sigma_to_t(3.0)
    assert ours.order == theirs.order == 1


def test_add_noise_matches_diffusers():
    ours, theirs = pair(num_train_timesteps=40)
    x = torch.randn(3, 2, 4, 4)
    noise = torch.randn(3, 2, 4, 4)
    t = theirs.timesteps[[0, 5, 39]]  # before set_timesteps: the full training grid (training use)
    assert torch.equal(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t))
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    t = theirs.timesteps[[1, 1, 3]]
    assert torch.equal(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t))
    ours.set_begin_index(2)
    theirs.set_begin_index(2)
    assert ours.begin_index == 2
    assert torch.equal(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t))


def test_step_index_bookkeeping():
    s = CMStochasticIterativeScheduler()
    s.set_timesteps(3)
    assert s.step_index is None and s.begin_index is None
    x = torch.zeros(1, 1, 2, 2)
    s.set_begin_index(1)
    s.step(torch.zeros_like(x), s.timesteps[1], s.scale_model_input(x, s.timesteps[1]))
    assert s.step_index == 2
    s.set_timesteps(3)
    assert s.step_index is None and s.begin_index is None


def test_save_load_round_trips_with_diffusers(tmp_path):
    ours = CMStochasticIterativeScheduler(num_train_timesteps=201, s_noise=1.003, clip_denoised=False)
    path = ours.save_pretrained(tmp_path / "ours")
    assert path.name == "scheduler_config.json"
    data = json.loads(path.read_text())
    assert data["_class_name"] == "CMStochasticIterativeScheduler"
    theirs = DCM.from_pretrained(tmp_path / "ours")
    for k, v in ours.config.items():
        assert theirs.config[k] == v, k
    theirs.save_pretrained(tmp_path / "pipe" / "scheduler")
    back = CMStochasticIterativeScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler")
    assert dict(back.config) == dict(ours.config)
    assert dict(CMStochasticIterativeScheduler.from_pretrained(tmp_path / "pipe").config) == dict(ours.config)
    assert CMStochasticIterativeScheduler.from_pretrained(tmp_path / "ours", rho=5.0).config.rho == 5.0
    assert dict(CMStochasticIterativeScheduler.from_config(theirs.config).config) == dict(ours.config)
    back.set_timesteps(timesteps=[106, 0])
    theirs.set_timesteps(timesteps=[106, 0])
    assert_same_schedule(back, theirs)


def test_missing_config_and_offline_hub_id_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        CMStochasticIterativeScheduler.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing directory"):
        CMStochasticIterativeScheduler.from_pretrained(str(tmp_path / "a" / "b" / "c"))


def test_set_timesteps_errors():
    s = CMStochasticIterativeScheduler()
    with pytest.raises(ValueError, match="exactly one.*neither"):
        s.set_timesteps()
    with pytest.raises(ValueError, match="exactly one.*both"):
        s.set_timesteps(2, timesteps=[22, 0])
    with pytest.raises(ValueError, match="strictly descending"):
        s.set_timesteps(timesteps=[0, 22])
    with pytest.raises(ValueError, match="strictly descending"):
        s.set_timesteps(timesteps=[22, 22, 0])
    with pytest.raises(ValueError, match=r"\[0, 39\]"):
        s.set_timesteps(timesteps=[40, 0])
    with pytest.raises(ValueError, match=r"\[0, 39\]"):
        s.set_timesteps(timesteps=[5, -1])
    with pytest.raises(ValueError, match="integer grid indices"):
        s.set_timesteps(timesteps=[22.5, 0])
    with pytest.raises(ValueError, match="empty"):
        s.set_timesteps(timesteps=[])
    for bad in (0, 41, -3, 2.5):
        with pytest.raises(ValueError, match=r"\[1, 40\]"):
            s.set_timesteps(bad)


def test_step_errors():
    s = CMStochasticIterativeScheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="before step"):
        s.step(x, s.timesteps[0], x)
    s.set_timesteps(2)
    for bad in (0, 3, torch.tensor(1), torch.tensor(1, dtype=torch.int32)):
        with pytest.raises(ValueError, match="integer timestep"):
            s.step(x, bad, x)
    with pytest.raises(ValueError, match="not in this scheduler's timesteps"):
        s.scale_model_input(x, 12.5)
    with pytest.warns(UserWarning, match="scale_model_input"):
        s.step(x, s.timesteps[0], x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.step(x, s.timesteps[1], s.scale_model_input(x, s.timesteps[1]))
    with pytest.raises(ValueError, match="stepped through"):
        s.step(x, s.timesteps[1], x)
    with pytest.raises(ValueError, match="non-negative integer"):
        s.set_begin_index(-1)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_train_timesteps"):
        CMStochasticIterativeScheduler(num_train_timesteps=1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        CMStochasticIterativeScheduler(sigma_min=90.0)
    with pytest.raises(ValueError, match="positive"):
        CMStochasticIterativeScheduler(sigma_data=0.0)
    with pytest.raises(ValueError, match="s_noise"):
        CMStochasticIterativeScheduler(s_noise=-1.0)


def test_grid_agrees_with_core_karras():
    s = CMStochasticIterativeScheduler(num_train_timesteps=40)
    assert torch.allclose(s.sigmas, karras_sigmas(40), rtol=1e-14, atol=0)


def test_top_level_exports():
    import cmkit
    from cmkit.schedulers.tcd import TCDScheduler

    assert cmkit.CMStochasticIterativeScheduler is CMStochasticIterativeScheduler
    assert cmkit.TCDScheduler is TCDScheduler
