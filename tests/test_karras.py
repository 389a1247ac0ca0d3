import math

import numpy as np
import pytest
import torch

from cmkit import karras


def test_grid_endpoints_and_monotone():
    s = karras.karras_sigmas(40)
    assert s[0].item() == pytest.approx(80.0, rel=1e-12)
    assert s[-1].item() == pytest.approx(0.002, rel=1e-12)
    assert torch.all(s[1:] < s[:-1])


def test_grid_formula_by_hand():
    n, i = 18, 5
    expected = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert karras.karras_sigmas(n)[i].item() == pytest.approx(expected, rel=1e-12)
    assert karras.karras_grid_sigmas([i], n)[0].item() == pytest.approx(expected, rel=1e-12)


def test_grid_index_errors():
    with pytest.raises(ValueError, match="at least 2"):
        karras.karras_sigmas(1)
    with pytest.raises(ValueError, match=r"\[0, 39\]"):
        karras.karras_grid_sigmas([40], 40)


def test_boundary_condition_is_identity_at_sigma_min():
    c_skip, c_out = karras.consistency_scalings(torch.tensor(0.002))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0


def test_scalings_match_hand_values():
    sigma, sd, eps = 1.3, 0.5, 0.002
    c_skip, c_out = karras.consistency_scalings(sigma)
    assert c_skip == pytest.approx(sd**2 / ((sigma - eps) ** 2 + sd**2))
    assert c_out == pytest.approx((sigma - eps) * sd / math.sqrt(sigma**2 + sd**2))
    e_skip, e_out = karras.edm_scalings(sigma)
    assert e_skip == pytest.approx(sd**2 / (sigma**2 + sd**2))
    assert e_out == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2))
    assert karras.c_in(sigma) == pytest.approx(1 / math.sqrt(sigma**2 + sd**2))
    with pytest.raises(ValueError, match="parameterization"):
        karras.output_scalings(sigma, "eps")  # type: ignore[arg-type]


def test_timestep_round_trip():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    t = karras.sigma_to_timestep(sigma)
    assert t[2].item() == pytest.approx(250 * math.log(80.0))
    assert torch.allclose(karras.timestep_to_sigma(t), sigma)
    assert karras.sigma_to_timestep(80.0) == pytest.approx(250 * math.log(80.0))


def test_timestep_to_sigma_accepts_every_sigma_like_type():
    expected = math.exp(100 / 250)
    assert karras.timestep_to_sigma(100.0) == pytest.approx(expected)
    assert karras.timestep_to_sigma(100) == pytest.approx(expected)
    t = np.array([100.0, 250 * math.log(80.0)])
    out = karras.timestep_to_sigma(t)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert np.allclose(out, [expected, 80.0], rtol=1e-12)
    assert np.allclose(karras.timestep_to_sigma(karras.sigma_to_timestep(np.array([0.002, 0.5]))), [0.002, 0.5])
    out_t = karras.timestep_to_sigma(torch.tensor([100.0], dtype=torch.float64))
    assert isinstance(out_t, torch.Tensor) and out_t.item() == pytest.approx(expected)


def test_renoise_at_sigma_min_adds_nothing():
    x = torch.randn(2, 3)
    assert torch.equal(karras.renoise(x, 0.002, torch.randn(2, 3)), x)


def test_add_noise_is_the_forward_process_per_sample_or_shared():
    x0, z = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.5, 2.0, 80.0])
    per_sample = karras.add_noise(x0, sigma, z)
    for i in range(3):
        assert torch.equal(per_sample[i], x0[i] + z[i] * sigma[i])
    assert torch.equal(karras.add_noise(x0, 1.5, z), x0 + 1.5 * z)
    # a 0-d float32 sigma keeps a bfloat16 sample bfloat16 (a [1, 1, 1, 1] sigma would promote it to float32)
    half = karras.add_noise(x0.bfloat16(), torch.tensor(3.0), z.bfloat16())
    assert half.dtype == torch.bfloat16
    # renoise is add_noise at the level sqrt(sigma_next^2 - eps^2) (CM Algorithm 1)
    assert torch.equal(karras.renoise(x0, 2.0, z), karras.add_noise(x0, (2.0**2 - 0.002**2) ** 0.5, z))


def test_edm_noise_label_is_ln_sigma_over_4_of_the_cmkit_timestep():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    torch.testing.assert_close(karras.edm_noise_label(karras.sigma_to_timestep(sigma)), sigma.log() / 4)  # EDM table 1
    assert karras.edm_noise_label(250.0) == 0.25
