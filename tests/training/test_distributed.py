"""Two CPU processes (torchrun, gloo) train the same weights as one process with the same global batch.

Tolerance: every trained tensor within 1e-6 relative to its own max magnitude (plus 1e-7 absolute). The two runs
differ only in float summation order (per-process means averaged by all_reduce vs one mean), since the data
slice, the noise and the sigmas of every sample come from one global draw per step.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from cmkit.io.weights import load_state_dict
from cmkit.training import checkpoint as ckpt
from cmkit.training.build import build_data, build_model
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.loop import train

RTOL, ATOL = 1e-6, 1e-7


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    config = TrainConfig(
        method="ict", data=DataConfig(kind="digits"), model="mlp",
        model_options={"width": 32, "num_blocks": 1, "embedding_dim": 8},
        steps=4, batch_size=8, lr=2e-3, save_every=0, progress=False, num_samples=4, ema_rates=(0.9,), log_every=1,
        output_dir=str(tmp_path / "one"), device="cpu",
    )
    train(config)
    two = config.replace(output_dir=str(tmp_path / "two"))
    two.to_json(tmp_path / "two.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cmkit", "train", "--config", str(tmp_path / "two.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained ict") == 1  # only rank 0 reports
    info = (tmp_path / "two" / "training_info.json").read_text()
    assert '"world_size": 2' in info

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
