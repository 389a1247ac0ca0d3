"""TrainConfig: JSON round trip, errors, unknown keys and data specs."""

import json
import pytest
from cmkit.training.config import DataConfig, TrainConfig
from builders import toy_config


def test_config_json_round_trip(tmp_path):
    cfg = toy_config(tmp_path, objective_options={"num_scales": 18}, betas=(0.9, 0.99), tau=0.8)
    path = cfg.to_json(tmp_path / "c.json")
    again = TrainConfig.from_json(path)
    assert again == cfg
    assert json.loads(path.read_text())["data"] == {
        "kind": "toy", "toy": "8gaussians", "path": None, "resolution": None, "resize": "crop", "flip": False,
        "channels": None, "class_labels": None, "image_column": None, "label_column": None, "split": None, "workers": 2,
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"precision": "fp8"}, "precision must be one of 'fp32', 'bf16', 'fp16'"),
        ({"method": "gan"}, "method must be one of"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": True}, "steps must be a positive integer"),
        ({"log_every": float("nan")}, "log_every must be a positive integer"),
        ({"dist_timeout": float("inf")}, r"dist_timeout must be a positive number of seconds \(e.g. 300\)"),
        ({"ema_rates": (1.2,)}, r"EMA rates must lie in \[0, 1\)"),
        ({"ema_rates": ()}, "export='ema' needs at least one EMA rate"),
        ({"export_ema_rate": 0.5}, "not one of ema_rates"),
        ({"method": "cd"}, "pass the teacher's directory"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of 'constant', 'cosine', 'inverse_sqrt'"),
        ({"lr_schedule": "inverse_sqrt"}, r"lr_schedule 'inverse_sqrt' needs lr_decay_steps \(t_ref"),
        ({"lr_decay_steps": 100}, "lr_decay_steps applies to lr_schedule 'inverse_sqrt' only.*'constant'"),
        ({"lr_schedule": "inverse_sqrt", "lr_decay_steps": 0}, r"lr_decay_steps must be an integer >= 1 \(t_ref"),
        ({"lr_schedule": "inverse_sqrt", "lr_decay_steps": 2.5}, "lr_decay_steps must be an integer"),
        ({"lr_schedule": "inverse_sqrt", "lr_decay_steps": 9, "min_lr_ratio": 0.1}, "inverse_sqrt has none"),
    ],
)
def test_config_errors(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        toy_config(tmp_path, **changes)


def test_config_unknown_key_and_data_spec(tmp_path):
    d = toy_config(tmp_path).to_dict()
    d["learning_rate"] = 1
    with pytest.raises(ValueError, match="unknown key.*learning_rate"):
        TrainConfig.from_dict(d)
    assert DataConfig.parse("toy:moons") == DataConfig(kind="toy", toy="moons")
    assert DataConfig.parse("folder:/x/y", resolution=32).path == "/x/y"
    assert DataConfig.parse("digits").spec() == "digits"
    for kind in ("folder", "zip", "prepared"):
        assert DataConfig.parse(f"{kind}:/d/x").spec() == f"{kind}:/d/x" and DataConfig.parse(f"{kind}:/d/x").kind == kind
    with pytest.raises(ValueError, match="cannot read the data spec"):
        DataConfig.parse("imagenet")
    with pytest.raises(ValueError, match="cannot read the data spec"):
        DataConfig.parse("zip:")
    with pytest.raises(ValueError, match=r"workers must be an integer >= 0 \(background data processes"):
        DataConfig(workers=-1)
