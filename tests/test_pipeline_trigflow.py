"""ConsistencyModelPipeline on a TrigFlow (sCM) model: saved and loaded, 1 / 2 / custom steps, editing."""

import json
import math

import pytest
import torch

from cmkit import ConsistencyModelPipeline, SCMScheduler
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.trigflow import trigflow_consistency


def _pipe(sample_shape=(2,), sigma_data=0.5, seed=0):
    torch.manual_seed(seed)
    net = MLPNet(sample_shape=sample_shape, width=16, num_blocks=1, embedding_dim=8).eval()
    pipe = ConsistencyModelPipeline(net, SCMScheduler(sigma_data=sigma_data))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def saved(tmp_path):
    _pipe(sigma_data=0.7).save_pretrained(tmp_path / "scm")
    pipe = ConsistencyModelPipeline.from_pretrained(tmp_path / "scm")
    pipe.set_progress_bar_config(disable=True)
    return tmp_path / "scm", pipe


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_saved_pipeline_records_trigflow_and_reloads_it(saved):
    path, pipe = saved
    index = json.loads((path / "model_index.json").read_text())
    assert index["cmkit_parameterization"] == "trigflow" and index["scheduler"] == ["diffusers", "SCMScheduler"]
    assert pipe.parameterization == "trigflow" and isinstance(pipe.scheduler, SCMScheduler)
    assert pipe.scheduler.config.sigma_data == 0.7


def test_one_step_sample_is_the_consistency_function_of_sigma_d_z_at_t_max(saved):
    _, pipe = saved
    out = pipe(batch_size=5, num_inference_steps=1, generator=gen(3), output_type="pt").images
    z = torch.randn(5, 2, generator=gen(3))
    x = 0.7 * z
    t = torch.tensor(1.57080)  # diffusers' t_max (float32), about pi/2
    with torch.no_grad():
        F = pipe.unet(x / 0.7, 1000 * t, return_dict=False)[0]
    assert torch.equal(out, trigflow_consistency(x, t, F, 0.7))


def test_two_steps_default_to_the_papers_intermediate_time_and_custom_steps_work(saved):
    _, pipe = saved
    two = pipe(batch_size=4, num_inference_steps=2, generator=gen(1), output_type="pt").images
    assert torch.equal(pipe.scheduler.timesteps, torch.tensor([1.5708, 1.1, 0.0]))
    custom = pipe(batch_size=4, num_inference_steps=None, timesteps=[1.5708, 1.1], generator=gen(1), output_type="pt").images
    assert torch.equal(two, custom)
    three = pipe(batch_size=4, num_inference_steps=None, timesteps=[1.5, 1.0, 0.4], generator=gen(1), output_type="pt").images
    assert torch.equal(pipe.scheduler.timesteps, torch.tensor([1.5, 1.0, 0.4, 0.0]))
    assert three.shape == (4, 2) and not torch.equal(three, two)
    # by hand: 2 steps = f at t_max, re-noise to 1.1 with sigma_d z, f at 1.1
    g = gen(1)
    x = 0.7 * torch.randn(4, 2, generator=g)
    with torch.no_grad():
        for s, t_next in ((1.5708, 1.1), (1.1, 0.0)):
            s_t = torch.tensor(s)
            x0 = trigflow_consistency(x, s_t, pipe.unet(x / 0.7, 1000 * s_t, return_dict=False)[0], 0.7)
            z = torch.randn(4, 2, generator=g)
            x = math.cos(torch.tensor(t_next).item()) * x0 + math.sin(torch.tensor(t_next).item()) * 0.7 * z
    torch.testing.assert_close(two, x)


def test_many_steps_and_a_scheduler_mismatch(saved, tmp_path):
    _, pipe = saved
    assert pipe(batch_size=2, num_inference_steps=4, generator=gen(0), output_type="pt").images.shape == (2, 2)
    from builders import tiny_pipeline_dir

    wrong = ConsistencyModelPipeline.from_pretrained(tiny_pipeline_dir(tmp_path / "cm", (2,), parameterization="trigflow"))
    wrong.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="SCMScheduler"):
        wrong(batch_size=1, output_type="pt")


def test_editing_runs_through_the_sigma_space_trigflow_view():
    pipe = _pipe(sample_shape=(1, 8, 8), seed=1)
    image = torch.rand(2, 1, 8, 8)
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1
    out = pipe.inpaint(image, mask, num_inference_steps=2, generator=gen(2), output_type="pt").images
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out[..., :4], image[..., :4], atol=1e-6, rtol=0)  # known pixels kept
    # the editor's consistency function is the TrigFlow Denoiser
    f = pipe.consistency_function()
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 3.0)
    with torch.no_grad():
        torch.testing.assert_close(f(x, sigma), Denoiser(pipe.unet, "trigflow", sigma_data=0.5)(x, sigma))


def test_edm_time_input_round_trips_through_save_and_load_and_sampling_uses_it(tmp_path):
    """export_pipeline records the time input in the SCMScheduler config; the loaded pipeline and load_denoiser both
    use it, so a one-step sample is -sigma_d F_net at EDM's c_noise(sigma_max), not at 1000 t."""
    from cmkit.karras import SIGMA_MAX, sigma_to_timestep
    from cmkit.training.build import load_denoiser
    from cmkit.training.export import export_pipeline

    net = _pipe(seed=4).unet
    export_pipeline(tmp_path / "edm", net, parameterization="trigflow", num_train_timesteps=40, clip_denoised=False,
                    sigma_data=0.5, trigflow_time_input="edm")
    pipe = ConsistencyModelPipeline.from_pretrained(tmp_path / "edm")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.time_input == "edm"
    assert load_denoiser(tmp_path / "edm").trigflow_time_input == "edm"
    out = pipe(batch_size=5, num_inference_steps=1, generator=gen(3), output_type="pt").images
    x = 0.5 * torch.randn(5, 2, generator=gen(3))
    t = torch.tensor(1.57080)
    with torch.no_grad():
        F = -pipe.unet(x / 0.5, torch.full((5,), sigma_to_timestep(SIGMA_MAX)), return_dict=False)[0]
        F_1000t = pipe.unet(x / 0.5, 1000 * t, return_dict=False)[0]
    assert torch.allclose(out, trigflow_consistency(x, t, F, 0.5), atol=1e-5)
    assert not torch.allclose(out, trigflow_consistency(x, t, F_1000t, 0.5), atol=1e-3)
    with pytest.raises(ValueError, match="time_input"):
        SCMScheduler(time_input="1000t")
