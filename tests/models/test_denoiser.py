"""Denoiser's TrigFlow parameterization (sCM): sigma-space view, trigflow_F, and EDM <-> TrigFlow conversions."""

import math

import pytest
import torch
from torch import nn

from cmkit.models.denoiser import Denoiser, denoised_of_trigflow, trigflow_F_of
from cmkit.models.mlp import MLPNet


class RecordingNet(nn.Module):
    """Returns a fixed function of its inputs and records the timestep it was given."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.3))
        self.seen = []

    def forward(self, x, timestep, class_labels=None, return_dict=False):
        self.seen.append((x.detach().clone(), timestep.detach().clone()))
        return (torch.sin(x) * self.scale + timestep[:, None] / 1000.0,)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return MLPNet(sample_shape=(3,), width=16, num_blocks=1, embedding_dim=8)


def test_trigflow_denoiser_feeds_the_network_x_t_over_sigma_d_and_1000_t():
    net = RecordingNet()
    d = Denoiser(net, "trigflow", sigma_data=0.5)
    x = torch.randn(4, 3)
    sigma = torch.tensor([0.1, 0.5, 2.0, 80.0])
    out = d(x, sigma)
    t = torch.atan(sigma / 0.5)
    x_in, timestep = net.seen[-1]
    torch.testing.assert_close(x_in, torch.cos(t)[:, None] * x / 0.5)
    torch.testing.assert_close(timestep, 1000 * t)
    F = torch.sin(x_in) * 0.3 + timestep[:, None] / 1000
    x_t = torch.cos(t)[:, None] * x
    torch.testing.assert_close(out, torch.cos(t)[:, None] * x_t - torch.sin(t)[:, None] * 0.5 * F)
    # trigflow_F is that raw output at (x_t, t)
    torch.testing.assert_close(d.trigflow_F(x_t, t), F)


def test_trigflow_denoiser_is_the_identity_at_sigma_zero_exactly():
    d = Denoiser(_mlp(), "trigflow", sigma_data=0.5)
    x = torch.randn(6, 3)
    with torch.no_grad():
        assert torch.equal(d(x, torch.zeros(6)), x)
        assert torch.equal(d(x, 0.0), x)


@pytest.mark.parametrize("parameterization", ["edm", "consistency"])
def test_an_edm_or_cm_model_viewed_as_trigflow_and_back_gives_the_same_denoised_output(parameterization):
    model = Denoiser(_mlp(1), parameterization, sigma_data=0.5)
    x_sigma = torch.randn(5, 3, dtype=torch.float32) * 3
    sigma = torch.tensor([0.01, 0.3, 1.0, 10.0, 80.0])
    with torch.no_grad():
        expected = model(x_sigma, sigma)

        def F_view(x_t, t, labels=None):
            return trigflow_F_of(model, x_t, t, labels, 0.5)

        round_trip = denoised_of_trigflow(F_view, x_sigma, sigma, None, 0.5)
    torch.testing.assert_close(round_trip, expected, rtol=1e-4, atol=1e-4)


def test_a_trigflow_model_viewed_in_sigma_space_and_back_gives_the_same_F():
    model = Denoiser(_mlp(2), "trigflow", sigma_data=0.5)
    t = torch.tensor([0.05, 0.6, 1.2, 1.5])
    x_t = torch.randn(4, 3)
    with torch.no_grad():
        # F of the sigma-space view (the Denoiser's forward) equals the network's F
        torch.testing.assert_close(trigflow_F_of(model, x_t, t, None, 0.5), model.trigflow_F(x_t, t), rtol=1e-4, atol=1e-4)


def test_edm_teacher_viewed_as_trigflow_gives_the_pf_ode_velocity():
    # an exact denoiser of a point mass at mu: D(x, sigma) = mu; its TrigFlow velocity is dx_t/dt = cos t z - sin t mu
    mu = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64)

    def point_mass(x, sigma, labels=None):
        return mu.expand_as(x)

    t = torch.tensor([0.3, 1.0], dtype=torch.float64)
    z = 0.5 * torch.randn(2, 3, dtype=torch.float64)
    x_t = torch.cos(t)[:, None] * mu + torch.sin(t)[:, None] * z
    F = trigflow_F_of(point_mass, x_t, t, None, 0.5)
    torch.testing.assert_close(0.5 * F, torch.cos(t)[:, None] * z - torch.sin(t)[:, None] * mu)


def test_trigflow_F_supports_forward_mode_jvp_in_x_and_t():
    d = Denoiser(_mlp(3), "trigflow", sigma_data=0.5)
    x_t, t = torch.randn(2, 3), torch.tensor([0.4, 1.0])
    dx, dt = torch.randn(2, 3), torch.ones(2)
    _, tangent = torch.func.jvp(lambda a, b: d.trigflow_F(a, b), (x_t, t), (dx, dt))
    eps = 1e-3
    fd = (d.trigflow_F(x_t + eps * dx, t + eps * dt) - d.trigflow_F(x_t - eps * dx, t - eps * dt)) / (2 * eps)
    torch.testing.assert_close(tangent, fd.detach(), rtol=2e-2, atol=2e-3)


def test_trigflow_F_on_a_non_trigflow_denoiser_names_the_fix():
    with pytest.raises(ValueError, match="trigflow_F_of"):
        Denoiser(_mlp(), "edm").trigflow_F(torch.randn(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="'trigflow'"):
        Denoiser(_mlp(), "scm")


def test_trigflow_denoiser_is_device_clean_on_a_simulated_accelerator():
    from device_rules import SIMULATED, AcceleratorRules

    d = Denoiser(_mlp(), "trigflow").to(SIMULATED)
    x = torch.randn(4, 3).to(SIMULATED)
    with AcceleratorRules(mps=True):
        assert d(x, 2.0).device == SIMULATED
        assert d(x, torch.full((4,), 0.5, device=SIMULATED)).device == SIMULATED
        assert d.trigflow_F(x, math.pi / 4).device == SIMULATED
        assert trigflow_F_of(d, x, torch.full((4,), 1.0, device=SIMULATED)).device == SIMULATED
