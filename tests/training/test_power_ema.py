"""EDM2's power-function EMA: sigma_rel <-> gamma, the tracker against the profile it stands for, post-hoc
reconstruction against an exact power EMA of the same trajectory, snapshots, config and exact resume."""

import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cmkit.data import SamplerSource
from cmkit.io.weights import load_state_dict
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.training import checkpoint as ckpt
from cmkit.training.build import load_denoiser
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.ema_snapshots import (
    list_snapshots, reconstruct_averages, remove_snapshots_after, select_snapshots, snapshot_path, write_snapshots,
)
from cmkit.training.loop import Trainer
from cmkit.training.objectives.edm import EDMObjective
from cmkit.training.power_ema import (
    MAX_SIGMA_REL, PowerEMA, gamma_to_sigma_rel, power_ema_beta, profile_inner_product, sigma_rel_to_gamma,
    solve_reconstruction,
)
from builders import HookedObjective

trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def exact_power_ema(trajectory: np.ndarray, t: int, sigma_rel: float) -> np.ndarray:
    """The power EMA after ``t`` steps, straight from its profile: ``theta_tau`` (after step tau) weighs
    ``integral of p_t over (tau - 1, tau] = (tau^(g+1) - (tau-1)^(g+1)) / t^(g+1)`` (EDM2 Eq. 121), in float64."""
    g = sigma_rel_to_gamma(sigma_rel)
    tau = np.arange(1, t + 1, dtype=np.float64)
    weights = (tau ** (g + 1) - (tau - 1) ** (g + 1)) / float(t) ** (g + 1)
    assert weights.sum() == pytest.approx(1.0, rel=1e-12)
    return weights @ trajectory[:t]


def noisy_descent(steps: int, size: int, seed: int = 0) -> np.ndarray:
    """Weights after each of ``steps`` noisy gradient steps toward a random optimum (rows: steps 1..steps)."""
    rng = np.random.default_rng(seed)
    target, theta, rows = rng.normal(size=size), np.zeros(size), []
    for _ in range(steps):
        theta = theta + 0.02 * (target - theta) + 0.05 * rng.normal(size=size)
        rows.append(theta.copy())
    return np.asarray(rows, dtype=np.float32).astype(np.float64)  # what a float32 network holds


def set_weights(model: torch.nn.Module, flat: np.ndarray) -> None:
    torch.nn.utils.vector_to_parameters(torch.as_tensor(flat, dtype=torch.float32), model.parameters())


def flat_average(tracker: PowerEMA, std: float) -> np.ndarray:
    return np.concatenate([v.double().numpy().ravel() for v in tracker.averages[std].values()])


# ----- sigma_rel <-> gamma, beta, inner products --------------------------------------------------------------
def test_sigma_rel_and_gamma_round_trip_with_edm2_values():
    # EDM2 Section 3.2: the stored EMAs sigma_rel 0.05 and 0.10 have gamma 16.97 and 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    assert gamma_to_sigma_rel(0.0) == pytest.approx(MAX_SIGMA_REL) == pytest.approx(1 / math.sqrt(12))
    for std in (1e-3, 0.01, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.28):
        gamma = sigma_rel_to_gamma(std)
        assert gamma > 0 and gamma_to_sigma_rel(gamma) == pytest.approx(std, rel=1e-12)
    # Eq. 123 against its definition: the standard deviation of tau / t under p_t (numerical integration)
    u = np.linspace(0.0, 1.0, 200_001)
    for gamma in (0.5, 6.94, 16.97):
        density = (gamma + 1) * u**gamma
        mean = trapezoid(u * density, u)
        assert math.sqrt(trapezoid((u - mean) ** 2 * density, u)) == pytest.approx(gamma_to_sigma_rel(gamma), rel=1e-6)
    for bad in (0.0, -0.05, 0.29, float("nan"), True, "0.05"):
        with pytest.raises(ValueError, match="sigma_rel in"):
            sigma_rel_to_gamma(bad)


def test_beta_and_profile_inner_product():
    assert power_ema_beta(6.94, 1) == 0.0  # the first update replaces the initial weights
    assert power_ema_beta(6.94, 100) == pytest.approx(0.99 ** 7.94)
    for (ta, ga), (tb, gb) in [((100, 16.97), (300, 6.94)), ((300, 16.97), (100, 6.94)), ((200, 3.0), (200, 10.0))]:
        tau = np.linspace(0.0, min(ta, tb), 400_001)  # both profiles vanish past the earlier end
        pa = (ga + 1) * tau**ga / ta ** (ga + 1)
        pb = (gb + 1) * tau**gb / tb ** (gb + 1)
        numeric = trapezoid(pa * pb, tau)
        assert float(profile_inner_product(ta, ga, tb, gb)) == pytest.approx(numeric, rel=1e-6)
        assert profile_inner_product(ta, ga, tb, gb) == profile_inner_product(tb, gb, ta, ga)


# ----- the tracker is the profile -----------------------------------------------------------------------------
def test_tracker_equals_the_power_ema_computed_from_its_profile():
    model = torch.nn.Linear(4, 3)
    trajectory = noisy_descent(60, sum(p.numel() for p in model.parameters()), seed=1)
    tracker = PowerEMA(model, [0.05, 0.10, 0.2])  # holds the random initial weights, which must get weight 0
    for step in range(60):
        set_weights(model, trajectory[step])
        tracker.update(model, step)
        if step == 0:
            assert all(torch.equal(tracker.averages[s]["weight"], model.weight) for s in tracker.stds)
        if step + 1 in (1, 7, 30, 60):
            for std in tracker.stds:
                expected = exact_power_ema(trajectory, step + 1, std)
                np.testing.assert_allclose(flat_average(tracker, std), expected, rtol=1e-5, atol=1e-6)
    assert set(tracker.state_dict()) == {"ema_std_0.05", "ema_std_0.1", "ema_std_0.2"}
    with pytest.raises(ValueError, match="distinct"):
        PowerEMA(model, [0.05, 0.05])


# ----- post-hoc reconstruction --------------------------------------------------------------------------------
#: the stated tolerance: with snapshots of sigma_rel 0.05 and 0.10 every T/40 steps, a reconstructed std inside
#: or a little beyond them is within 0.1% of the distance between the two stored EMAs from the exact power EMA,
#: and within 5% of what separates the exact EMAs of X and 1.05 X (it resolves the std better than 5%).
RECONSTRUCTION_TOLERANCE = 1e-3
STD_RESOLUTION = 0.05


def test_reconstruction_from_snapshots_matches_the_exact_power_ema_of_the_trajectory(tmp_path):
    steps, every = 400, 10
    model = torch.nn.Linear(8, 8)
    trajectory = noisy_descent(steps, sum(p.numel() for p in model.parameters()))
    tracker = PowerEMA(model, [0.05, 0.10])
    for step in range(steps):
        set_weights(model, trajectory[step])
        tracker.update(model, step)
        if (step + 1) % every == 0:
            write_snapshots(tracker, tmp_path, step + 1, batch_size=32)
    snapshots = list_snapshots(tmp_path)
    assert len(snapshots) == 2 * steps // every and snapshots[-1].samples_seen == 32 * steps
    spread = np.linalg.norm(exact_power_ema(trajectory, steps, 0.05) - exact_power_ema(trajectory, steps, 0.10))
    for std, result in zip((0.075, 0.13), reconstruct_averages(snapshots, [0.075, 0.13])):
        exact = exact_power_ema(trajectory, steps, std)
        got = torch.nn.utils.parameters_to_vector(
            [result.weights[k] for k in ("weight", "bias")]).double().numpy()
        error = np.linalg.norm(got - exact)
        assert error < RECONSTRUCTION_TOLERANCE * spread, (std, error, spread)
        assert error < STD_RESOLUTION * np.linalg.norm(exact_power_ema(trajectory, steps, 1.05 * std) - exact)
        assert result.plan.relative_residual < 0.01 and result.plan.coefficients.sum() == pytest.approx(1.0)
    # at an earlier snapshot step only the snapshots up to it are used
    early = reconstruct_averages(snapshots, [0.075], step=200)[0]
    assert max(s.step for s in early.snapshots) == 200 and len(early.snapshots) == 40
    got = torch.nn.utils.parameters_to_vector([early.weights[k] for k in ("weight", "bias")]).double().numpy()
    assert np.linalg.norm(got - exact_power_ema(trajectory, 200, 0.075)) < RECONSTRUCTION_TOLERANCE * spread


def test_a_std_far_from_the_snapshots_warns_and_a_stored_one_is_exact():
    stored = [(t, s) for t in (50, 100) for s in (0.05, 0.10)]
    ts, gammas = [t for t, _ in stored], [sigma_rel_to_gamma(s) for _, s in stored]
    exact = solve_reconstruction(ts, gammas, 100, 0.10)
    np.testing.assert_allclose(exact.coefficients, [0, 0, 0, 1], atol=1e-9)
    assert exact.relative_residual < 1e-6
    assert solve_reconstruction(ts, gammas, 100, 0.25).relative_residual > 0.1


def test_snapshot_steps_selection_and_stale_snapshots(tmp_path):
    model = torch.nn.Linear(2, 1)
    tracker = PowerEMA(model, [0.05])
    for step in (2, 4, 6):
        write_snapshots(tracker, tmp_path, step, batch_size=4)
    leftover = snapshot_path(tmp_path, 8, 0.05).with_name(".phema-00000008-0.05.safetensors.abc123.tmp")
    leftover.write_bytes(b"half")
    snapshots = list_snapshots(tmp_path)
    assert select_snapshots(snapshots, None)[0] == 6 and len(select_snapshots(snapshots, 4)[1]) == 2
    with pytest.raises(ValueError, match=r"no snapshot at step 5; .*\(2, 4, 6\)"):
        select_snapshots(snapshots, 5)
    with pytest.raises(ValueError, match="no snapshots"):
        select_snapshots([], None)
    removed = remove_snapshots_after(tmp_path, 4)
    assert sorted(p.name for p in removed) == [leftover.name, "phema-00000006-0.05.safetensors"]
    assert [s.step for s in list_snapshots(tmp_path)] == [2, 4]
    with pytest.warns(UserWarning, match="reconstructed poorly"):
        reconstruct_averages(list_snapshots(tmp_path), [0.25])
    snapshot_path(tmp_path, 4, 0.05).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="phema-00000004-0.05.safetensors is unreadable or not a cmkit"):
        list_snapshots(tmp_path)


# ----- config -------------------------------------------------------------------------------------------------
def test_config_fields_choose_the_exported_weights():
    base = dict(method="edm", data=DataConfig(kind="toy", toy="moons"), model="mlp")
    cfg = TrainConfig(**base, ema_stds=(0.05, 0.1))
    assert cfg.exported_ema_std == 0.05 and cfg.exported_ema_rate is None  # the power EMA, when there is one
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["ema_stds"] == [0.05, 0.1]
    assert TrainConfig(**base, ema_stds=(0.05, 0.1), export_ema_std=0.1).exported_ema_std == 0.1
    chosen = TrainConfig(**base, ema_stds=(0.05,), export_ema_rate=0.999)
    assert chosen.exported_ema_rate == 0.999 and chosen.exported_ema_std is None
    assert TrainConfig(**base, ema_rates=(), ema_stds=(0.1,)).exported_ema_std == 0.1
    assert TrainConfig(**base).exported_ema_std is None and TrainConfig(**base).exported_ema_rate == 0.999
    assert TrainConfig(**base, ema_stds=(0.1,), export="online").exported_ema_std is None
    for bad, message in [
        ({"ema_stds": (0.3,)}, r"ema_stds must be a relative standard deviation sigma_rel in \(0, 0.2887\)"),
        ({"ema_stds": (0.05, 0.05)}, "ema_stds must be distinct"),
        ({"ema_snapshot_every": 10}, "add ema_stds"),
        ({"ema_stds": (0.05,), "ema_snapshot_every": -1}, "ema_snapshot_every must be an integer >= 0"),
        ({"ema_stds": (0.05,), "export_ema_std": 0.1}, "not one of ema_stds"),
        ({"ema_stds": (0.05,), "export_ema_std": 0.05, "export_ema_rate": 0.999}, "give only one"),
        ({"ema_rates": ()}, "needs at least one EMA rate"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**base, **bad)


# ----- training: export, snapshots and exact resume -----------------------------------------------------------
def moons():
    from cmkit.data.toys import sample_toy

    return SamplerSource(lambda n, g: sample_toy("moons", n, generator=g), sample_shape=(2,))


def make_edm(seed):
    torch.manual_seed(seed)
    return EDMObjective(Denoiser(MLPNet(sample_shape=(2,), width=16, num_blocks=1, embedding_dim=8, dropout=0.1), "edm"))


class Crash(Exception):
    pass


def crash(step):
    raise Crash(step)


def test_resumed_run_equals_an_uninterrupted_one_with_the_same_snapshots(tmp_path):
    def config(name):
        return TrainConfig(
            method="edm", data=DataConfig(kind="toy", toy="moons"), model="mlp", steps=7, batch_size=8, lr=3e-3,
            output_dir=str(tmp_path / name), save_every=3, progress=False, num_samples=8,
            ema_rates=(0.9,), ema_stds=(0.05, 0.1), ema_snapshot_every=2,
        )

    full = Trainer(config("full"), make_edm(0), moons())
    full.run()
    names = sorted(p.name for p in (tmp_path / "full" / "phema").iterdir())
    assert names == [f"phema-{k:08d}-{s}.safetensors" for k in (2, 4, 6, 7) for s in ("0.05", "0.1")]
    # the exported weights are the power EMA 0.05 of the last checkpoint
    last = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "full"))
    assert {"ema_0.9", "ema_std_0.05", "ema_std_0.1"} <= set(last.ema)
    exported = load_denoiser(tmp_path / "full").state_dict()
    assert all(torch.equal(v, last.ema["ema_std_0.05"][k]) for k, v in exported.items())
    final = load_state_dict(tmp_path / "full" / "phema" / "phema-00000007-0.05.safetensors")
    assert all(torch.equal(v, final[k]) for k, v in exported.items())

    crashed = Trainer(config("crashed"), HookedObjective(make_edm(0), 4, crash), moons())
    with pytest.raises(Crash):
        crashed.run()  # dies in step 5, after the snapshot of step 4 and the checkpoint of step 3
    stale = tmp_path / "crashed" / "phema" / "phema-00000004-0.05.safetensors"
    assert stale.is_file()
    resumed = Trainer(config("crashed"), make_edm(seed=123), moons())
    assert resumed.resume() and resumed.start_step == 3
    resumed.run()
    for std, average in full.power_ema.averages.items():
        assert all(torch.equal(v, resumed.power_ema.averages[std][k]) for k, v in average.items()), std
    assert sorted(p.name for p in (tmp_path / "crashed" / "phema").iterdir()) == names  # none lost, none twice
    for name in names:  # the same tensors and header (safetensors orders the header's entries arbitrarily)
        a, b = (safe_open(str(tmp_path / run / "phema" / name), framework="pt") for run in ("full", "crashed"))
        assert a.metadata() == b.metadata() and a.keys() == b.keys()
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys()), name


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
    pytest.param("mps", marks=pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no MPS device")),
])
def test_the_tracker_stays_on_the_models_device_and_snapshots_to_files(device, tmp_path):
    torch.manual_seed(0)
    reference = torch.nn.Linear(3, 2)
    model = torch.nn.Linear(3, 2).to(device)
    model.load_state_dict(reference.state_dict())
    trackers = [PowerEMA(m, [0.05, 0.1]) for m in (reference, model)]
    for step in range(5):
        for m, tracker in zip((reference, model), trackers):
            with torch.no_grad():
                m.weight.mul_(0.9).add_(0.1 * (step + 1))
            tracker.update(m, step)
    assert all(v.device.type == device for avg in trackers[1].averages.values() for v in avg.values())
    assert trackers[1].copy_model(model, 0.1).weight.device.type == device
    write_snapshots(trackers[1], tmp_path, 5, batch_size=2)
    saved = load_state_dict(snapshot_path(tmp_path, 5, 0.1))
    assert all(torch.allclose(saved[k], v, atol=1e-6) for k, v in trackers[0].averages[0.1].items())
