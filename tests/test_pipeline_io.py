"""Pipeline directories: the parameterization entry and its one reader."""

import json
import pytest
import torch
from cmkit import CMStochasticIterativeScheduler, ConsistencyModelPipeline
from cmkit.models.mlp import MLPNet


def make_mlp_pipe(sample_shape=(2,), num_class_embeds=None, seed=0):
    torch.manual_seed(seed)
    net = MLPNet(sample_shape=sample_shape, width=16, num_blocks=1, embedding_dim=8, num_class_embeds=num_class_embeds)
    pipe = ConsistencyModelPipeline(net.eval(), CMStochasticIterativeScheduler(num_train_timesteps=40, clip_denoised=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


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
