import copy

import pytest
import torch
from torch import nn

from cmkit.karras import SIGMA_MIN, karras_sigmas
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.training.objectives import (
    CDObjective,
    CTObjective,
    ECTObjective,
    ICTObjective,
    Objective,
    build_objective,
)
from cmkit.streams import StepRandom
from cmkit.training.schedules import ct_num_scales, ct_target_ema

B = 32


def _net(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return MLPNet(width=32, num_blocks=2, embedding_dim=16, dropout=dropout)


def _teacher():
    return Denoiser(_net(seed=1), "edm")


def _build(method, dropout=0.0, **options):
    teacher = _teacher() if method in ("cd", "ect") else None
    model = Denoiser(_net(dropout), "edm" if method == "edm" else "consistency")
    if method in ("ct", "ict"):
        options.setdefault("total_steps", 100)
    return build_objective(method, model, teacher, **options)


def _x0(n=B, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.mark.parametrize("method", ["edm", "cd", "ct", "ict", "ect"])
def test_builds_a_protocol_objective_with_finite_loss(method):
    obj = _build(method)
    assert isinstance(obj, Objective)
    out = obj(_x0(), None, 3, StepRandom(0, 3, B))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.requires_grad
    assert out.metrics["loss"] == pytest.approx(out.loss.item())


@pytest.mark.parametrize("method", ["cd", "ct", "ict", "ect"])
def test_boundary_condition_of_every_consistency_model(method):
    obj = _build(method)
    x = _x0()
    out = obj(x, None, 0, StepRandom(0, 0, B))
    out.loss.backward()
    with torch.no_grad():
        for p in obj.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obj.after_optimizer_step(0)
    assert torch.equal(obj.model(x, torch.full((B,), SIGMA_MIN)), x)
    target = getattr(obj, "target", None)
    if target is not None:
        assert torch.equal(target(x, torch.full((B,), SIGMA_MIN)), x)


def _hand_heun(D, x, s, s_next):
    d = (x - D(x, torch.full((len(x),), s))) / s
    x_euler = x + (s_next - s) * d
    d_next = (x_euler - D(x_euler, torch.full((len(x),), s_next))) / s_next
    return x + (s_next - s) * 0.5 * (d + d_next)


def test_cd_target_is_a_hand_computed_heun_step():
    obj = _build("cd", num_scales=18)
    assert isinstance(obj, CDObjective)
    x0 = _x0()
    step = 5
    # replay the objective's draws: the pair index n, then z
    rng = StepRandom(7, step, B)
    n = rng.randint(17)
    z = rng.randn(2)
    sigmas = karras_sigmas(18).float()
    s_hi, s_lo = sigmas[n], sigmas[n + 1]
    x_hi = x0 + s_hi[:, None] * z
    with torch.no_grad():
        x_lo = torch.stack([_hand_heun(obj.teacher, x_hi[i : i + 1], float(s_hi[i]), float(s_lo[i]))[0] for i in range(B)])
        assert torch.allclose(obj.teacher_step(x_hi, s_hi, s_lo), x_lo, atol=1e-5)
        target = obj.target(x_lo, s_lo)
    expected = (obj.model(x_hi, s_hi) - target).pow(2).mean(dim=1).mean()
    out = obj(x0, None, step, StepRandom(7, step, B))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_cd_euler_solver_and_student_from_teacher():
    obj = _build("cd", solver="euler")
    x = _x0()
    s, s_next = torch.full((B,), 2.0), torch.full((B,), 1.5)
    with torch.no_grad():
        expected = x + (s_next - s)[:, None] * (x - obj.teacher(x, s)) / s[:, None]
    assert torch.allclose(obj.teacher_step(x, s, s_next), expected)
    for a, b in zip(obj.model.net.state_dict().values(), obj.teacher.net.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in obj.teacher.parameters())


def test_cd_student_dropout_set_to_zero():
    teacher = Denoiser(_net(dropout=0.3), "edm")
    model = Denoiser(_net(dropout=0.3), "consistency")
    build_objective("cd", model, teacher)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))


def test_cd_target_ema_and_state_roundtrip():
    obj = _build("cd", target_ema=0.9)
    before = [p.clone() for p in obj.target.parameters()]
    with torch.no_grad():
        for p in obj.model.parameters():
            p.add_(1.0)
    obj.after_optimizer_step(0)
    for b, t, m in zip(before, obj.target.parameters(), obj.model.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * m)
    state = copy.deepcopy(obj.state_dict())
    other = _build("cd", target_ema=0.9)
    other.load_state_dict(state)
    for a, b in zip(other.target.parameters(), obj.target.parameters()):
        assert torch.equal(a, b)
    assert _build("cd", target_ema=0.0).state_dict() == {}


def test_ct_uses_the_adaptive_schedules():
    obj = _build("ct", total_steps=1000)
    assert isinstance(obj, CTObjective)
    out = obj(_x0(), None, 500, StepRandom(0, 500, B))
    assert out.metrics["N"] == ct_num_scales(500, 1000) == 107
    assert out.metrics["mu"] == pytest.approx(ct_target_ema(500, 1000))
    before = [p.clone() for p in obj.target.parameters()]
    with torch.no_grad():
        for p in obj.model.parameters():
            p.add_(1.0)
    obj.after_optimizer_step(0)  # N(0) = 2 -> mu = 0.95
    for b, t, m in zip(before, obj.target.parameters(), obj.model.parameters()):
        assert torch.allclose(t, 0.95 * b + 0.05 * m, atol=1e-6)


def test_ct_mu0_zero_targets_the_online_network():
    obj = _build("ct", mu0=0.0)
    assert obj.target is None and obj.state_dict() == {} and obj.target_ema(50) == 0.0
    x0 = _x0()
    rng = StepRandom(3, 0, B)
    n = rng.randint(1)  # N(0) = 2: the one pair (sigma_max, sigma_min)
    z = rng.randn(2)
    s_hi, s_lo = torch.full((B,), 80.0), torch.full((B,), SIGMA_MIN)
    with torch.no_grad():  # the online network at sigma_min is the identity: the target is x0 + sigma_min z
        expected = (obj.model(x0 + 80.0 * z, s_hi) - obj.model(x0 + SIGMA_MIN * z, s_lo)).pow(2).mean(dim=1).mean()
    assert bool((n == 0).all())
    out = obj(x0, None, 0, StepRandom(3, 0, B))
    assert out.metrics["mu"] == 0.0 and out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


class _MaskRecorder:
    def __init__(self, *modules):
        self.masks = []
        for module in modules:
            module.register_forward_hook(lambda m, i, o: self.masks.append((o == 0) & (i[0] != 0)))


def _first_dropout(net):
    return next(m for m in net.modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("method", ["cd", "ct", "ict", "ect"])
def test_same_dropout_mask_in_both_passes(method):
    obj = _build(method, dropout=0.5, **({"student_dropout": None} if method == "cd" else {}))
    target = getattr(obj, "target", None)  # CD and CT: the target pass runs the EMA copy's own dropout modules
    rec = _MaskRecorder(*[_first_dropout(net) for net in (obj.model, target) if net is not None])
    obj.model.train()
    obj(_x0(), None, 0, StepRandom(0, 0, B))
    assert len(rec.masks) == 2
    assert rec.masks[0].any() and torch.equal(rec.masks[0], rec.masks[1])
    # without the shared seed, two passes draw different masks
    obj.model(_x0(), torch.ones(B))
    obj.model(_x0(), torch.ones(B))
    assert not torch.equal(rec.masks[2], rec.masks[3])


@pytest.mark.parametrize("method", ["cd", "ct"])
def test_target_equal_to_the_student_loses_nothing_under_dropout(method):
    # theta^- = theta (the target is a fresh copy), dropout 0.3, and the grid's sigmas lie 1e-6 apart, so both
    # passes see the same input: the loss is ~0 only if they also share one dropout mask (OpenAI's
    # consistency_losses); with a mask each it is about 1e-3 here
    grid = {"sigma_min": 1.0, "sigma_max": 1.0 + 1e-6}
    options = {"num_scales": 4, "student_dropout": 0.3} if method == "cd" else {"s0": 3, "s1": 3}
    obj = _build(method, dropout=0.3, **grid, **options)
    assert all(m.p == 0.3 for net in (obj.model, obj.target) for m in net.modules() if isinstance(m, nn.Dropout))
    obj.model.train()
    for step in range(3):
        loss = obj(_x0(), None, step, StepRandom(0, step, B)).loss.item()
        assert loss < 1e-9, (step, loss)


def test_ict_has_no_target_network_and_weights_by_delta_sigma():
    obj = _build("ict", total_steps=100)
    assert isinstance(obj, ICTObjective)
    assert not hasattr(obj, "target") and obj.state_dict() == {}
    x0 = _x0()
    rng = StepRandom(2, 0, B)
    sigmas, probs = obj.grid_and_probs(11)
    i = rng.choice(probs)
    z = rng.randn(2)
    s_hi, s_lo = sigmas[i].float(), sigmas[i + 1].float()
    with torch.no_grad():
        pred = obj.model(x0 + s_hi[:, None] * z, s_hi)
        target = obj.model(x0 + s_lo[:, None] * z, s_lo)
    c = 0.00054 * 2**0.5
    d = torch.sqrt((pred - target).pow(2).sum(dim=1) + c * c) - c
    expected = (d / (sigmas[i] - sigmas[i + 1]).float()).mean()
    assert obj(x0, None, 0, StepRandom(2, 0, B)).loss.item() == pytest.approx(expected.item(), rel=1e-4)


def ect_inverse_dt(t, r):
    return 1 / (t - r)


def ect_imagenet_snrpk(t, r):
    """locuslab/ect's ImageNet weight (``--wt snrpk``), written as its code does, with the model's sigma_data 0.7."""
    return (t**2 + 0.7**2) / (t * 0.7) ** 2


@pytest.mark.parametrize("options, weight", [({}, ect_inverse_dt), ({"weighting": "inverse_dt"}, ect_inverse_dt),
                                             ({"weighting": "edm"}, ect_imagenet_snrpk)])  # fmt: skip
def test_ect_loss_hand_computed(options, weight):
    obj = _build("ect", steps_per_stage=10, **options)
    obj.model.sigma_data = 0.7  # the edm weighting reads the model's sigma_data (inverse_dt ignores it)
    assert isinstance(obj, ECTObjective)
    assert obj.stage(25) == 2
    x0 = _x0()
    step = 5  # stage 0: r(t) = t (1 - (1 + 8 sigmoid(-t)) / 2), clipped at 0 (so r = 0 for t below ~2.3)
    rng = StepRandom(4, step, B)
    t = torch.exp(-1.1 + 2.0 * rng.randn()).clamp(SIGMA_MIN, 80.0)
    eps = rng.randn(2)
    r = (t * (1 - (1 + 8 * torch.sigmoid(-t)) / 2)).clamp_min(0)
    boundary = r <= SIGMA_MIN
    assert boundary.any() and (~boundary).any()
    t32, r32 = t.float(), r.float().clamp_min(SIGMA_MIN)
    with torch.no_grad():
        pred = obj.model(x0 + t32[:, None] * eps, t32)
        target = torch.where(boundary[:, None], x0, obj.model(x0 + r32[:, None] * eps, r32))
    c = 0.00054 * 2**0.5
    d = torch.sqrt((pred - target).pow(2).sum(dim=1) + c * c) - c
    expected = (d * weight(t, r).float()).mean()
    loss = obj(x0, None, step, StepRandom(4, step, B)).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_ect_weighting_must_be_known():
    with pytest.raises(ValueError, match="weighting must be one of 'inverse_dt', 'edm', got 'snrpk'"):
        _build("ect", weighting="snrpk")


def test_ect_needs_a_teacher_unless_told():
    with pytest.raises(ValueError, match="teacher"):
        build_objective("ect", Denoiser(_net()))
    obj = build_objective("ect", Denoiser(_net()), init_from_teacher=False)
    assert isinstance(obj, ECTObjective)


def test_batch_split_matches_the_global_batch():
    obj = _build("ict", total_steps=100)
    x0 = _x0(8)
    whole = obj(x0, None, 1, StepRandom(0, 1, 8)).loss
    halves = [obj(x0[o : o + 4], None, 1, StepRandom(0, 1, 8, offset=o, local_batch=4)).loss for o in (0, 4)]
    assert whole.item() == pytest.approx(((halves[0] + halves[1]) / 2).item(), rel=1e-5)


def test_factory_errors():
    model = Denoiser(_net())
    with pytest.raises(ValueError, match="unknown option"):
        build_objective("ict", model, total_steps=10, mu0=0.9)
    with pytest.raises(ValueError, match="total_steps"):
        build_objective("ct", model)
    with pytest.raises(ValueError, match="teacher"):
        build_objective("cd", model)
    with pytest.raises(ValueError, match="parameterization='edm'"):
        build_objective("edm", model)
    with pytest.raises(ValueError, match="method must be one of"):
        build_objective("gan", model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local batch"):
        _build("edm")(_x0(4), None, 0, StepRandom(0, 0, 8))
    with pytest.raises(ValueError, match="networks differ"):
        build_objective("cd", Denoiser(MLPNet(width=8, num_blocks=1)), _teacher())


@pytest.mark.parametrize("method", ["edm", "cd", "ct", "ict", "ect"])
def test_tiny_overfit_loss_decreases(method):
    torch.manual_seed(0)
    obj = _build(method, total_steps=10**6) if method in ("ct", "ict") else _build(method)
    x0 = _x0(48, seed=1)
    opt = torch.optim.Adam(obj.model.parameters(), lr=3e-3)

    def loss_at(step):
        return obj(x0, None, step, StepRandom(0, step % 4, 48)).loss

    with torch.no_grad():
        start = sum(loss_at(k).item() for k in range(4))
    for step in range(50):
        loss = loss_at(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_optimizer_step(step)
    with torch.no_grad():
        end = sum(loss_at(k).item() for k in range(4))
    assert end < 0.9 * start, (start, end)


def test_method_registry_is_the_one_method_list():
    import typing

    from cmkit.training.config import TrainConfig
    from cmkit.training.objectives import METHOD_SPECS, METHODS, TEACHER_METHODS, BaseObjective, TargetObjective

    assert METHODS == tuple(METHOD_SPECS) == ("edm", "cd", "ct", "ict", "ect", "sct", "scd", "tcd")
    assert TEACHER_METHODS == ("cd", "ect", "scd", "tcd")
    assert typing.get_args(typing.get_type_hints(TrainConfig)["method"]) == METHODS
    assert {m for m, s in METHOD_SPECS.items() if s.takes_run_length} == {"ct", "ict"}
    assert {m: s.parameterization for m, s in METHOD_SPECS.items()}["edm"] == "edm"
    # the no-op hooks live in one base; only methods with a target network override them
    for method, spec in METHOD_SPECS.items():
        assert issubclass(spec.objective, BaseObjective)
        stateful = issubclass(spec.objective, TargetObjective)
        assert stateful == (method in ("cd", "ct", "tcd"))
        for hook in ("after_optimizer_step", "state_dict", "load_state_dict"):
            owner = TargetObjective if stateful else BaseObjective
            assert getattr(spec.objective, hook) is getattr(owner, hook), (method, hook)


def test_ct_target_missing_from_a_checkpoint_is_named():
    with pytest.raises(ValueError, match=r"lacks the CT target network \('target'\); was it saved by a CT run"):
        _build("ct").load_state_dict({})


class CountingWrapper(nn.Module):
    """Stands for the loop's DistributedDataParallel wrapper: counts the calls with and without gradients."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, {True: 0, False: 0}

    def forward(self, *args):
        self.calls[torch.is_grad_enabled()] += 1
        return self.module(*args)


@pytest.mark.parametrize("method", ["edm", "cd", "ct", "ict", "ect"])
def test_only_the_gradient_pass_goes_through_the_online_wrapper(method):
    """DDP must see exactly one forward with gradients per loss; target and teacher passes bypass it."""
    for mu in ([0.0, 0.95] if method == "cd" else [None]):  # CD with mu = 0 uses the online network as its target
        obj = _build(method, **({"target_ema": mu} if mu is not None else {}))
        assert obj.online is obj.model
        wrapper = CountingWrapper(obj.model)
        obj.set_online(wrapper)
        assert obj.online is wrapper
        obj(_x0(), None, 3, StepRandom(0, 3, B)).loss.backward()
        assert wrapper.calls == {True: 1, False: 0}, (method, mu)
        obj.set_online(None)
        assert obj.online is obj.model
    with pytest.raises(ValueError, match="set_online needs a wrapper of this objective's model"):
        obj.set_online(CountingWrapper(copy.deepcopy(obj.model)))
