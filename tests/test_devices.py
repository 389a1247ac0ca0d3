"""cmkit.devices: one parser for --device in every command and for pipe.to(...) (named to leave test_devices.py to
the device-cleanliness tests)."""

import pytest
import torch

from cmkit.cli import main
from cmkit.devices import parse_device
from cmkit.training.distributed import resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


def test_names_that_are_no_device_are_value_errors_listing_the_choices():
    assert parse_device("cpu") == torch.device("cpu") and parse_device(" CPU ") == torch.device("cpu")
    assert parse_device(torch.device("cpu")) == torch.device("cpu")
    assert parse_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("banana", "cuda:x", "", "cuda:-1"):
        with pytest.raises(ValueError, match=r"is not a device; use cpu, cuda, cuda:N \(GPU number N\), mps or auto"):
            parse_device(bad, "--device")
    with pytest.raises(ValueError, match="cmkit does not run on meta devices"):
        parse_device("meta")


@no_cuda
def test_cuda_without_cuda_names_the_reason_and_the_fix():
    for spec in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(ValueError, match=r"is not available: .*(no CUDA support|no CUDA GPU).*use cpu"):
            parse_device(spec)
    with pytest.raises(ValueError, match="device 'cuda:0' is not available"):
        resolve_device("cuda")  # cmkit train --device cuda
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_index_past_the_last_gpu_is_an_error():
    count = torch.cuda.device_count()
    assert parse_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
    with pytest.raises(ValueError, match=f"this machine has {count} CUDA GPU"):
        parse_device(f"cuda:{count}")


@pytest.mark.parametrize("device", ["banana", pytest.param("cuda", marks=no_cuda)])
@pytest.mark.parametrize("command", ["sample", "demo", "eval", "edit", "tune-timesteps"])
def test_every_command_rejects_a_bad_device_with_a_message(tmp_path, capsys, command, device):
    from cmkit.cli.sample import default_model_dir

    argv = {
        "sample": ["sample", "--out", str(tmp_path / "x.png")],
        "demo": ["demo", "--out", str(tmp_path / "x.png")],
        "eval": ["eval"],
        "tune-timesteps": ["tune-timesteps", "--no-save"],
        "edit": ["edit", "interpolate", "--model", str(default_model_dir()), "--out", str(tmp_path / "x.png")],
    }[command]
    assert main([*argv, "--device", device]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cmkit {command}: error: --device '{device}' is not"), err
    assert "use cpu" in err or "use cpu, cuda" in err


def test_pipeline_to_uses_the_same_parser():
    from cmkit.cli.sample import default_model_dir
    from cmkit.pipeline import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained(default_model_dir())
    with pytest.raises(ValueError, match="'banana' is not a device"):
        pipe.to("banana")
    with pytest.raises(ValueError, match="'banana' is not a device"):
        ConsistencyModelPipeline.from_pretrained(default_model_dir(), device="banana")
