import math

import pytest
import torch

from cmkit.karras import karras_sigmas
from cmkit.training.schedules import (
    ct_num_scales,
    ct_target_budget,
    ct_target_ema,
    ect_r,
    ect_stage,
    ict_num_scales,
    ict_stage_length,
    lognormal_pair_probs,
    training_grid,
)


def test_ct_num_scales_hand_values():
    # N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1 with s0=2, s1=150
    assert ct_num_scales(0, 1000) == 2  # ceil(sqrt(4) - 1) + 1
    assert ct_num_scales(500, 1000) == 107  # sqrt(0.5 * 22797 + 4) = 106.78 -> ceil(105.78) + 1
    assert ct_num_scales(1000, 1000) == 151  # sqrt(151^2) - 1 = 150 -> 151
    assert ct_num_scales(5000, 1000) == 151  # clipped at K
    assert ct_num_scales(250, 1000, s0=2, s1=200) == 101  # sqrt(0.25 * (201^2 - 4) + 4) = 100.51 -> ceil(99.51) + 1


def test_ct_target_ema_hand_values():
    assert ct_target_ema(0, 1000) == pytest.approx(0.95)  # N = 2: exp(2 ln 0.95 / 2)
    assert ct_target_ema(1000, 1000) == pytest.approx(0.95 ** (2 / 151))
    assert ct_target_ema(500, 1000) == pytest.approx(math.exp(2 * math.log(0.95) / 107))


def test_ict_curriculum_hand_values():
    # K' = floor(400000 / (log2 floor(1280/10) + 1)) = floor(400000 / 8) = 50000
    assert ict_stage_length(400_000) == 50_000
    assert ict_num_scales(0, 400_000) == 11
    assert ict_num_scales(49_999, 400_000) == 11
    assert ict_num_scales(50_000, 400_000) == 21
    assert ict_num_scales(150_000, 400_000) == 81
    assert ict_num_scales(350_000, 400_000) == 1281
    assert ict_num_scales(10**9, 400_000) == 1281
    # a short run: K' = floor(100 / (log2 floor(160/10) + 1)) = 20
    assert [ict_num_scales(k, 100, 10, 160) for k in (0, 20, 40, 60, 80, 99)] == [11, 21, 41, 81, 161, 161]


def test_lognormal_pair_probs_sum_to_one_and_match_erf():
    for n in (11, 21, 1281):
        p = lognormal_pair_probs(training_grid(n))
        assert p.shape == (n - 1,)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
        assert bool((p >= 0).all())
    sigmas = torch.tensor([80.0, 1.0, 0.002], dtype=torch.float64)
    cdf = [math.erf((math.log(s) + 1.1) / (math.sqrt(2) * 2.0)) for s in sigmas.tolist()]
    mass = [cdf[0] - cdf[1], cdf[1] - cdf[2]]
    expected = torch.tensor(mass, dtype=torch.float64) / sum(mass)
    assert torch.allclose(lognormal_pair_probs(sigmas), expected)


def test_lognormal_pair_probs_peak_near_p_mean():
    sigmas = training_grid(641)
    p = lognormal_pair_probs(sigmas)
    # mass per unit log-sigma is highest near exp(-1.1) = 0.33
    density = p / torch.log(sigmas[:-1] / sigmas[1:])
    peak = float(sigmas[int(density.argmax())])
    assert 0.2 < peak < 0.5


def test_lognormal_pair_probs_rejects_ascending():
    with pytest.raises(ValueError, match="descending"):
        lognormal_pair_probs(torch.tensor([0.1, 1.0, 2.0]))


def test_training_grid_is_the_karras_grid():
    assert torch.equal(training_grid(18), karras_sigmas(18))


def test_ect_r_hand_values():
    t = torch.tensor([1.0, 10.0], dtype=torch.float64)
    # stage 0, t=1: 1 - 0.5 (1 + 8 sigmoid(-1)) = -0.576 < 0 -> r = 0
    r0 = ect_r(t, 0)
    assert float(r0[0]) == 0.0
    # stage 3, t=10: 10 (1 - (1 + 8 sigmoid(-10)) / 16) = 9.3747730...
    r3 = ect_r(t, 3)
    assert float(r3[1]) == pytest.approx(10 * (1 - (1 + 8 / (1 + math.exp(10))) / 16), rel=1e-12)
    assert float(r3[1]) == pytest.approx(9.374773, abs=1e-6)


def test_ect_r_approaches_t_with_stage():
    t = torch.logspace(-2, 1.9, 50, dtype=torch.float64)
    gaps = [float((t - ect_r(t, s)).max()) for s in range(8)]
    assert all(b < a for a, b in zip(gaps, gaps[1:]))
    assert bool((ect_r(t, 5) <= t).all()) and bool((ect_r(t, 5) >= 0).all())


def test_ct_target_ema_zero_is_the_online_network():
    assert [ct_target_ema(k, 100, mu0=0.0) for k in (0, 50, 99)] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"mu0 must lie in \[0, 1\)"):
        ct_target_ema(0, 100, mu0=1.0)


def test_ct_target_budget_hand_values():
    # K = 1: only k = 0, where N = s0 = 2 and mu = mu0
    assert ct_target_budget(1) == pytest.approx(0.05)
    # K = 2: k = 1 has N = 107 (test_ct_num_scales_hand_values with f = 1/2)
    assert ct_target_budget(2) == pytest.approx(0.05 + 1 - 0.95 ** (2 / 107))
    # s0 = s1 = 4: N(0) = 4, then sqrt(16 + 9 k/K) - 1 lies in (3, 4], so N = 5 for every k > 0
    assert ct_target_budget(10, s0=4, s1=4, mu0=0.5) == pytest.approx((1 - 0.5) + 9 * (1 - 0.5 ** (4 / 5)))
    assert ct_target_budget(3000, mu0=0.0) == 3000.0  # mu = 0: the target is replaced at every step
    # the bisection over N(k) equals the plain sum over every step
    for K, s0, s1, mu0 in ((3000, 2, 150, 0.95), (777, 3, 40, 0.2), (50, 2, 1280, 0.9)):
        plain = math.fsum(1 - ct_target_ema(k, K, s0, s1, mu0) for k in range(K))
        assert ct_target_budget(K, s0, s1, mu0) == pytest.approx(plain, rel=1e-12)
    # the digits recipe before issue 11 against OpenAI's CT runs (scripts/launch.sh: K, s1; s0 = 2, mu0 = 0.95)
    assert ct_target_budget(3000) == pytest.approx(3.99, abs=0.01)
    assert ct_target_budget(800_000, s1=200) == pytest.approx(798.8, abs=0.1)  # ImageNet-64
    assert ct_target_budget(1_000_000, s1=150) == pytest.approx(1320.8, abs=0.1)  # LSUN 256
    with pytest.raises(ValueError, match="total_steps"):
        ct_target_budget(0)


def test_ect_stage_and_errors():
    assert [ect_stage(k, 100) for k in (0, 99, 100, 250)] == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="steps_per_stage"):
        ect_stage(3, 0)
    with pytest.raises(ValueError, match="q must be > 1"):
        ect_r(torch.ones(1), 0, q=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        ct_num_scales(0, 0)
    with pytest.raises(ValueError, match="s0 <= s1"):
        ict_num_scales(0, 10, s0=20, s1=10)
