"""``cmkit ema reconstruct`` end to end: a tiny run with power EMAs, a reconstructed pipeline that samples, errors."""

import json

import numpy as np
import pytest
import torch

from cmkit.cli import main
from cmkit.io.weights import load_state_dict

TINY = ["--method", "ict", "--data", "toy:moons", "--lr", "2e-3", "--no-progress", "--num-samples", "8",
        "--batch-size", "8", "--model-option", "width=16", "--model-option", "num_blocks=1",
        "--model-option", "embedding_dim=8"]


def unet_weights(directory):
    return load_state_dict(directory / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema") / "run"
    assert main(["train", *TINY, "--steps", "8", "--ema-std", "0.05", "0.1", "--ema-snapshot-every", "2",
                 "--output", str(out)]) == 0
    return out


def test_reconstruct_writes_a_pipeline_that_samples(run, tmp_path, capsys):
    out = tmp_path / "std0.07"
    assert main(["ema", "reconstruct", "--std", "0.07", str(run), "--output", str(out)]) == 0
    assert "sigma_rel 0.07 (gamma 11.245) at step 8 from 8 snapshots" in capsys.readouterr().out
    record = json.loads((out / "ema_reconstruction.json").read_text())
    assert record["step"] == 8 and record["samples_seen"] == 64 and len(record["snapshots"]) == 8
    assert sum(s["coefficient"] for s in record["snapshots"]) == pytest.approx(1.0)
    # the pipeline's weights are the recorded combination of the snapshot files
    got = unet_weights(out)
    combined = {k: 0.0 for k in got}
    for entry in record["snapshots"]:
        for k, v in load_state_dict(run / "phema" / entry["file"]).items():
            combined[k.removeprefix("net.")] = combined[k.removeprefix("net.")] + entry["coefficient"] * v.double()
    assert all(torch.allclose(got[k].double(), combined[k], atol=1e-6) for k in got)
    assert not torch.equal(got["output.weight"], unet_weights(run)["output.weight"])
    # ... and it samples, with the run's scheduler (N, sigma range) and model index
    assert json.loads((out / "model_index.json").read_text()) == json.loads((run / "model_index.json").read_text())
    points = tmp_path / "points.npy"
    assert main(["sample", "--model", str(out), "--batch-size", "4", "--out", str(points), "--dtype", "float32"]) == 0
    assert np.isfinite(np.load(points)).all() and np.load(points).shape == (4, 2)


def test_a_stored_std_reconstructs_the_exported_ema(run, tmp_path, capsys):
    # the run exports its first power EMA (0.05) at its last step: a snapshot the least squares picks alone
    assert main(["ema", "reconstruct", "--std", "0.05", "--std", "0.1", str(run), "--output", str(tmp_path / "two")]) == 0
    exported, got = unet_weights(run), unet_weights(tmp_path / "two" / "std-0.05")
    assert all(torch.allclose(got[k], exported[k], atol=1e-6) for k in exported)
    early = tmp_path / "early"
    assert main(["ema", "reconstruct", "--std", "0.1", str(run), "--output", str(early), "--step", "4"]) == 0
    snapshot = load_state_dict(run / "phema" / "phema-00000004-0.1.safetensors")
    assert all(torch.allclose(v, snapshot["net." + k], atol=1e-6) for k, v in unet_weights(early).items())


def test_errors_and_warnings(run, tmp_path, capsys):
    def fails(args, message):
        assert main(["ema", "reconstruct", *args]) == 1
        assert message in capsys.readouterr().err

    out = ["--output", str(tmp_path / "o")]
    fails(["--std", "0.07", str(run), "--step", "5", *out], "no snapshot at step 5; reconstruct at a step that has snapshots (2, 4, 6, 8)")
    fails(["--std", "0.3", str(run), *out], "--std must be a relative standard deviation sigma_rel in (0, 0.2887)")
    fails(["--std", "0.07", str(run), "--output", str(run)], "holds a training run")
    fails(["--std", "0.07", str(tmp_path / "nothing"), *out], "does not exist")
    plain = tmp_path / "plain"
    assert main(["train", *TINY, "--steps", "1", "--output", str(plain)]) == 0
    fails(["--std", "0.07", str(plain), *out], "holds no power-EMA snapshots; train with --ema-std 0.05 0.10 and --ema-snapshot-every N")
    (run / "phema").rename(plain / "phema")  # snapshots without the finished run's pipeline
    try:
        (plain / "model_index.json").rename(plain / "model_index.moved")
        fails(["--std", "0.07", str(plain), *out], "has no exported pipeline (model_index.json) yet")
    finally:
        (plain / "phema").rename(run / "phema")
    assert main(["ema", "reconstruct", "--std", "0.25", str(run), *out]) == 0
    assert "warning: sigma_rel 0.25 at step 8 is reconstructed poorly" in capsys.readouterr().err


def test_help_lists_ema_without_importing_torch(capsys):
    import subprocess
    import sys

    with pytest.raises(SystemExit):
        main(["ema", "reconstruct", "--help"])
    assert "--std X" in capsys.readouterr().out
    code = "import sys; from cmkit.cli import build_parser; print('ema' in build_parser().format_help(), 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["True", "False"]
