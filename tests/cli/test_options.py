"""Checks shared by the commands (cmkit.cli.options): accepted --out types are exactly those the message lists."""

import numpy as np
import pytest
from PIL import Image

from cmkit.cli import main
from cmkit.cli.options import check_out_path, image_suffixes
from cmkit.cli.sample import default_model_dir


def test_the_message_lists_exactly_the_accepted_suffixes(tmp_path):
    suffixes = image_suffixes()
    assert suffixes[:3] == (".png", ".jpg", ".jpeg")
    for suffix in (*suffixes, ".npy"):
        assert check_out_path(tmp_path / f"x{suffix.upper()}", extra=(".npy",)).suffix.lower() == suffix
    with pytest.raises(ValueError) as err:
        check_out_path("x.txt", extra=(".npy",))
    listed = str(err.value)
    assert listed == f"--out must end in an image ({', '.join(suffixes)}) or .npy (raw samples), got x.txt"
    with pytest.raises(ValueError, match=r"must end in an image \(\.png, .*\), got x\.npy"):
        check_out_path("x.npy")  # an image-only flag does not offer .npy


def test_sample_and_edit_accept_a_jpg_and_list_what_they_accept(tmp_path, capsys):
    assert main(["sample", "--batch-size", "2", "--out", str(tmp_path / "grid.jpg")]) == 0
    assert Image.open(tmp_path / "grid.jpg").format == "JPEG"
    assert main(["sample", "--out", str(tmp_path / "grid.txt")]) == 1
    err = capsys.readouterr().err
    assert ".jpg" in err and ".npy" in err and "only" not in err
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8), mode="L").save(tmp_path / "in.png")
    edit = ["edit", "denoise", "--model", str(default_model_dir()), "--image", str(tmp_path / "in.png"),
            "--sigma", "0.5"]
    assert main([*edit, "--out", str(tmp_path / "out.txt")]) == 1
    err = capsys.readouterr().err
    assert "--out must end in an image (.png, .jpg" in err and ".npy" not in err
    assert main([*edit, "--out", str(tmp_path / "out.jpg")]) == 0


def test_the_shared_flags_are_one_definition_in_every_command():
    from cmkit.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    helps: dict[str, set] = {}
    for name in ("sample", "eval", "tune-timesteps", "demo"):
        parser = subparsers.choices[name]
        args = parser.parse_args([])
        assert (args.model, args.seed, args.device) == (None, 0, "cpu")
        for action in parser._actions:
            if action.dest in ("model", "device"):
                helps.setdefault(action.dest, set()).add(action.help.replace(" or hub id", ""))
    assert helps == {"model": {"pipeline directory (default: the bundled digits model)"},
                     "device": {"torch device, e.g. cpu or cuda (default cpu)"}}
    assert subparsers.choices["sample"].parse_args([]).batch_size == 16
    assert subparsers.choices["eval"].parse_args([]).batch_size == 1000


@pytest.mark.parametrize("command", ["sample", "eval", "tune-timesteps", "demo"])
def test_a_missing_bundled_model_asks_for_model_dir(command, tmp_path, capsys, monkeypatch):
    from cmkit.cli import sample as sample_cli

    monkeypatch.setattr(sample_cli, "default_model_dir", lambda: tmp_path / "nothing_here")
    assert main([command]) == 1
    assert "the bundled digits model is not installed" in capsys.readouterr().err


def test_building_the_parser_imports_no_torch():
    # `cmkit --help` stays fast: train's config-generated flags are added only when `train` is parsed
    import subprocess
    import sys

    code = "import sys; from cmkit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_train_flags_appear_when_train_is_parsed(capsys):
    import pytest

    from cmkit.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "--dist-timeout" in out and "--batch-size" in out and "methods and their --option" in out
