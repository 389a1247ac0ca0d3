import warnings
from pathlib import Path

import pytest

from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.training.build import build_objective, objective_options
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.objectives.ct import MIN_TARGET_BUDGET, CTOptions, low_target_budget_message
from cmkit.training.schedules import ct_target_budget

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "digits"


def _ct_config(**objective_options):
    return TrainConfig(
        method="ct", data=DataConfig(kind="toy", toy="moons"), model="mlp", steps=3000,
        objective_options=objective_options, output_dir="unused",
    )


def _model():
    return Denoiser(MLPNet(width=16, num_blocks=1, embedding_dim=8), "consistency")


def test_a_ct_run_whose_target_barely_moves_warns_at_start():
    # the paper's mu0 = 0.95 over 3000 steps: sum_k (1 - mu(k)) = 4.0, far below what converged
    with pytest.warns(UserWarning, match=r"sum_k \(1 - mu\(k\)\) = 4\.0 over 3000 steps.*Lower mu0"):
        build_objective(_ct_config(), _model(), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_objective(_ct_config(mu0=0.0), _model(), None)  # budget 3000
        build_objective(_ct_config().replace(method="ict"), _model(), None)  # the rule is CT's only


def test_the_digits_ct_recipe_passes_the_target_budget_rule():
    config = TrainConfig.from_json(RECIPES / "ct.json")
    options = CTOptions(**objective_options(config))
    assert ct_target_budget(options.total_steps, options.s0, options.s1, options.mu0) >= MIN_TARGET_BUDGET
    assert low_target_budget_message(options) is None
