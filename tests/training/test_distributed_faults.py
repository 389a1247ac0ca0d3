"""Faults under torchrun (2 CPU processes, gloo): a signal to one process stops both at the same step with a
checkpoint; a frozen process ends the job after ``--dist-timeout`` with a clear error instead of a hang.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmkit.training import checkpoint as ckpt
from builders import torchrun_env

TIMEOUT_S = 10
TOY = ["--method", "edm", "--data", "toy:moons", "--steps", "100000", "--batch-size", "8", "--log-every", "1",
       "--save-every", "0", "--num-samples", "8", "--no-progress", "--device", "cpu", "--model-option", "width=16",
       "--model-option", "num_blocks=1", "--model-option", "embedding_dim=8", "--dist-timeout", str(TIMEOUT_S)]


def torchrun(out):
    env = torchrun_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cmkit", "train", *TOY, "--output", str(out)]
    # its own session, so that the finally clause can end torchrun and its workers whatever happened
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def workers_by_rank(proc, out, limit=120.0):
    """Wait until rank 0 logged a step; then the worker processes of torchrun, by rank (Linux /proc)."""
    metrics, start = out / "metrics.jsonl", time.monotonic()
    while not (metrics.is_file() and metrics.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < limit, "the job logged no step"
        time.sleep(0.05)
    children = []
    for task in os.listdir(f"/proc/{proc.pid}/task"):
        children += [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{task}/children").read_text().split()]
    ranks = {}
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        ranks[next(int(e[len(b"RANK="):]) for e in environ if e.startswith(b"RANK="))] = pid
    assert sorted(ranks) == [0, 1], ranks
    return ranks


def has_ended(pid):
    """Whether ``pid`` exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def end_job(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")


@linux_only
@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_the_same_step(tmp_path):
    out = tmp_path / "run"
    proc = torchrun(out)
    try:
        ranks = workers_by_rank(proc, out)
        os.kill(ranks[1], signal.SIGTERM)  # rank 0 gets no signal: it learns of the stop through the all_reduce
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        end_job(proc)
    print(f"torchrun exited {proc.returncode} {seconds:.1f} s after SIGTERM to rank 1")
    assert proc.returncode == 0, stderr[-3000:]  # had the ranks stopped at different steps, a collective would time out
    lines = [line for line in stderr.splitlines() if line.startswith("cmkit train: stopped by SIGTERM after step ")]
    assert len(lines) == 1, stderr[-3000:]  # printed by rank 0 only
    step = int(lines[0].split("after step ")[1].split(";")[0])
    assert ckpt.latest_checkpoint(out) == ckpt.checkpoint_dir(out, step)
    assert ckpt.load_checkpoint(ckpt.checkpoint_dir(out, step)).state["losses"].shape == (step,)


@linux_only
@pytest.mark.slow
def test_a_frozen_process_ends_the_job_after_the_timeout(tmp_path):
    """SIGSTOP freezes rank 1 mid-run; rank 0 must give up after --dist-timeout with a clear error and exit.

    torchrun then stops the job, but it gives a frozen worker 30 s to react to SIGTERM before its SIGKILL; the test
    sends that SIGKILL itself once rank 0 has exited, to stay short.
    """
    out = tmp_path / "run"
    proc = torchrun(out)
    ranks = {}
    try:
        ranks = workers_by_rank(proc, out)
        os.kill(ranks[1], signal.SIGSTOP)
        frozen = time.monotonic()
        while not has_ended(ranks[0]):
            assert time.monotonic() - frozen < TIMEOUT_S + 30, "rank 0 still waits for the frozen process"
            time.sleep(0.1)
        seconds = time.monotonic() - frozen
        os.kill(ranks[1], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if 1 in ranks and not has_ended(ranks[1]):
            os.kill(ranks[1], signal.SIGKILL)
        end_job(proc)
    print(f"rank 0 exited {seconds:.1f} s after rank 1 froze (--dist-timeout {TIMEOUT_S})")
    assert TIMEOUT_S - 1 < seconds < TIMEOUT_S + 15
    assert proc.returncode != 0
    assert "cmkit train: error: process 0 of 2: " in stderr, stderr[-3000:]
    assert f"did not reach it within {TIMEOUT_S} s (--dist-timeout)" in stderr
    assert "continue from the last checkpoint with --resume".lower() in stderr.lower()
