"""cmkit sample: grids, per-sample PNGs, .npy for point models, errors and help."""

import numpy as np
import pytest
from builders import make_mlp_pipe


def test_cli_sample_writes_grid_and_images(tmp_path, capsys):
    from PIL import Image

    from cmkit.cli import main

    make_mlp_pipe((1, 8, 8), num_class_embeds=10).save_pretrained(tmp_path / "m")
    rc = main(["sample", "--model", str(tmp_path / "m"), "--batch-size", "4", "--steps", "2", "--class-labels", "3",
               "--out", str(tmp_path / "grid.png"), "--out-dir", str(tmp_path / "ims"), "--scale", "2"])
    assert rc == 0
    assert Image.open(tmp_path / "grid.png").size == (32, 32)
    assert sorted(p.name for p in (tmp_path / "ims").iterdir()) == [f"0000{i}.png" for i in range(4)]
    assert "ms per sample" in capsys.readouterr().out


def test_cli_sample_timesteps_and_npy_for_point_models(tmp_path):
    from cmkit.cli import main

    make_mlp_pipe((2,)).save_pretrained(tmp_path / "m")
    rc = main(["sample", "--model", str(tmp_path / "m"), "--batch-size", "7", "--timesteps", "22", "0",
               "--out", str(tmp_path / "pts.npy")])
    assert rc == 0 and np.load(tmp_path / "pts.npy").shape == (7, 2)
    assert main(["sample", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "g.png")]) == 1


def test_cli_sample_errors(tmp_path, capsys, monkeypatch):
    from cmkit.cli import main
    from cmkit.cli import sample as sample_cli

    monkeypatch.setattr(sample_cli, "default_model_dir", lambda: tmp_path / "nothing_here")
    assert main(["sample"]) == 1
    assert "--model DIR" in capsys.readouterr().err
    make_mlp_pipe((1, 8, 8), num_class_embeds=10).save_pretrained(tmp_path / "m")
    assert main(["sample", "--model", str(tmp_path / "m"), "--batch-size", "3", "--class-labels", "1", "2"]) == 1
    assert "one label or one per sample" in capsys.readouterr().err


def test_cli_sample_help_has_examples(capsys):
    from cmkit.cli import main

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--timesteps 22 0" in out
