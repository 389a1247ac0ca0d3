"""TCD (Zheng et al. 2024): the grid and s-sampling, the boundary, the student as the teacher at the start, one step,
resume, the exported pipeline (TCDScheduler, loadable by diffusers) and sampling with eta."""

from __future__ import annotations

import json

import pytest
import torch

from cmkit import ConsistencyModelPipeline
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.streams import StepRandom
from cmkit.training.objectives import build_objective
from cmkit.training.objectives.tcd import TCDOptions, distillation_grid
from cmkit.vp import trajectory_consistency
from builders import toy_config

TINY = {"width": 16, "num_blocks": 1, "embedding_dim": 8}


def _pair(seed=0, target_conditioning=True):
    torch.manual_seed(seed)
    teacher = Denoiser(MLPNet(sample_shape=(2,), **TINY), "edm")
    student = Denoiser(MLPNet(sample_shape=(2,), target_conditioning=target_conditioning, **TINY), "tcd")
    return teacher, student


def test_distillation_grid_is_the_tcd_scheduler_schedule_with_zero_below():
    from cmkit.schedulers.tcd import TCDScheduler

    grid = distillation_grid(1000, 50)
    assert grid[0] == 0 and grid[1] == 19 and grid[-1] == 999 and len(grid) == 51
    scheduler = TCDScheduler(original_inference_steps=50)
    scheduler.set_timesteps(50)
    assert sorted(scheduler.timesteps.tolist()) == grid[1:].tolist()


@pytest.mark.parametrize("s_sampling", ["grid", "uniform"])
@pytest.mark.parametrize("skip", [1, 3])
def test_drawn_times_respect_the_skip_and_s_never_passes_t_lo(s_sampling, skip):
    teacher, student = _pair()
    objective = build_objective("tcd", student, teacher, skip=skip, s_sampling=s_sampling)
    grid = set(distillation_grid(1000, 50).tolist())
    for step in range(20):
        t_hi, t_lo, s = objective.draw_times(StepRandom(0, step, 64))
        # k grid points apart; the grid's first point 19 steps to timestep 0 below it
        assert bool(((t_hi - t_lo == 20 * skip) | ((t_lo == 0) & (t_hi == 20 * skip - 1))).all())
        assert bool((s <= t_lo).all() and (s >= 0).all() and (t_hi > t_lo).all())
        assert set(t_hi.tolist()) <= grid and set(t_lo.tolist()) <= grid
        if s_sampling == "grid":
            assert set(s.tolist()) <= grid
    s_all = torch.cat([objective.draw_times(StepRandom(0, k, 256))[2] for k in range(20)])
    if s_sampling == "uniform":  # off-grid targets, as strategic stochastic sampling with gamma > 0 asks
        assert not set(s_all.tolist()) <= grid
    assert (s_all == 0).any()  # the data end is trained


def test_student_starts_as_the_teacher_and_the_target_embedding_starts_at_zero():
    teacher, student = _pair()
    build_objective("tcd", student, teacher)
    x, sigma = torch.randn(8, 2), torch.rand(8) * 10 + 0.01
    with torch.no_grad():
        for s in (sigma, sigma / 3, torch.full((8,), 0.01)):
            assert torch.equal(student(x, sigma, None, s), teacher(x, sigma))
    assert all((p == 0).all() for p in student.net.target_mlp[2].parameters())


def test_loss_at_the_boundary_compares_with_the_teachers_step_itself():
    """Where s = t_{n-k} the target is f(x_lo, s, s) = x_lo, the teacher's DDIM step: the student learns it exactly."""
    teacher, student = _pair()
    objective = build_objective("tcd", student, teacher, target_ema=0.0)
    x_lo, sigma = torch.randn(4, 2), torch.full((4,), 0.4)
    with torch.no_grad():
        assert torch.equal(trajectory_consistency(x_lo, objective.model(x_lo, sigma, None, sigma), sigma, sigma), x_lo)


def test_one_step_is_finite_moves_the_student_and_the_target_follows_by_ema():
    teacher, student = _pair()
    objective = build_objective("tcd", student, teacher)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    x0 = torch.randn(32, 2) * 0.5
    out = objective(x0, None, 0, StepRandom(0, 0, 32))
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    assert student.net.target_mlp[2].weight.grad.abs().sum() > 0  # the network learns where it maps to
    optimizer.step()
    objective.after_optimizer_step(0)
    moved = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert "net.target_mlp.2.weight" in moved and "net.output.weight" in moved
    target = objective.target.state_dict()
    for k, v in student.state_dict().items():  # theta^- = 0.95 theta^-_old + 0.05 theta
        torch.testing.assert_close(target[k], 0.95 * before[k] + 0.05 * v)


def test_an_unconditioned_network_trains_in_the_released_tcd_form():
    teacher, student = _pair(target_conditioning=False)
    objective = build_objective("tcd", student, teacher, solver="heun")
    out = objective(torch.randn(16, 2), None, 0, StepRandom(0, 0, 16))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "options, message",
    [({"skip": 0}, "skip"), ({"skip": 51}, "skip"), ({"solver": "euler"}, "solver"), ({"s_sampling": "x"}, "s_sampling"),
     ({"target_ema": 1.0}, "target_ema"), ({"original_inference_steps": 2000}, "original_inference_steps")],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TCDOptions(**options)


def test_tcd_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        build_objective("tcd", _pair()[1])


@pytest.fixture(scope="module")
def tcd_run(tmp_path_factory):
    """A 2-step EDM teacher and a 4-step TCD student trained from it (the loop, the export)."""
    from cmkit.training.loop import train

    tmp = tmp_path_factory.mktemp("tcd")
    train(toy_config(tmp, steps=2, batch_size=8, save_every=2, model_options=TINY, output_dir=str(tmp / "teacher"),
                     device="cpu"))  # fmt: skip
    train(toy_config(tmp, method="tcd", teacher=str(tmp / "teacher"), steps=4, batch_size=8, save_every=2,
                     output_dir=str(tmp / "tcd"), device="cpu"))  # fmt: skip
    return tmp


def test_resume_is_exact(tcd_run, tmp_path):
    from cmkit.training import checkpoint as ckpt
    from cmkit.training.loop import train

    config = toy_config(tmp_path, method="tcd", teacher=str(tcd_run / "teacher"), steps=4, batch_size=8, save_every=2,
                        output_dir=str(tmp_path / "resumed"), device="cpu")  # fmt: skip
    train(config.replace(steps=2))
    train(config, resume=True)
    whole = ckpt.load_checkpoint(ckpt.latest_checkpoint(tcd_run / "tcd"))
    resumed = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "resumed"))
    for name, value in whole.model.items():
        assert torch.equal(resumed.model[name], value), name


def test_export_is_a_tcd_pipeline_that_diffusers_reads(tcd_run):
    index = json.loads((tcd_run / "tcd" / "model_index.json").read_text())
    assert index["cmkit_parameterization"] == "tcd" and index["scheduler"] == ["diffusers", "TCDScheduler"]
    assert index["cmkit_sigma_data"] == 0.5
    pipe = ConsistencyModelPipeline.from_pretrained(tcd_run / "tcd")
    assert pipe.parameterization == "tcd" and pipe.model.accepts_target_timestep
    config = pipe.scheduler.config
    assert (config.prediction_type, config.beta_schedule, config.original_inference_steps) == ("sample", "linear", 50)
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.TCDScheduler.from_pretrained(tcd_run / "tcd", subfolder="scheduler")
    assert torch.equal(theirs.alphas_cumprod, pipe.scheduler.alphas_cumprod)


def _sample(pipe, eta, seed=0, steps=4, **kw):
    g = torch.Generator().manual_seed(seed)
    return pipe(batch_size=6, num_inference_steps=steps, eta=eta, generator=g, output_type="pt", **kw).images


def test_sampling_with_eta_steps_and_custom_timesteps(tcd_run):
    pipe = ConsistencyModelPipeline.from_pretrained(tcd_run / "tcd")
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(6, 2, generator=torch.Generator().manual_seed(5))
    # gamma = 0 is deterministic given the latents; gamma > 0 re-noises from the generator
    assert torch.equal(_sample(pipe, 0.0, 1, latents=latents), _sample(pipe, 0.0, 2, latents=latents))
    assert not torch.equal(_sample(pipe, 0.5, 1, latents=latents), _sample(pipe, 0.5, 2, latents=latents))
    assert torch.equal(_sample(pipe, 0.3), _sample(pipe, None))  # TCD's default gamma
    for steps in (1, 2, 8):
        assert torch.isfinite(_sample(pipe, 0.3, steps=steps)).all()
    custom = pipe(batch_size=3, timesteps=[999, 499, 19], eta=0.3, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images  # fmt: skip
    assert custom.shape == (3, 2) and torch.isfinite(custom).all()


def test_the_network_is_told_the_step_target(tcd_run):
    """Each network call gets s = floor((1 - gamma) t_prev), the time TCDScheduler.step then jumps to."""
    pipe = ConsistencyModelPipeline.from_pretrained(tcd_run / "tcd")
    pipe.set_progress_bar_config(disable=True)
    seen = []
    forward = pipe.unet.forward

    def spy(*args, target_timestep=None, **kwargs):
        seen.append(target_timestep)
        return forward(*args, target_timestep=target_timestep, **kwargs)

    pipe.unet.forward = spy
    _sample(pipe, 0.5, steps=2)
    sigmas = pipe.scheduler.alphas_cumprod.double()
    expected_s = [int((1 - 0.5) * 499), 0]  # 2 steps: 999 -> 499 -> end at 0
    got_sigma = [float(torch.exp(v[0].double() / 250)) for v in seen]
    want_sigma = [float(((1 - sigmas[s]) / sigmas[s]).sqrt()) for s in expected_s]
    assert pipe.scheduler.timesteps.tolist() == [999, 499]
    assert got_sigma == pytest.approx(want_sigma, rel=1e-5)


def test_eta_errors(tcd_run):
    pipe = ConsistencyModelPipeline.from_pretrained(tcd_run / "tcd")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _sample(pipe, 1.5)
    teacher_like = ConsistencyModelPipeline.from_pretrained(tcd_run / "teacher")
    teacher_like.parameterization = "consistency"
    with pytest.raises(ValueError, match="TCDScheduler"):
        _sample(teacher_like, 0.3, steps=1)


def test_a_tcd_pipeline_needs_an_x0_tcd_scheduler(tcd_run):
    from cmkit import CMStochasticIterativeScheduler

    pipe = ConsistencyModelPipeline.from_pretrained(tcd_run / "tcd")
    pipe.scheduler = CMStochasticIterativeScheduler()
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        _sample(pipe, None)


def test_cli_trains_and_samples_with_eta(tcd_run, tmp_path, capsys):
    from cmkit.cli import main

    out = tmp_path / "points.npy"
    assert main(["sample", "--model", str(tcd_run / "tcd"), "--steps", "4", "--eta", "0.3", "--batch-size", "8",
                 "--out", str(out)]) == 0  # fmt: skip
    import numpy as np

    assert np.load(out).shape == (8, 2)


def _image_tcd_pipeline(seed=1):
    from cmkit import TCDScheduler

    torch.manual_seed(seed)
    net = MLPNet(sample_shape=(1, 8, 8), target_conditioning=True, **TINY).eval()
    torch.nn.init.normal_(net.target_mlp[2].weight, std=0.5)  # a target embedding that matters
    pipe = ConsistencyModelPipeline(net, TCDScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                                      prediction_type="sample"))  # fmt: skip
    pipe.parameterization, pipe.sigma_data = "tcd", 0.5
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_save_load_round_trip_keeps_the_tcd_view(tmp_path):
    pipe = _image_tcd_pipeline()
    pipe.save_pretrained(tmp_path / "p")
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert (loaded.parameterization, loaded.sigma_data) == ("tcd", 0.5)
    assert torch.equal(_sample(pipe, 0.3, steps=2), _sample(loaded, 0.3, steps=2))


def test_editing_uses_the_denoiser_mapped_to_the_data_end():
    pipe = _image_tcd_pipeline()
    image = torch.rand(2, 1, 8, 8)
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1
    out = pipe.inpaint(image, mask, num_inference_steps=2, generator=torch.Generator().manual_seed(2),
                       output_type="pt").images  # fmt: skip
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out[..., :4], image[..., :4], atol=1e-6, rtol=0)  # known pixels kept
    f = pipe.consistency_function()
    sigma_floor = float(((1 - pipe.scheduler.alphas_cumprod[0]) / pipe.scheduler.alphas_cumprod[0]).sqrt())
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 3.0)
    with torch.no_grad():
        want = Denoiser(pipe.unet, "tcd", sigma_data=0.5)(x, sigma, None, torch.full((2,), sigma_floor))
        torch.testing.assert_close(f(x, sigma), want)
        assert not torch.allclose(f(x, sigma), Denoiser(pipe.unet, "tcd", sigma_data=0.5)(x, sigma, None, sigma))


def test_eval_cli_takes_eta(tcd_run, tmp_path, capsys):
    from cmkit.cli import main

    swd = {}
    for eta in ("0", "1"):
        out = tmp_path / f"eta{eta}.json"
        assert main(["eval", "--model", str(tcd_run / "tcd"), "--toy", "8gaussians", "--steps", "2", "--eta", eta,
                     "--num-samples", "300", "--draws", "1", "--json", str(out)]) == 0  # fmt: skip
        swd[eta] = json.loads(out.read_text())["results"][0]["mean"]
    capsys.readouterr()
    assert swd["0"] != swd["1"]  # gamma reaches the sampler


def test_tune_timesteps_refuses_a_tcd_model_with_what_to_do(tcd_run, capsys):
    from cmkit.cli import main

    assert main(["tune-timesteps", "--model", str(tcd_run / "tcd"), "--toy", "8gaussians"]) == 1
    assert "TCD model" in capsys.readouterr().err
