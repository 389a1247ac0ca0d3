"""``build_network``: the presets for image data, scaled down with ``--model-option``, train and export; the CT
target budget warning."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from cmkit import ConsistencyModelPipeline
from cmkit.cli import main
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.models.song_unet import SongUNet
from cmkit.training.build import build_data, build_model, build_network, build_objective, objective_options
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.objectives.ct import MIN_TARGET_BUDGET, CTOptions, low_target_budget_message
from cmkit.training.schedules import ct_target_budget


@pytest.mark.slow  # 8-16 s on 2 shared cores: a whole run (build, one iCT step, samples, export)
def test_a_scaled_down_ddpmpp_trains_one_step_on_digits_at_16_pixels(tmp_path):
    out = tmp_path / "ddpmpp"
    assert main(["train", "--method", "ict", "--data", "digits", "--resolution", "16", "--model", "ddpmpp",
                 "--model-option", "model_channels=16", "--model-option", "num_blocks=1", "--steps", "1",
                 "--batch-size", "4", "--num-samples", "4", "--no-progress", "--seed", "1", "--output", str(out)]) == 0
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["_class_name"] == "SongUNet" and config["model_channels"] == 16 and config["num_blocks"] == 1
    assert (config["img_resolution"], config["in_channels"], config["label_dim"]) == (16, 1, 10)
    assert json.loads((out / "model_index.json").read_text())["unet"] == ["cmkit", "SongUNet"]
    pipe = ConsistencyModelPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    images = pipe(batch_size=2, num_inference_steps=1, output_type="pt", generator=generator).images
    assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()


def test_unknown_presets_and_point_data_are_refused():
    digits = build_data(TrainConfig(data=DataConfig(kind="digits")))
    with pytest.raises(ValueError, match="edm2-img64-s"):
        build_network(TrainConfig(model="ddpm"), digits)
    points = build_data(TrainConfig(data=DataConfig(kind="toy", toy="moons")))
    with pytest.raises(ValueError, match="UNet for images"):
        build_network(TrainConfig(model="ncsnpp"), points)
    assert isinstance(build_network(TrainConfig(model="ncsnpp", model_options={"model_channels": 8, "num_blocks": 1}),
                                    digits), SongUNet)


def _teacher_and_data(tmp_path):
    """A tiny DDPM++ EDM teacher and an 8 x 8 RGB zip data set (unconditional)."""
    from builders import edm_archive
    from cmkit.models.denoiser import Denoiser
    from cmkit.models.presets import build_preset_for_data

    edm_archive(tmp_path / "data.zip", n=4, labels=False)
    data = build_data(TrainConfig(data=DataConfig(kind="zip", path=str(tmp_path / "data.zip"), resolution=8)))
    torch.manual_seed(0)
    net = build_preset_for_data("ddpmpp", 8, 3, None, model_channels=8, num_blocks=1, channel_mult=[1, 1])
    return Denoiser(net, "edm").eval(), data


def test_a_student_is_the_teachers_network_with_the_model_options_applied(tmp_path):
    """ECT's student dropout (0.2) differs from its teacher's (0.13): --model-option sets it on the student."""
    teacher, data = _teacher_and_data(tmp_path)
    config = TrainConfig(method="ect", teacher="t.pkl", model="ddpmpp", model_options={"dropout": 0.2})
    student = build_model(config, data, teacher)
    assert type(student.net) is SongUNet and teacher.net.config["dropout"] == 0.13
    assert dict(student.net.config) == {**dict(teacher.net.config), "dropout": 0.2}
    auto = build_model(TrainConfig(method="cd", teacher="t.pkl"), data, teacher)
    assert dict(auto.net.config) == dict(teacher.net.config)


def test_a_student_model_of_another_class_or_an_unknown_option_is_refused(tmp_path):
    teacher, data = _teacher_and_data(tmp_path)
    with pytest.raises(ValueError, match="'adm-imagenet64' is a DhariwalUNet, but the teacher's network is a SongUNet"):
        build_model(TrainConfig(method="cd", teacher="t.pkl", model="adm-imagenet64"), data, teacher)
    with pytest.raises(ValueError, match="unknown model 'ddpm'"):
        build_model(TrainConfig(method="cd", teacher="t.pkl", model="ddpm"), data, teacher)
    with pytest.raises(ValueError, match=r"unknown SongUNet argument\(s\) \['width'\]"):
        build_model(TrainConfig(method="cd", teacher="t.pkl", model_options={"width": 8}), data, teacher)

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
