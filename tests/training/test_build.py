"""``build_network``: the presets for image data, scaled down with ``--model-option``, train and export."""

import json

import pytest
import torch

from cmkit import ConsistencyModelPipeline
from cmkit.cli import main
from cmkit.models.song_unet import SongUNet
from cmkit.training.build import build_data, build_network
from cmkit.training.config import DataConfig, TrainConfig


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
