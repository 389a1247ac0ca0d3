"""Pipeline directories: the parameterization entry and its one reader."""

import json
import pytest
from cmkit import ConsistencyModelPipeline
from builders import make_mlp_pipe


def test_bad_parameterization_entry_is_rejected(tmp_path):
    make_mlp_pipe((2,)).save_pretrained(tmp_path / "p")
    path = tmp_path / "p" / "model_index.json"
    index = json.loads(path.read_text())
    index["cmkit_parameterization"] = "eps"
    path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="must be 'consistency' or 'edm'"):
        ConsistencyModelPipeline.from_pretrained(tmp_path / "p")


def test_read_parameterization_is_the_one_reader(tmp_path):
    import json as _json

    from cmkit.pipeline_io import read_parameterization

    assert read_parameterization(tmp_path) == "consistency"  # no model_index.json: a bare consistency folder
    (tmp_path / "model_index.json").write_text(_json.dumps({"cmkit_parameterization": "edm"}))
    assert read_parameterization(tmp_path) == "edm"
    (tmp_path / "model_index.json").write_text(_json.dumps({"cmkit_parameterization": "vp"}))
    with pytest.raises(ValueError, match="cmkit_parameterization in .*model_index.json must be 'consistency' or 'edm', got 'vp'"):
        read_parameterization(tmp_path)
