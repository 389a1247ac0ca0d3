"""TrigFlow math (sCM, Lu & Song 2024): conversions, the consistency function, the timestep convention."""

import math

import numpy as np
import pytest
import torch

from cmkit import karras, trigflow
from cmkit.trigflow import (
    edm_to_trigflow_x,
    sigma_to_t,
    t_to_sigma,
    trigflow_consistency,
    trigflow_F_from_denoised,
    trigflow_renoise,
    trigflow_timestep,
    trigflow_to_edm_x,
    x0_from_velocity,
)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_sigma_t_round_trip_for_tensors_arrays_and_floats(sigma_data):
    sigmas = torch.tensor([0.0, 0.002, 0.5, 1.0, 80.0, 1e4], dtype=torch.float64)
    t = sigma_to_t(sigmas, sigma_data)
    assert t.dtype == torch.float64 and float(t[0]) == 0.0 and bool((t < math.pi / 2).all())
    torch.testing.assert_close(t_to_sigma(t, sigma_data), sigmas, rtol=1e-10, atol=1e-15)  # tan is ill-conditioned near pi/2
    assert np.allclose(t_to_sigma(sigma_to_t(sigmas.numpy(), sigma_data), sigma_data), sigmas.numpy(), rtol=1e-12)
    assert math.isclose(t_to_sigma(sigma_to_t(3.0, sigma_data), sigma_data), 3.0, rel_tol=1e-12)
    # sigma = sigma_d is t = pi/4; sigma_max = 80 with sigma_d = 0.5 is arctan(160) (the paper's t_max)
    assert math.isclose(sigma_to_t(sigma_data, sigma_data), math.pi / 4)
    assert math.isclose(sigma_to_t(80.0, 0.5), 1.56454, abs_tol=1e-5)


def test_edm_and_trigflow_samples_describe_the_same_noising():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    sigma_data = 0.5
    sigma = torch.tensor([0.01, 0.3, 2.0, 50.0], dtype=torch.float64)
    t = sigma_to_t(sigma, sigma_data)
    x_sigma = karras.add_noise(x0, sigma, eps)  # EDM: x0 + sigma eps
    x_t = edm_to_trigflow_x(x_sigma, t)
    # TrigFlow: cos t x0 + sin t z with z = sigma_d eps
    expected = torch.cos(t)[:, None] * x0 + torch.sin(t)[:, None] * (sigma_data * eps)
    torch.testing.assert_close(x_t, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(trigflow_to_edm_x(x_t, t), x_sigma, rtol=1e-12, atol=1e-12)
    # a scalar t broadcasts too
    torch.testing.assert_close(trigflow_to_edm_x(edm_to_trigflow_x(x_sigma, 0.7), 0.7), x_sigma)


def test_consistency_function_is_the_identity_at_t_zero_exactly():
    x = torch.randn(5, 2, 3)
    F = torch.randn(5, 2, 3) * 100
    assert torch.equal(trigflow_consistency(x, torch.zeros(5), F, 0.5), x)
    assert torch.equal(trigflow_consistency(x, 0.0, F, 0.5), x)


def test_consistency_function_recovers_x0_from_the_exact_velocity():
    g = torch.Generator().manual_seed(1)
    x0, z = torch.randn(3, 4, generator=g, dtype=torch.float64), 0.5 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.2, 0.9, 1.5], dtype=torch.float64)
    c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
    x_t = c * x0 + s * z
    velocity = c * z - s * x0  # dx_t / dt along the TrigFlow path (sCM eq. 3)
    torch.testing.assert_close(x0_from_velocity(x_t, t, velocity), x0)
    torch.testing.assert_close(trigflow_consistency(x_t, t, velocity / 0.5, 0.5), x0)
    # and F_from_denoised inverts the consistency function for t > 0
    torch.testing.assert_close(trigflow_F_from_denoised(x_t, t, x0, 0.5), velocity / 0.5)


def test_network_timestep_is_1000_t_so_edm_networks_see_c_noise_t():
    t = torch.tensor([0.0, 1.1, math.pi / 2])
    torch.testing.assert_close(trigflow_timestep(t), 1000 * t)
    torch.testing.assert_close(karras.edm_noise_label(trigflow_timestep(t)), t)
    assert trigflow_timestep(0.5) == 500.0
    assert trigflow.TIMESTEP_SCALE == 1000.0 and trigflow.T_MAX == math.pi / 2


def test_renoise_matches_the_trigflow_forward_process():
    x0, z = torch.randn(2, 3), torch.randn(2, 3)
    out = trigflow_renoise(x0, torch.tensor(1.1), z, 0.5)
    torch.testing.assert_close(out, math.cos(1.1) * x0 + math.sin(1.1) * 0.5 * z)
    assert torch.equal(trigflow_renoise(x0, 0.0, z, 0.5), x0)


def test_edm_time_input_is_edm_c_noise_with_a_cap_and_a_flipped_sign():
    from cmkit.karras import SIGMA_MAX, sigma_to_timestep
    from cmkit.trigflow import t_to_sigma, trigflow_network_input

    t = torch.tensor([0.3, 1.1, math.pi / 2])  # pi/2 in float32 is past pi/2: tan < 0 there
    timestep, sign = trigflow_network_input(t, "edm", 0.5)
    assert sign == -1.0 and torch.isfinite(timestep).all()
    assert torch.allclose(timestep[:2], sigma_to_timestep(t_to_sigma(t[:2], 0.5)))
    assert timestep[2] == pytest.approx(sigma_to_timestep(SIGMA_MAX), rel=1e-5)
    assert trigflow_network_input(0.5, "trigflow") == (500.0, 1.0)
    with pytest.raises(ValueError, match="time_input must be one of"):
        trigflow_network_input(t, "1000t")


def test_edm_time_input_makes_a_trigflow_denoiser_reproduce_the_edm_denoiser_of_the_same_weights():
    """sCD's initialisation: an EDM network read with time_input='edm' is the same D (Karras et al. 2022, Table 1)."""
    from cmkit.models.denoiser import Denoiser
    from cmkit.models.mlp import MLPNet

    torch.manual_seed(0)
    net = MLPNet(sample_shape=(2,), width=16, num_blocks=1, embedding_dim=8)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    edm, trig = Denoiser(net, "edm"), Denoiser(net, "trigflow", trigflow_time_input="edm")
    x = torch.randn(32, 2)
    with torch.no_grad():
        for s in (0.01, 0.5, 3.0, 60.0):
            sigma = torch.full((32,), s)
            assert torch.allclose(trig(x, sigma), edm(x, sigma), atol=1e-5)
    with pytest.raises(ValueError, match="trigflow_time_input"):
        Denoiser(net, "trigflow", trigflow_time_input="1000t")
