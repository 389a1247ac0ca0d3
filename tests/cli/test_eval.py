"""cmkit eval: the digits table and JSON, teachers and toys."""

import importlib.util
import pytest
from cmkit.metrics import (
    fd_digits_floor,
)
from builders import tiny_pipeline_dir


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
