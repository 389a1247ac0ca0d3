"""Several machines: two torchrun agents (``--nnodes 2``, static rendezvous on 127.0.0.1) stand for two nodes; the
run equals one process with the same global batch, and only global rank 0 writes although every process of a
one-process node has ``LOCAL_RANK`` 0. Tolerance as in test_distributed.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from cmkit.training import checkpoint as ckpt
from cmkit.training import distributed
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.distributed import setup_distributed
from cmkit.training.loop import train
from builders import torchrun_env

RTOL, ATOL = 1e-6, 1e-7


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(node_rank, port, cwd, *args):
    """The torchrun agent of node ``node_rank`` (one worker), started in its own directory ``cwd``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port), *args]
    return subprocess.Popen(cmd, cwd=cwd, env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


@pytest.mark.slow
def test_two_nodes_match_one_process_and_only_global_rank_0_writes(tmp_path):
    config = TrainConfig(
        method="ict", data=DataConfig(kind="digits"), model="mlp",
        model_options={"width": 32, "num_blocks": 1, "embedding_dim": 8}, steps=3, batch_size=8, lr=2e-3,
        save_every=0, progress=False, num_samples=4, ema_rates=(0.9,), log_every=1, device="cpu",
        output_dir=str(tmp_path / "one"),
    )
    train(config)
    config.to_json(tmp_path / "config.json")
    dirs = [tmp_path / "node0", tmp_path / "node1"]
    for d in dirs:
        d.mkdir()
    # a relative --output: were node 1's process to write, it would write into node1/run
    args = ["-m", "cmkit", "train", "--config", str(tmp_path / "config.json"), "--output", "run"]
    port = free_port()
    agents = [node(rank, port, d, *args) for rank, d in enumerate(dirs)]
    outputs = []
    try:
        for agent in agents:
            outputs.append(agent.communicate(timeout=300))
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.communicate()
    for agent, (_, stderr) in zip(agents, outputs):
        assert agent.returncode == 0, stderr[-3000:]
    assert outputs[0][0].count("trained ict") == 1 and "trained" not in outputs[1][0]  # the CLI reports on rank 0
    assert not (dirs[1] / "run").exists()  # global rank 1 (LOCAL_RANK 0) wrote nothing
    info = json.loads((dirs[0] / "run" / "training_info.json").read_text())
    assert info["world_size"] == 2 and info["gradient_averaging"] == "DistributedDataParallel"

    one = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "one"))
    two = ckpt.load_checkpoint(ckpt.latest_checkpoint(dirs[0] / "run"))
    assert one.model.keys() == two.model.keys()
    for name, a in one.model.items():
        assert torch.allclose(a, two.model[name], rtol=0, atol=ATOL + RTOL * a.abs().max().item()), name
    assert torch.allclose(one.state["losses"], two.state["losses"], rtol=1e-6)


def test_the_global_rank_decides_who_writes_and_the_local_rank_picks_the_gpu(monkeypatch):
    """Process 1 of node 1 (4 processes on 2 nodes): global rank 3, LOCAL_RANK 1 -> not the writer, on cuda:1."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # the group torchrun's worker joined
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed, "parse_device", lambda spec, name: torch.device(spec))  # no GPU needed
    ctx = setup_distributed("auto")
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (3, 4, 1)
    assert not ctx.is_main
    assert ctx.device == torch.device("cuda", 1)
