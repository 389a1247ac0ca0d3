"""SIGTERM / SIGINT stop a run after the current step with a checkpoint, exit 0, and ``--resume`` continues exactly."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cmkit.data import SamplerSource
from cmkit.data.toys import sample_toy
from cmkit.io.weights import load_state_dict
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.training import checkpoint as ckpt
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.loop import Trainer
from cmkit.training.objectives.edm import EDMObjective
from cmkit.training.preemption import StopSignals, TrainingStopped
from builders import HookedObjective

SRC = str(Path(__file__).resolve().parents[2] / "src")


# ----- the signal handlers ---------------------------------------------------------------------------------------
def test_stop_signals_record_instead_of_ending_and_restore_the_previous_handlers():
    seen = []
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.signal(signal.SIGTERM, lambda n, f: seen.append(n))
    try:
        with StopSignals() as stop:
            assert set(stop.active) == {signal.SIGTERM, signal.SIGINT}
            signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt
            signal.raise_signal(signal.SIGTERM)  # a repeat is not escalated, and the first one is kept
            assert stop.received == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM]  # our own handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def test_stop_signals_leave_ignored_signals_and_other_threads_alone():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            assert stop.active == (signal.SIGTERM,)
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    result = {}

    def in_thread():
        with StopSignals() as stop:  # signal.signal would raise ValueError outside the main thread
            result["active"] = stop.active

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert result["active"] == ()


def data():
    return SamplerSource(lambda n, g: sample_toy("moons", n, generator=g), sample_shape=(2,))


def make_edm(seed):
    torch.manual_seed(seed)
    return EDMObjective(Denoiser(MLPNet(sample_shape=(2,), width=16, num_blocks=1, embedding_dim=8, dropout=0.2), "edm"))


# ----- the loop, in process --------------------------------------------------------------------------------------
def SignalAt(inner, at, sig):
    """``inner``, raising signal ``sig`` in this process at step ``at`` (as a cluster's SIGTERM would arrive)."""
    return HookedObjective(inner, at, lambda step: signal.raise_signal(sig))


def test_trainer_finishes_the_step_saves_and_resumes_bit_identically(tmp_path):
    def config(name):
        return TrainConfig(
            method="edm", data=DataConfig(kind="toy", toy="moons"), model="mlp", steps=8, batch_size=8, lr=3e-3,
            output_dir=str(tmp_path / name), save_every=3, log_every=1, progress=False, num_samples=8, ema_rates=(0.9,),
        )

    full = Trainer(config("full"), make_edm(0), data())
    full.run()
    stopped = Trainer(config("stopped"), SignalAt(make_edm(0), at=4, sig=signal.SIGTERM), data())
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped) as info:
        stopped.run()
    assert info.value.step == 5 and info.value.signal_name == "SIGTERM"  # step index 4 is the 5th step; it finished
    assert info.value.checkpoint == ckpt.checkpoint_dir(tmp_path / "stopped", 5)
    assert ckpt.latest_checkpoint(tmp_path / "stopped") == info.value.checkpoint
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored after the run
    logged = [json.loads(line)["step"] for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5]

    resumed = Trainer(config("stopped"), make_edm(seed=7), data())
    assert resumed.resume() and resumed.start_step == 5
    resumed.run()
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert full.losses == resumed.losses


# ----- the command line, with real signals -------------------------------------------------------------------------
STEPS = 200
TOY = ["train", "--method", "edm", "--data", "toy:moons", "--steps", str(STEPS), "--batch-size", "8", "--lr", "2e-3",
       "--log-every", "1", "--save-every", "0", "--num-samples", "8", "--no-progress", "--device", "cpu",
       "--model-option", "width=16", "--model-option", "num_blocks=1", "--model-option", "embedding_dim=8"]


def cmkit(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.Popen([sys.executable, "-m", "cmkit", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_first_log_line(proc, out, limit=60.0):
    metrics, start = out / "metrics.jsonl", time.monotonic()
    while not (metrics.is_file() and metrics.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < limit, "the run logged no step"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("preemption") / "full"
    proc = cmkit(*TOY, "--output", str(out))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_stops_on_a_signal_with_a_checkpoint_and_resumes_bit_identically(tmp_path, uninterrupted, sig):
    if signal.getsignal(sig) == signal.SIG_IGN:
        pytest.skip(f"{sig.name} is ignored here (a background job), so also in the run this test starts")
    out = tmp_path / "run"
    proc = cmkit(*TOY, "--output", str(out))
    try:
        wait_for_first_log_line(proc, out)
        sent = time.monotonic()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"{sig.name}: exited {seconds:.2f} s after the signal")
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("cmkit train: stopped")]
    assert len(lines) == 1, stderr[-3000:]
    step = int(lines[0].split("after step ")[1].split(";")[0])
    assert 1 <= step < STEPS  # it stopped early, after a finished step
    saved = ckpt.checkpoint_dir(out, step)
    assert lines[0] == (
        f"cmkit train: stopped by {sig.name} after step {step}; checkpoint saved to {saved}; continue with "
        f"cmkit train --output {out} --resume"
    )
    assert ckpt.latest_checkpoint(out) == saved and ckpt.load_checkpoint(saved).step == step
    assert not (out / "unet").exists()  # no pipeline exported from a stopped run

    proc = cmkit("train", "--output", str(out), "--resume", "--no-progress")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"trained edm for {STEPS} steps ({STEPS - step} this session)" in stdout
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_state_dict(uninterrupted / weights), load_state_dict(out / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = [ckpt.load_checkpoint(ckpt.latest_checkpoint(d)) for d in (uninterrupted, out)]
    assert all(torch.equal(final[0].model[k], final[1].model[k]) for k in final[0].model)
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, STEPS + 1))
