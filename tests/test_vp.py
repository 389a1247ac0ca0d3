"""cmkit.vp: the VP <-> EDM views and TCD's trajectory consistency function, against the schedulers' own math."""

from __future__ import annotations

import torch

from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.schedulers.tcd import TCDScheduler
from cmkit.vp import edm_to_vp_x, trajectory_consistency, vp_alpha_bar, vp_sigma, vp_to_edm_x


def test_sigma_and_x_round_trips():
    alpha_bar = TCDScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod.double()
    sigma = vp_sigma(alpha_bar)
    torch.testing.assert_close(vp_alpha_bar(sigma), alpha_bar, rtol=1e-12, atol=0)
    assert bool((sigma[1:] > sigma[:-1]).all())  # sigma grows with the timestep
    x = torch.randn(5, 3, dtype=torch.float64)
    a = alpha_bar[torch.tensor([0, 10, 500, 900, 999])]
    torch.testing.assert_close(edm_to_vp_x(vp_to_edm_x(x, a), a), x, rtol=1e-12, atol=1e-12)
    # x_vp = sqrt(a) x0 + sqrt(1 - a) eps  <=>  x_sigma = x0 + sigma eps  (EDM table 1, VP column)
    x0, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    x_vp = a.sqrt()[:, None] * x0 + (1 - a).sqrt()[:, None] * eps
    torch.testing.assert_close(vp_to_edm_x(x_vp, a), x0 + vp_sigma(a)[:, None] * eps, rtol=1e-10, atol=1e-12)


def test_boundary_condition_holds_exactly():
    x, d = torch.randn(64, 2), torch.randn(64, 2) * 1e3
    for sigma in (0.01, 0.7, 3.3, 157.0):
        s = torch.full((64,), sigma)
        assert torch.equal(trajectory_consistency(x, d, s, s), x)
    assert torch.equal(trajectory_consistency(x, d, 2.0, 2.0), x)  # scalars too


def test_trajectory_consistency_is_the_tcd_scheduler_step_with_gamma_zero():
    """f(x_t, t, s) in EDM coordinates is TCDScheduler.step's x_s (x0 output, eta 0) divided by sqrt(alpha_bar_s)."""
    scheduler = TCDScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="sample")
    scheduler.set_timesteps(4)
    t, t_next = scheduler.timesteps[:2]
    a_t, a_s = scheduler.alphas_cumprod[t].double(), scheduler.alphas_cumprod[t_next].double()
    x_vp, x0 = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    x_s_vp = scheduler.step(x0, t, x_vp, eta=0.0).prev_sample
    f = trajectory_consistency(vp_to_edm_x(x_vp, a_t), x0, vp_sigma(a_t), vp_sigma(a_s))
    torch.testing.assert_close(edm_to_vp_x(f, a_s), x_s_vp, rtol=1e-6, atol=1e-6)


def test_an_edm_denoiser_is_an_x0_predicting_vp_model_for_diffusers_tcd_scheduler():
    """The VP view of an EDM denoiser drives diffusers' own TCDScheduler (prediction_type "sample") exactly as cmkit's."""
    diffusers = __import__("pytest").importorskip("diffusers")
    torch.manual_seed(0)
    denoiser = Denoiser(MLPNet(sample_shape=(2,), width=16, num_blocks=1), "edm").eval()
    config = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="sample")
    results = []
    for scheduler in (TCDScheduler(**config), diffusers.TCDScheduler(**config)):
        scheduler.set_timesteps(4)
        x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(2)
        for t in scheduler.timesteps:
            a = scheduler.alphas_cumprod[t]
            with torch.no_grad():
                x0 = denoiser(vp_to_edm_x(x, a), vp_sigma(a.double()).float())
            x = scheduler.step(x0, t, x, eta=0.3, generator=g).prev_sample
        results.append(x)
    assert torch.equal(results[0], results[1])
