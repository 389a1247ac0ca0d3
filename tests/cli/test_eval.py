"""cmkit eval: the digits table and JSON, teachers and toys."""

import importlib.util
import pytest
from cmkit.metrics import (
    fd_digits_floor,
)
from builders import fake_extractor, tiny_pipeline_dir  # noqa: F401 - fake_extractor is a fixture


def test_eval_cli_digits_table_and_json(tmp_path, capsys):
    import json

    from cmkit.cli import main

    model = tiny_pipeline_dir(tmp_path / "p", (1, 8, 8), 10)
    out_json = tmp_path / "r.json"
    assert main(["eval", "--model", str(model), "--draws", "2", "--timesteps", "5", "0", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "floor (train vs held-out" in out and "timesteps [5, 0]" in out and "FD-digits" in out
    rows = json.loads(out_json.read_text())["results"]
    assert [r["nfe"] for r in rows] == [1, 2, 2]
    assert all(len(r["draws"]) == 2 and r["accuracy"] is not None and r["ratio"] > 1 for r in rows)
    assert rows[0]["floor_mean"] == pytest.approx(fd_digits_floor()[0])


def test_eval_cli_teacher_and_toy(tmp_path, capsys):
    from cmkit.cli import main

    teacher = tiny_pipeline_dir(tmp_path / "t", (1, 8, 8), 10, parameterization="edm")
    assert main(["eval", "--model", str(teacher), "--draws", "2", "--heun-steps", "2"]) == 0
    assert "EDM Heun 2 steps" in capsys.readouterr().out
    toy = tiny_pipeline_dir(tmp_path / "toy", (2,))
    assert main(["eval", "--model", str(toy)]) == 1
    assert "--toy" in capsys.readouterr().err
    if importlib.util.find_spec("cmkit.data.toys") is not None:
        assert main(["eval", "--model", str(toy), "--toy", "moons", "--num-samples", "500", "--draws", "2"]) == 0
        assert "SWD" in capsys.readouterr().out


def _digits_reference_npz(path):
    """The digits training images as an .npz of uint8 images, quantised as the samples are."""
    import numpy as np

    from cmkit.data.digits import load_digits
    from cmkit.metrics.fid import quantize_uint8

    images, _ = load_digits("train")
    np.savez(path, images=quantize_uint8(images).numpy())
    return path


def test_eval_fid_on_the_bundled_digits_model(tmp_path, capsys, fake_extractor):
    import json

    from cmkit.cli import main
    from cmkit.metrics.fid_stats import load_stats

    ref = _digits_reference_npz(tmp_path / "digits.npz")
    stats = tmp_path / "refs" / "digits-fake.npz"
    out_json = tmp_path / "fid.json"
    argv = ["eval", "--fid", "--fid-extractor", "fake", "--num-samples", "12", "--batch-size", "12",
            "--json", str(out_json)]
    assert main(argv + ["--steps", "1", "2", "--fid-ref", str(ref), "--fid-ref-out", str(stats),
                        "--save-images", str(tmp_path / "png")]) == 0
    captured = capsys.readouterr()
    assert "not comparable to published numbers" in captured.err and "seeds 0-11, 12-23, 24-35" in captured.out
    assert "FD (fake, not FID)" in captured.out and "min" in captured.out
    summary = json.loads(out_json.read_text())
    assert summary["metric"] == "fd_fake" and summary["reference"]["num_images"] == 1437
    assert summary["protocol"]["num_samples"] == 12 and summary["protocol"]["runs"] == 3
    rows = summary["results"]
    assert [r["nfe"] for r in rows] == [1, 2]
    for r in rows:
        assert [run["seeds"] for run in r["runs"]] == [[0, 11], [12, 23], [24, 35]]
        assert r["fid_min"] == min(run["fid"] for run in r["runs"]) > 0
    assert load_stats(stats).num_images == 1437
    assert len(list((tmp_path / "png" / "1-step" / "000000").glob("*.png"))) == 36
    # the saved statistics are reused, and the same seeds give the same numbers
    assert main(argv + ["--steps", "1", "--fid-ref", str(stats)]) == 0
    again = json.loads(out_json.read_text())["results"]
    assert [run["fid"] for run in again[0]["runs"]] == [run["fid"] for run in rows[0]["runs"]]


def test_eval_fid_fails_fast_with_what_to_fix(tmp_path, capsys, monkeypatch):
    import sys

    import numpy as np
    import torch

    from cmkit.cli import main
    from cmkit.metrics import fid

    ref = _digits_reference_npz(tmp_path / "digits.npz")
    assert main(["eval", "--fid"]) == 1
    assert "--fid needs --fid-ref" in capsys.readouterr().err
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    assert main(["eval", "--fid", "--fid-ref", str(ref), "--num-samples", "10"]) == 1
    err = capsys.readouterr().err
    assert fid.WEIGHTS_FILE_NAME in err and fid.WEIGHTS_URL in err and fid.WEIGHTS_ENV in err
    weights = tmp_path / "inception.pth"
    torch.save({"w": torch.zeros(1)}, weights)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    fid.load_inception.cache_clear()
    assert main(["eval", "--fid", "--fid-ref", str(ref), "--inception-weights", str(weights)]) == 1
    assert "pip install 'cmkit[fid]'" in capsys.readouterr().err
    assert main(["eval", "--fid", "--fid-ref", str(tmp_path / "missing")]) == 1
    assert "--fid-ref" in capsys.readouterr().err
    assert main(["eval", "--fid", "--fid-ref", str(ref), "--toy", "moons"]) == 1
    assert "drop --toy" in capsys.readouterr().err
    assert main(["eval", "--fid", "--fid-ref", str(ref), "--num-samples", "0"]) == 1
    assert "at least 2 samples per run" in capsys.readouterr().err
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2), sigma=np.eye(2))
    assert main(["eval", "--fid", "--fid-ref", str(tmp_path / "stats.npz"), "--fid-ref-out", str(tmp_path / "o.npz")]) == 1
    assert "statistics file already" in capsys.readouterr().err
