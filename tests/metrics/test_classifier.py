"""The digits classifier behind FD-digits: accuracy, resizing, input checks, round trip, deterministic training."""

import importlib.util
from pathlib import Path
import pytest
import torch
from cmkit.data.digits import load_digits
from cmkit.metrics import (
    DigitsClassifier,
    classifier_accuracy,
    digits_features,
    load_digits_classifier,
)


ROOT = Path(__file__).resolve().parents[2]


def test_shipped_classifier_is_accurate_on_held_out_digits():
    x, y = load_digits("test")
    assert classifier_accuracy(x, y) >= 0.98
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    assert classifier_accuracy(x, shuffled) < 0.3


def test_classifier_area_downsamples_larger_images():
    x, _ = load_digits("test")
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 16x16: area-down is exact
    assert torch.equal(digits_features(up), digits_features(x))


def test_classifier_input_checks():
    x, y = load_digits("test")
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        classifier_accuracy(x[:, 0], y)
    with pytest.raises(ValueError, match="multiple of 8"):
        digits_features(torch.zeros(2, 1, 12, 12))
    with pytest.raises(ValueError, match=r"x \* 2 - 1"):
        digits_features((x + 1) * 127.5)
    with pytest.raises(ValueError, match="one label per sample"):
        classifier_accuracy(x, y[:-1])


def test_classifier_save_and_load_round_trip(tmp_path):
    model = load_digits_classifier()
    model.save_pretrained(tmp_path)
    again = DigitsClassifier.from_pretrained(tmp_path)
    assert dict(again.config) == dict(model.config)
    x, _ = load_digits("test")
    assert torch.equal(again.features(x[:8]), model.features(x[:8]))


def test_training_script_is_deterministic(tmp_path, capsys):
    path = ROOT / "scripts" / "train_digits_classifier.py"
    spec = importlib.util.spec_from_file_location("train_digits_classifier", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    try:
        outs = []
        for name in ("a", "b"):
            assert script.main(["--out", str(tmp_path / name), "--epochs", "1", "--no-calibration"]) == 0
            assert "held-out" in capsys.readouterr().out
            outs.append(DigitsClassifier.from_pretrained(tmp_path / name).state_dict())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
