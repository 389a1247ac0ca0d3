"""Two CPU processes (torchrun, gloo) train the same weights as one process with the same global batch.

Tolerance: every trained tensor within 1e-6 relative to its own max magnitude (plus 1e-7 absolute). The two runs
differ only in float summation order (per-process means averaged by all_reduce vs one mean), since the data
slice, the noise and the sigmas of every sample come from one global draw per step. The same holds for gradient
accumulation (``--grad-accum``), for checkpoints moved between one and two processes, and for each way
:class:`~cmkit.training.distributed.GradientSync` averages (DistributedDataParallel or the flat all_reduce).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmkit.io.weights import load_state_dict
from cmkit.training import checkpoint as ckpt
from cmkit.training.build import build_data, build_model
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.loop import train
from builders import torchrun_env

RTOL, ATOL = 1e-6, 1e-7
TESTS = Path(__file__).resolve().parents[1]


def torchrun(*args, processes=2):
    """``torchrun --standalone`` with ``processes`` workers on this checkout; fails the test if the job fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *args],
        env=torchrun_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_weights(a, b, what):
    assert a.keys() == b.keys(), what
    for name, x in a.items():
        assert torch.allclose(x, b[name], rtol=0, atol=ATOL + RTOL * x.abs().max().item()), (what, name)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """4 iCT steps on the digits, checkpointed every 2 steps (all kept): on one process, and on two (torchrun)."""
    tmp_path = tmp_path_factory.mktemp("one_and_two")
    config = TrainConfig(
        method="ict", data=DataConfig(kind="digits"), model="mlp",
        model_options={"width": 32, "num_blocks": 1, "embedding_dim": 8},
        steps=4, batch_size=8, lr=2e-3, save_every=2, keep_checkpoints=0, progress=False, num_samples=4,
        ema_rates=(0.9,), log_every=1, output_dir=str(tmp_path / "one"), device="cpu",
    )
    train(config)
    two = config.replace(output_dir=str(tmp_path / "two"))
    two.to_json(tmp_path / "two.json")
    proc = torchrun("-m", "cmkit", "train", "--config", str(tmp_path / "two.json"))
    return tmp_path, config, proc


@pytest.mark.slow
def test_two_processes_match_one(one_and_two):
    tmp_path, config, proc = one_and_two
    assert proc.stdout.count("trained ict") == 1  # only rank 0 reports
    info = (tmp_path / "two" / "training_info.json").read_text()
    assert '"world_size": 2' in info
    assert json.loads(info)["gradient_averaging"] == "DistributedDataParallel"  # the overlapped path, after step 1

    one_ckpt = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "one"))
    two_ckpt = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "two"))
    worst = 0.0
    for name, a in one_ckpt.model.items():
        b = two_ckpt.model[name]
        assert torch.allclose(a, b, rtol=0, atol=ATOL + RTOL * a.abs().max().item()), name
        worst = max(worst, ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item())
    print(f"max relative difference, 2 processes vs 1: {worst:.2e}")
    # the processes really trained: every weight moved from its initial value (rebuilt as train() builds it) by
    # more than the 1-vs-2 tolerance (else the comparison above would pass untrained), and rank 0 logged every step
    # with the loss averaged over both processes
    torch.manual_seed(config.seed)
    initial = build_model(config, build_data(config), None).state_dict()
    assert initial.keys() == two_ckpt.model.keys()
    for name, start in initial.items():
        moved = (two_ckpt.model[name] - start).abs().max().item()
        assert moved > ATOL + RTOL * start.abs().max().item(), f"{name} did not move beyond the tolerance"
    logged = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == [1, 2, 3, 4]
    assert [entry["loss"] for entry in logged] == two_ckpt.state["losses"].tolist()
    assert all(entry["grad_norm"] > 0 for entry in logged)
    # ... and exported identical-up-to-rounding pipelines
    exported_one = load_state_dict(tmp_path / "one" / "unet" / "diffusion_pytorch_model.safetensors")
    exported_two = load_state_dict(tmp_path / "two" / "unet" / "diffusion_pytorch_model.safetensors")
    assert exported_one.keys() == exported_two.keys()
    assert all(
        torch.allclose(a, exported_two[k], rtol=0, atol=ATOL + RTOL * a.abs().max().item()) for k, a in exported_one.items()
    )
    assert one_ckpt.state["losses"].shape == (4,)
    assert torch.allclose(one_ckpt.state["losses"], two_ckpt.state["losses"], rtol=1e-6)


def rewound_copy(source, target, step):
    """A copy of the run in ``source`` as it was after ``step`` (later checkpoints removed), its config moved along."""
    shutil.copytree(source, target)
    for later in ckpt.list_checkpoints(target):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    (target / ckpt.CHECKPOINTS / "latest.json").write_text(json.dumps({"path": ckpt.checkpoint_dir(target, step).name}))
    config = TrainConfig.from_json(target / "train_config.json").replace(output_dir=str(target))
    config.to_json(target / "train_config.json")
    return config


@pytest.mark.slow
def test_grad_accum_and_checkpoints_across_process_counts(one_and_two):
    """1 process with K=2, and runs resumed at step 2 with the other number of processes, end where 1 process ends."""
    tmp_path, config, _ = one_and_two
    final = {"one": ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "one"))}

    train(config.replace(output_dir=str(tmp_path / "one_k2"), grad_accum=2))  # 1 process, 2 micro-batches of 4
    # a checkpoint written by 2 processes (DDP) continues on one ...
    rewound = rewound_copy(tmp_path / "two", tmp_path / "two_then_one", 2)
    train(rewound, resume=True)
    # ... and one written by one process continues on two, each now splitting its 4 samples into 2 micro-batches
    rewound_copy(tmp_path / "one", tmp_path / "one_then_two", 2)
    torchrun("-m", "cmkit", "train", "--output", str(tmp_path / "one_then_two"), "--resume", "--grad-accum", "2")

    for name in ("two", "one_k2", "two_then_one", "one_then_two"):
        final[name] = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / name))
        assert final[name].step == 4, name
        assert_same_weights(final["one"].model, final[name].model, name)
        assert_same_weights(final["one"].ema["ema_0.9"], final[name].ema["ema_0.9"], name)
        assert torch.allclose(final["one"].state["losses"], final[name].state["losses"], rtol=1e-6), name
    info = json.loads((tmp_path / "one_then_two" / "training_info.json").read_text())
    assert info["world_size"] == 2 and info["steps_this_session"] == 2
    assert info["gradient_averaging"] == "DistributedDataParallel"
    assert TrainConfig.from_json(tmp_path / "one_then_two" / "train_config.json").grad_accum == 2


@pytest.mark.slow
def test_every_gradient_averaging_path_matches_one_process(tmp_path):
    """DDP (also with an unused parameter), and the flat all_reduce for objectives whose gradient pass bypasses it."""
    from ddp_worker import SCENARIOS, run_scenario

    torchrun(str(TESTS / "ddp_worker.py"), str(tmp_path / "results.pt"), str(tmp_path / "runs"))
    two = torch.load(tmp_path / "results.pt", weights_only=True)
    expected_mode = {"ddp": "DistributedDataParallel", "unused_parameter": "DistributedDataParallel",
                     "no_set_online": "all_reduce", "bypassing": "all_reduce"}
    one_k1 = run_scenario("ddp", tmp_path / "one", grad_accum=1)
    for name in SCENARIOS:
        one = run_scenario(name, tmp_path / "one")
        assert two[name]["mode"] == expected_mode[name], name
        assert_same_weights(one["weights"], two[name]["weights"], name)
        shared = {k: two[name]["weights"][k] for k in one_k1["weights"]}  # less the unused layer
        assert_same_weights(one_k1["weights"], shared, f"{name} against one process without accumulation")
        assert two[name]["losses"] == pytest.approx(one["losses"], rel=1e-6), name
    assert two["unused_parameter"]["find_unused"] is True and two["ddp"]["find_unused"] is False
    assert "a second pass with gradients through the DistributedDataParallel network" in two["twice_error"]
    assert "in some micro-batches of the step but not in others (calls per micro-batch: [1, 0])" in two["mixed_error"]
