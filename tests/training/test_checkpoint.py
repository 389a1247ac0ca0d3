"""``--resume`` continues exactly: after a crash, the final weights are bit-identical to an uninterrupted run (CPU)."""

from pathlib import Path

import pytest
import torch

from cmkit.data import SamplerSource
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.training import checkpoint as ckpt
from cmkit.training.config import DataConfig, TrainConfig
from cmkit.training.loop import Trainer
from cmkit.training.objectives.cd import CDObjective, CDOptions
from cmkit.training.objectives.ct import CTObjective, CTOptions
from cmkit.training.objectives.edm import EDMObjective
from cmkit.io.weights import load_state_dict
from builders import HookedObjective


class Crash(Exception):
    pass


def CrashAt(inner, at):
    """``inner`` until step ``at``, where it raises :class:`Crash` (a process dying mid-run)."""

    def crash(step):
        raise Crash(step)

    return HookedObjective(inner, at, crash)


def data():
    from cmkit.data.toys import sample_toy

    return SamplerSource(lambda n, g: sample_toy("moons", n, generator=g), sample_shape=(2,))


def net(seed, dropout=0.0):
    torch.manual_seed(seed)
    return MLPNet(sample_shape=(2,), width=16, num_blocks=2, embedding_dim=8, dropout=dropout)


def make_edm(seed):
    return EDMObjective(Denoiser(net(seed, dropout=0.2), "edm"))


def make_cd(seed):
    teacher = Denoiser(net(100), "edm")  # the same (random) teacher in every run
    student = Denoiser(net(seed), "consistency")
    return CDObjective(student, teacher, CDOptions(num_scales=10, target_ema=0.9, init_from_teacher=False))


def make_ct(seed):
    return CTObjective(Denoiser(net(seed, dropout=0.2), "consistency"), CTOptions(total_steps=7))


def make_sct(seed):  # the JVP pass, the tangent warm-up and the learned log-variance head all resume
    from cmkit.training.objectives.sct import SCTObjective, SCTOptions

    return SCTObjective(Denoiser(net(seed, dropout=0.2), "trigflow"), options=SCTOptions(warmup_steps=5))


@pytest.mark.parametrize(
    "make, extra",
    [
        (make_edm, dict(method="edm", lr_schedule="cosine", warmup_steps=3, precision="fp32")),
        (make_cd, dict(method="cd", teacher="unused-by-Trainer", optimizer="adam", grad_clip=0.05)),
        (make_cd, dict(method="cd", teacher="unused-by-Trainer", grad_accum=2)),
        (make_edm, dict(method="edm", grad_accum=4)),
        (make_ct, dict(method="ct")),  # one dropout mask per step shared by the student and the EMA target
        (make_sct, dict(method="sct", optimizer="adam", betas=(0.9, 0.99), adam_eps=1e-11)),
    ],
    ids=["edm-dropout-cosine", "cd-target-ema-clip", "cd-grad-accum-2", "edm-dropout-grad-accum-4",
         "ct-dropout-shared-mask", "sct-jvp-adam-eps"],
)
def test_resume_is_bit_identical(tmp_path, make, extra):
    def config(name):
        return TrainConfig(
            data=DataConfig(kind="toy", toy="moons"), model="mlp", steps=7, batch_size=8, lr=3e-3,
            output_dir=str(tmp_path / name), save_every=3, progress=False, num_samples=8,
            ema_rates=(0.5, 0.9), **extra,
        )

    full = Trainer(config("full"), make(0), data())
    full.run()

    crashed = Trainer(config("crashed"), CrashAt(make(0), at=4), data())
    with pytest.raises(Crash):
        crashed.run()
    assert ckpt.latest_checkpoint(tmp_path / "crashed").name == "step-00000003"

    resumed = Trainer(config("crashed"), make(seed=123), data())  # different init: everything must come from disk
    assert resumed.resume() and resumed.start_step == 3
    resumed.run()

    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for rate_key, avg in full.ema.state_dict().items():
        for name, value in avg.items():
            assert torch.equal(value, resumed.ema.state_dict()[rate_key][name]), (rate_key, name)
    assert full.losses == resumed.losses
    exported = [load_state_dict(tmp_path / d / "unet/diffusion_pytorch_model.safetensors") for d in ("full", "crashed")]
    assert exported[0].keys() == exported[1].keys()
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])
    # and the run really depended on the restored state: the fresh init alone gives other weights
    assert not torch.equal(make(seed=123).model.state_dict()["net.output.weight"], full.model.state_dict()["net.output.weight"])


# ----- damaged files: a resume falls back instead of failing -------------------------------------------------------
def run_config(tmp_path, name):
    """7 EDM steps, checkpointed every 3 steps, all checkpoints kept, every step logged."""
    return TrainConfig(
        method="edm", data=DataConfig(kind="toy", toy="moons"), model="mlp", steps=7, batch_size=8, lr=3e-3,
        output_dir=str(tmp_path / name), save_every=3, keep_checkpoints=0, log_every=1, progress=False,
        num_samples=8, ema_rates=(0.5,),
    )


def crashed_run(tmp_path, name, at):
    """The run of :func:`run_config` crashed at step index ``at``; returns its config."""
    cfg = run_config(tmp_path, name)
    with pytest.raises(Crash):
        Trainer(cfg, CrashAt(make_edm(0), at=at), data()).run()
    return cfg


@pytest.fixture(scope="module")
def full_run_weights(tmp_path_factory):
    full = Trainer(run_config(tmp_path_factory.mktemp("resume"), "full"), make_edm(0), data())
    full.run()
    return full.model.state_dict()


def logged_steps(cfg):
    import json

    return [json.loads(line)["step"] for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]


def test_resume_drops_a_torn_last_line_and_garbled_lines_of_the_log(tmp_path):
    cfg = crashed_run(tmp_path, "run", at=5)  # checkpoint at step 3; steps 1-5 logged
    metrics = Path(cfg.output_dir) / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    assert len(lines) == 5
    lines[1] = '{"step": 2, "loss": 0.5, "l\x00\n'  # a garbled line in the middle
    metrics.write_text("".join(lines) + '{"step": 6, "loss": 0.')  # killed while writing step 6
    resumed = Trainer(cfg, make_edm(0), data())
    assert resumed.resume() and resumed.start_step == 3
    with pytest.warns(UserWarning) as caught:
        resumed.run()
    messages = [str(w.message) for w in caught]
    assert any(f"dropped the torn last line of {metrics}" in m for m in messages), messages
    assert any(f"dropped 1 unreadable line(s) of {metrics} (line 2" in m for m in messages), messages
    assert logged_steps(cfg) == [1, 3, 4, 5, 6, 7]


def damage(path, how):
    data_ = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data_[: len(data_) // 2]))
    elif how == "garble":
        path.write_bytes(b"garbage")
    elif how == "garble-no-manifest":  # a checkpoint of a version without manifests: the loader itself notices
        (path.parent / ckpt.MANIFEST_FILE).unlink()
        path.write_bytes(b"garbage")
    else:  # one flipped byte in the tensor data: every loader accepts it, only the manifest's SHA-256 notices
        data_[-5] ^= 0xFF
        path.write_bytes(bytes(data_))


@pytest.mark.parametrize(
    "file, how",
    [("state.pt", "truncate"), ("model.safetensors", "garble"), ("ema_0.5.safetensors", "flip"),
     ("state.pt", "garble-no-manifest")],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, full_run_weights, file, how):
    cfg = crashed_run(tmp_path, "run", at=6)  # checkpoints at steps 3 and 6
    newest = ckpt.checkpoint_dir(cfg.output_dir, 6)
    damage(newest / file, how)
    resumed = Trainer(cfg, make_edm(seed=5), data())
    with pytest.warns(UserWarning, match="falling back") as caught:
        assert resumed.resume()
    message = str(caught[0].message)
    assert str(newest / file) in message and str(ckpt.checkpoint_dir(cfg.output_dir, 3)) in message
    assert resumed.start_step == 3
    resumed.run()
    for name, value in full_run_weights.items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_a_bad_latest_json_falls_back_to_the_newest_directory(tmp_path):
    cfg = crashed_run(tmp_path, "run", at=6)
    pointer = Path(cfg.output_dir) / "checkpoints" / "latest.json"
    pointer.write_text('{"step": 6, "path": "step-0000')
    resumed = Trainer(cfg, make_edm(0), data())
    with pytest.warns(UserWarning, match="falling back") as caught:
        assert resumed.resume()
    message = str(caught[0].message)
    assert str(pointer) in message and str(ckpt.checkpoint_dir(cfg.output_dir, 6)) in message
    assert resumed.start_step == 6
    pointer.write_text('{"step": 6, "path": "../../elsewhere"}')  # names no checkpoint of this run
    with pytest.warns(UserWarning, match="names '../../elsewhere', which is no complete checkpoint"):
        assert Trainer(cfg, make_edm(0), data()).resume()


def test_no_loadable_checkpoint_is_an_error_naming_the_directory(tmp_path):
    cfg = crashed_run(tmp_path, "run", at=6)
    for step in (3, 6):
        damage(ckpt.checkpoint_dir(cfg.output_dir, step) / "model.safetensors", "truncate")
    with pytest.raises(ValueError, match="no loadable checkpoint in .*checkpoints: checkpoint .*step-00000006 is damaged"):
        Trainer(cfg, make_edm(0), data()).resume()


def test_temporary_checkpoint_dirs_are_removed_on_start_and_after_a_save(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    (root / ".tmp-step-00000003-4242").mkdir(parents=True)  # a process killed while saving
    (root / ".tmp-step-00000003-4242" / "model.safetensors").write_bytes(b"half")
    cfg = TrainConfig(
        method="edm", data=DataConfig(kind="toy", toy="moons"), model="mlp", steps=4, batch_size=8,
        output_dir=str(tmp_path / "run"), save_every=0, progress=False, num_samples=8,
    )
    with pytest.raises(Crash):  # crashes before its first save: only the start-up clean-up ran
        Trainer(cfg, CrashAt(make_edm(0), at=1), data()).run()
    assert list(root.iterdir()) == []
    (root / ".tmp-step-00000001-4243").mkdir()
    tensors = {"w": torch.zeros(2)}
    saved = ckpt.save_checkpoint(tmp_path / "run", 2, tensors, {"ema_0.9": tensors}, {"losses": torch.zeros(2)})
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-00000002"]
    assert ckpt.load_checkpoint(saved).step == 2
