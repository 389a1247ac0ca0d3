import json
import math
import re

import pytest
import torch

from cmkit import karras
from cmkit.cli import main
from cmkit.metrics.generate import generate_samples
from cmkit.tuning import (
    SearchResult,
    fd_digits_metric,
    save_default_timesteps,
    ternary_search,
    tune_two_step_timestep,
)


# ---------------------------------------------------------------- the search on synthetic unimodal metrics
SHAPES = {
    "quadratic": lambda i, a: (i - a) ** 2,
    "abs": lambda i, a: abs(i - a),
    "asymmetric": lambda i, a: (a - i) * 5.0 if i < a else math.sqrt(i - a),
    "bowl_with_offset": lambda i, a: 3.0 - 1.0 / (1.0 + abs(i - a)),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("coarse", [0, 5])
def test_ternary_search_finds_the_argmin_exactly(shape, coarse):
    f = SHAPES[shape]
    for low, high in [(1, 38), (0, 7), (3, 4), (5, 5), (1, 199)]:
        for argmin in sorted({low, high, (low + high) // 2, low + 1, high - 1} & set(range(low, high + 1))):
            calls: list[int] = []

            def objective(i: int, calls: list = calls, argmin: int = argmin) -> float:
                calls.append(i)
                return f(i, argmin)

            result = ternary_search(objective, low, high, coarse_points=coarse)
            assert result.best == argmin, (shape, low, high, argmin)
            assert result.value == f(argmin, argmin)
            assert len(calls) == len(set(calls)) == len(result.evaluations)  # each index once
            assert set(result.evaluations) <= set(range(low, high + 1))


def test_ternary_search_is_cheaper_than_brute_force():
    result = ternary_search(lambda i: (i - 613) ** 2, 0, 1000)
    assert result.best == 613 and len(result.evaluations) < 40


def test_ternary_search_input_errors():
    with pytest.raises(ValueError, match="empty"):
        ternary_search(lambda i: 0.0, 5, 4)
    with pytest.raises(ValueError, match="coarse_points"):
        ternary_search(lambda i: 0.0, 0, 10, coarse_points=2)
    with pytest.raises(ValueError, match="NaN at index"):
        ternary_search(lambda i: float("nan"), 0, 10)


def test_ternary_search_returns_the_best_evaluation_on_a_non_unimodal_metric():
    values = [5, 1, 5, 5, 5, 5, 5, 5, 0.5, 5, 5]
    result = ternary_search(lambda i: values[i], 0, 10, coarse_points=0)
    assert isinstance(result, SearchResult)
    assert result.value == min(result.evaluations.values())


# ---------------------------------------------------------------- tau <-> grid index (cmkit.karras)
def test_sigma_to_grid_index_inverts_the_grid():
    n = 40
    sigmas = karras.karras_sigmas(n)
    assert [karras.sigma_to_grid_index(float(s), n) for s in sigmas] == list(range(n))
    assert karras.karras_ramp_from_sigma(sigmas[22]) * (n - 1) == pytest.approx(22.0, abs=1e-9)
    assert karras.sigma_to_grid_index(1000.0, n, interior=True) == 1
    assert karras.sigma_to_grid_index(1e-5, n, interior=True) == n - 2
    with pytest.raises(ValueError, match="positive"):
        karras.sigma_to_grid_index(0.0, n)


# ---------------------------------------------------------------- end to end on a tiny pipeline
@pytest.fixture
def tiny_digits_pipeline(tmp_path):
    from cmkit.models.mlp import MLPNet
    from cmkit.pipeline import ConsistencyModelPipeline
    from cmkit.schedulers.cm import CMStochasticIterativeScheduler

    torch.manual_seed(0)
    net = MLPNet(sample_shape=(1, 8, 8), width=32, num_blocks=1, num_class_embeds=10)
    ConsistencyModelPipeline(net, CMStochasticIterativeScheduler(num_train_timesteps=8)).save_pretrained(tmp_path / "p")
    return tmp_path / "p"


def _load(path):
    from cmkit.pipeline import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_tune_end_to_end_saves_the_default(tiny_digits_pipeline):
    pipe = _load(tiny_digits_pipeline)
    seen = []
    result = tune_two_step_timestep(pipe, num_samples=360, seed=3, on_evaluation=lambda *a: seen.append(a))
    assert set(result.evaluations) <= set(range(1, 7)) and len(seen) == len(result.evaluations)
    assert result.value == min(result.evaluations.values()) == result.evaluations[result.index]
    assert result.tau == pytest.approx(float(karras.karras_grid_sigmas([result.index], 8)[0]))
    # The objective is deterministic: the same seed reproduces the winning value.
    labels = torch.arange(10).repeat_interleave(36)
    again = generate_samples(pipe, 360, 3, timesteps=[result.index, 0], class_labels=labels)
    assert fd_digits_metric(again, labels) == result.value

    save_default_timesteps(tiny_digits_pipeline, result.timesteps)
    reloaded = _load(tiny_digits_pipeline)
    assert reloaded.default_timesteps == {"2": [result.index, 0]}
    by_default = reloaded(batch_size=4, class_labels=[1, 2, 3, 4], num_inference_steps=2,
                          generator=torch.Generator().manual_seed(0), output_type="pt").images
    explicit = reloaded(batch_size=4, class_labels=[1, 2, 3, 4], num_inference_steps=None,
                        timesteps=result.timesteps, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(by_default, explicit)


def test_tune_with_a_custom_metric_and_bounds(tiny_digits_pipeline):
    pipe = _load(tiny_digits_pipeline)
    calls = []

    def metric(samples, labels):
        calls.append((tuple(samples.shape), None if labels is None else torch.bincount(labels).tolist()))
        return float(samples.abs().mean())

    result = tune_two_step_timestep(pipe, metric, num_samples=20, low=2, high=5)
    assert calls[0] == ((20, 1, 8, 8), [2] * 10)
    assert 2 <= result.index <= 5
    with pytest.raises(ValueError, match="inside the grid"):
        tune_two_step_timestep(pipe, metric, num_samples=20, low=0)
    with pytest.raises(ValueError, match="metric must be"):
        tune_two_step_timestep(pipe, "fid", num_samples=20)  # type: ignore[arg-type]


def test_save_default_timesteps_keeps_other_entries(tiny_digits_pipeline):
    path = tiny_digits_pipeline / "model_index.json"
    index = json.loads(path.read_text())
    index["cmkit_parameterization"] = "consistency"
    index["cmkit_default_timesteps"] = {"3": [6, 3, 0]}
    path.write_text(json.dumps(index))
    save_default_timesteps(tiny_digits_pipeline, [4, 0])
    saved = json.loads(path.read_text())
    assert saved["cmkit_default_timesteps"] == {"2": [4, 0], "3": [6, 3, 0]}
    assert saved["cmkit_parameterization"] == "consistency"


def test_tune_timesteps_cli(tiny_digits_pipeline, capsys):
    index_before = (tiny_digits_pipeline / "model_index.json").read_text()
    assert main(["tune-timesteps", "--model", str(tiny_digits_pipeline), "--num-samples", "360", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert "best: timesteps=[" in out and (tiny_digits_pipeline / "model_index.json").read_text() == index_before
    assert main(["tune-timesteps", "--model", str(tiny_digits_pipeline), "--num-samples", "360", "--coarse", "3"]) == 0
    out = capsys.readouterr().out
    best = json.loads(re.search(r"best: timesteps=(\[\d+, 0\])", out).group(1))
    assert _load(tiny_digits_pipeline).default_timesteps == {"2": best}


def test_tune_timesteps_cli_rejects_an_edm_teacher(tiny_digits_pipeline, capsys):
    path = tiny_digits_pipeline / "model_index.json"
    index = json.loads(path.read_text())
    index["cmkit_parameterization"] = "edm"
    path.write_text(json.dumps(index))
    assert main(["tune-timesteps", "--model", str(tiny_digits_pipeline)]) == 1
    assert "EDM teacher" in capsys.readouterr().err


def test_default_labels_balance_every_draw_of_360():
    from types import SimpleNamespace

    from cmkit.tuning import default_labels

    labels = default_labels(SimpleNamespace(num_classes=10), 720)
    # each 360-sample draw that FD-digits measures holds 36 of every class (not classes 0-4, then 5-9)
    for draw in labels.split(360):
        assert torch.bincount(draw, minlength=10).tolist() == [36] * 10
    assert default_labels(SimpleNamespace(num_classes=None), 720) is None
