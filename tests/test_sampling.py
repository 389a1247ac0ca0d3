import pytest
import torch

from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.karras import renoise
from cmkit.sampling import (
    consistency_step,
    edm_sampling_sigmas,
    euler_step,
    heun_step,
    sample_consistency,
    sample_heun,
)


class Linear(torch.nn.Module):
    """F(x_in, t) = a * x_in: enough to check the preconditioning algebra."""

    def __init__(self, a=0.3):
        super().__init__()
        self.a = a

    def forward(self, x, t, class_labels=None, return_dict=True):
        return (self.a * x,)


def test_denoiser_boundary_condition():
    f = Denoiser(Linear(), "consistency")
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(f(x, torch.full((4,), 0.002)), x, atol=0, rtol=0)


def test_denoiser_matches_formula():
    f = Denoiser(Linear(0.3), "edm")
    x = torch.randn(2, 5)
    s = torch.tensor([0.7, 3.0])
    sd = 0.5
    c_skip = sd**2 / (s**2 + sd**2)
    c_out = s * sd / (s**2 + sd**2).sqrt()
    c_in = 1 / (s**2 + sd**2).sqrt()
    expected = c_skip[:, None] * x + c_out[:, None] * 0.3 * c_in[:, None] * x
    assert torch.allclose(f(x, s), expected, atol=1e-6)


def test_heun_step_by_hand():
    # D(x) = 0 makes the ODE dx/dsigma = x/sigma, solved exactly by x * sigma_next / sigma; Heun is exact here.
    zero = lambda x, s, c=None: torch.zeros_like(x)  # noqa: E731
    x = torch.randn(3, 2)
    s, sn = torch.full((3,), 2.0), torch.full((3,), 1.0)
    assert torch.allclose(heun_step(zero, x, s, sn), x * 0.5, atol=1e-6)
    assert torch.allclose(euler_step(zero, x, s, sn), x * 0.5, atol=1e-6)
    # to sigma = 0 Heun falls back to Euler: x + (0 - 2) * x / 2 = 0
    assert torch.allclose(heun_step(zero, x, s, torch.zeros(3)), torch.zeros(3, 2), atol=1e-6)


def test_heun_sampler_recovers_point_mass():
    # The exact denoiser of a point mass at c is D = c; the ODE carries every x to c.
    c = torch.tensor([0.25, -0.5])
    dirac = lambda x, s, cl=None: c.expand_as(x)  # noqa: E731
    x = torch.randn(16, 2) * 80
    out = sample_heun(dirac, x, edm_sampling_sigmas(18))
    assert torch.allclose(out, c.expand_as(out), atol=1e-3)


def test_consistency_sampler_one_and_two_steps():
    c = torch.tensor([0.25, -0.5])
    ideal = lambda x, s, cl=None: c.expand_as(x)  # noqa: E731
    x = torch.randn(8, 2) * 80
    assert torch.equal(sample_consistency(ideal, x, torch.tensor([80.0])), c.expand(8, 2))
    g = torch.Generator().manual_seed(0)
    two = sample_consistency(ideal, x, torch.tensor([80.0, 0.5]), g, clip_denoised=True)
    assert torch.allclose(two, c.expand(8, 2))


def test_consistency_step_clips_projects_then_renoises():
    denoised = torch.tensor([[-3.0, 0.25, 2.0]])
    z = torch.tensor([[1.0, -1.0, 0.5]])
    clipped = torch.tensor([[-1.0, 0.25, 1.0]])
    assert torch.equal(consistency_step(denoised, None, clip_denoised=True), clipped)
    assert torch.equal(consistency_step(denoised, 2.0, z, clip_denoised=True), renoise(clipped, 2.0, z))
    assert torch.equal(consistency_step(denoised, 2.0, z), renoise(denoised, 2.0, z))  # no clipping by default
    keep_first = lambda x: torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:]], dim=1)  # noqa: E731
    projected = consistency_step(denoised, 2.0, z, clip_denoised=True, project=keep_first)
    assert torch.equal(projected, renoise(keep_first(clipped), 2.0, z))  # clip, then project, then re-noise
    with pytest.raises(ValueError, match="pass z"):
        consistency_step(denoised, 2.0)


def test_consistency_sampler_projects_every_clean_estimate():
    seen = []

    def spy(x, s, cl=None):
        seen.append(x.clone())
        return torch.full_like(x, 0.5)

    zero_second = lambda x: x * torch.tensor([1.0, 0.0])  # noqa: E731
    out = sample_consistency(spy, torch.zeros(4, 2), torch.tensor([80.0, 2.0]), torch.Generator().manual_seed(0),
                             project=zero_second)
    assert torch.equal(out, torch.tensor([[0.5, 0.0]]).expand(4, 2))
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2 and torch.equal(seen[1], renoise(torch.tensor([[0.5, 0.0]]).expand(4, 2), 2.0, z))


def test_consistency_sampler_noise_level():
    # With the identity "model", one re-noise step adds sqrt(tau^2 - eps^2) z.
    ident = lambda x, s, cl=None: torch.zeros_like(x)  # noqa: E731
    x = torch.zeros(20000, 1)
    g = torch.Generator().manual_seed(1)
    calls = []

    def spy(x, s, cl=None):
        calls.append(x.clone())
        return ident(x, s)

    sample_consistency(spy, x, torch.tensor([80.0, 2.0]), g)
    assert len(calls) == 2 and torch.equal(calls[0], x)
    assert calls[1].std().item() == pytest.approx((4 - 0.002**2) ** 0.5, rel=0.03)
    assert abs(calls[1].mean().item()) < 0.06  # 4 standard errors of the mean
    # exactly the generator's next draw, scaled by sqrt(tau^2 - eps^2) (CM Algorithm 1, line 5)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(calls[1], z * (2.0**2 - 0.002**2) ** 0.5)


class CountingModel:
    """Wraps a denoiser and records the sigma of every network evaluation."""

    def __init__(self, model):
        self.model = model
        self.sigmas = []

    def __call__(self, x, sigma, class_labels=None):
        self.sigmas.append(float(sigma[0]))
        return self.model(x, sigma, class_labels)


def tiny_edm_denoiser():
    torch.manual_seed(0)
    return Denoiser(MLPNet(sample_shape=(2,), width=16, num_blocks=1, embedding_dim=8).eval(), "edm")


@pytest.mark.parametrize("num_steps", [1, 2, 18])
def test_heun_sampler_makes_2n_minus_1_evaluations(num_steps):
    # EDM Algorithm 1: a Heun step to each nonzero sigma, an Euler step (one evaluation) to 0.
    model = CountingModel(tiny_edm_denoiser())
    sigmas = edm_sampling_sigmas(num_steps) if num_steps > 1 else torch.tensor([80.0, 0.0])
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1)) * 80
    out = sample_heun(model, x, sigmas)
    assert len(model.sigmas) == 2 * num_steps - 1
    assert 0.0 not in model.sigmas  # the network is never called at sigma = 0 (nor at a dummy level for it)
    # Bit for bit what per-sample Heun steps give (they evaluate, then discard, a correction at sigma = 0).
    reference = x
    s = sigmas.float()
    for i in range(num_steps):
        reference = heun_step(model.model, reference, s[i].expand(5), s[i + 1].expand(5))
    assert torch.equal(out, reference)


def test_heun_sampler_without_a_final_zero_corrects_every_step():
    model = CountingModel(tiny_edm_denoiser())
    sample_heun(model, torch.randn(3, 2) * 80, torch.tensor([80.0, 10.0, 1.0]))
    assert len(model.sigmas) == 4


def test_euler_heun_and_consistency_evaluation_counts():
    model = CountingModel(tiny_edm_denoiser())
    x, s, sn = torch.randn(3, 2), torch.full((3,), 2.0), torch.full((3,), 1.0)
    euler_step(model, x, s, sn)
    assert len(model.sigmas) == 1
    heun_step(model, x, s, sn)
    assert len(model.sigmas) == 3
    for sigmas in ([80.0], [80.0, 0.5], [80.0, 5.0, 0.5]):
        model.sigmas.clear()
        sample_consistency(model, torch.randn(3, 2) * 80, torch.tensor(sigmas), torch.Generator().manual_seed(0))
        assert model.sigmas == pytest.approx(sigmas)  # one evaluation per sigma, at that sigma
