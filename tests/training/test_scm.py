"""sCT / sCD (Lu & Song 2024): tangent normalisation and warm-up, the adaptive weight, one step of each, the JVP tangent
against a finite difference, and two processes against one (the DDP pitfall of forward-mode AD)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.streams import StepRandom
from cmkit.training.objectives import build_objective, method_spec
from cmkit.training.objectives.sct import LogVarianceHead, normalize_tangent, scm_loss, tangent_warmup
from builders import toy_config, torchrun_env


def _mlp_denoiser(parameterization="trigflow", seed=0):
    torch.manual_seed(seed)
    return Denoiser(MLPNet(sample_shape=(2,), width=16, num_blocks=1, embedding_dim=8), parameterization)


def _batch(n=8):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(3)) * 0.5


def test_registry_exports_trigflow():
    assert method_spec("sct").parameterization == "trigflow" and not method_spec("sct").needs_teacher
    assert method_spec("scd").parameterization == "trigflow" and method_spec("scd").needs_teacher


def test_tangent_normalisation_and_warmup():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = normalize_tangent(g, 0.1)
    torch.testing.assert_close(out[0], g[0] / 5.1)  # ||g|| = 5
    assert torch.equal(out[1], torch.zeros(2))
    torch.testing.assert_close(normalize_tangent(g, 0.1, rms=True)[0], g[0] / (5 / math.sqrt(2) + 0.1))
    assert [tangent_warmup(k, 10) for k in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    assert tangent_warmup(0, 0) == 1.0


def test_adaptive_weight_formula_and_its_gradient():
    F, F_minus, g = torch.ones(2, 3), torch.zeros(2, 3), torch.full((2, 3), 0.5)
    w, prior = torch.tensor([0.0, math.log(2.0)]), torch.tensor([1.0, 3.0])
    # per-sample ||F - F^- - g||^2 / D = 0.25; prior e^{-w} 0.25 + w, averaged
    expected = ((1.0 * 0.25 + 0.0) + (3.0 / 2.0 * 0.25 + math.log(2.0))) / 2
    assert float(scm_loss(F, F_minus, g, w, prior)) == pytest.approx(expected)
    head = LogVarianceHead(8)
    t = torch.tensor([0.2, 1.0])
    assert torch.equal(head(t), torch.zeros(2))  # w = 0 at the start
    scm_loss(F, F_minus, g, head(t), prior).backward()
    assert head.linear.weight.grad.abs().sum() > 0 and head.linear.bias.grad.abs() > 0


@pytest.mark.parametrize("method", ["sct", "scd"])
def test_one_step_is_finite_and_moves_every_parameter(method):
    model = _mlp_denoiser()
    teacher = _mlp_denoiser("edm", seed=1) if method == "scd" else None
    objective = build_objective(method, model, teacher=teacher, warmup_steps=2)
    params = [p for p in model.parameters() if p.requires_grad]
    assert any(p is objective.model.scm_log_variance.linear.weight for p in params)  # the loop's optimizer sees w
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.99))
    out = objective(_batch(), None, 1, StepRandom(0, 1, 8))
    assert torch.isfinite(out.loss) and out.metrics["r"] == 0.5
    out.loss.backward()
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, params))
    assert all(t.grad is None for t in teacher.parameters()) if teacher is not None else True


def test_scd_needs_a_teacher_and_a_trigflow_student():
    with pytest.raises(ValueError, match="teacher"):
        build_objective("scd", _mlp_denoiser())
    with pytest.raises(ValueError, match="parameterization='trigflow'"):
        build_objective("sct", _mlp_denoiser("edm"))


def test_jvp_tangent_equals_the_finite_difference_tangent():
    model = _mlp_denoiser().double()
    jvp = build_objective("sct", model, tangent="jvp")
    fd = build_objective("sct", model, tangent="finite_difference", fd_step=1e-5)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(6, 2, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 1.4 + 0.05
    dxt = torch.randn(6, 2, generator=g, dtype=torch.float64)
    F_a, tangent_a = jvp.stopgrad_and_tangent(x_t, t, dxt, None, 0)
    F_b, tangent_b = fd.stopgrad_and_tangent(x_t, t, dxt, None, 0)
    torch.testing.assert_close(F_a, F_b)
    assert tangent_a.abs().max() > 1e-3
    torch.testing.assert_close(tangent_a, tangent_b, rtol=1e-5, atol=1e-7)
    # and it is cos(t) sin(t) dF/dt along dx_t/dt: compare one sample with a hand-made difference
    h, cs = 1e-6, math.cos(float(t[0])) * math.sin(float(t[0]))
    with torch.no_grad():
        hand = (model.trigflow_F(x_t[:1] + h * dxt[:1], t[:1] + h) - model.trigflow_F(x_t[:1] - h * dxt[:1], t[:1] - h)) / (2 * h)
    torch.testing.assert_close(tangent_a[:1], cs * hand, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sct", "scd"])
def test_two_processes_match_one(tmp_path, method):
    """The gradient pass of sCT is not DDP's forward: the loop must still average every gradient (head included)."""
    from cmkit.training import checkpoint as ckpt
    from cmkit.training.loop import train

    tiny = {"width": 16, "num_blocks": 1, "embedding_dim": 8}
    teacher = None
    if method == "scd":  # a 2-step EDM teacher, viewed as TrigFlow by sCD
        teacher = str(tmp_path / "teacher")
        train(toy_config(tmp_path, steps=2, batch_size=8, save_every=2, model_options=tiny, output_dir=teacher,
                         device="cpu"))  # fmt: skip
    config = toy_config(tmp_path, method=method, teacher=teacher, steps=3, batch_size=8, save_every=3, ema_rates=(0.9,),
                        model_options=tiny, objective_options={"warmup_steps": 2}, output_dir=str(tmp_path / "one"),
                        device="cpu")  # fmt: skip
    train(config)
    config.replace(output_dir=str(tmp_path / "two")).to_json(tmp_path / "two.json")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cmkit",
         "train", "--config", str(tmp_path / "two.json")],
        env=torchrun_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "two" / "training_info.json").read_text())
    assert info["world_size"] == 2 and info["gradient_averaging"] == "all_reduce"
    one = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "one")).model
    two = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "two")).model
    assert any(k.startswith("scm_log_variance.") for k in one) and one.keys() == two.keys()
    for name, a in one.items():
        torch.testing.assert_close(two[name], a, rtol=1e-5, atol=1e-6, msg=name)


def test_fp16_autocast_runs_the_tangent_in_float32():
    """fp16 tangents overflow (sCM sec. 5): under fp16 autocast the JVP pass runs in float32, so it equals the pass
    without autocast exactly, while the same JVP under fp16 autocast differs (it rounds through fp16)."""
    torch.manual_seed(0)
    model = Denoiser(MLPNet(sample_shape=(2,), width=32, num_blocks=2, embedding_dim=16), "trigflow")
    objective = build_objective("sct", model)
    x_t, t = torch.randn(6, 2), torch.rand(6) * 1.4 + 0.05
    dxt_dt = torch.randn(6, 2)
    plain = objective.stopgrad_and_tangent(x_t, t, dxt_dt, None, 7)
    with torch.autocast("cpu", dtype=torch.float16):
        guarded = objective.stopgrad_and_tangent(x_t, t, dxt_dt, None, 7)
        raw = objective.stopgrad_and_tangent_(x_t, t, dxt_dt, None, 7)
    assert all(torch.equal(a, b) for a, b in zip(plain, guarded))
    assert guarded[1].dtype == torch.float32 and torch.isfinite(guarded[1]).all()
    assert not torch.equal(raw[1].float(), plain[1])


@pytest.mark.parametrize("time_input", ["edm", "trigflow"])
def test_scd_student_starts_as_the_teacher_only_with_the_edm_time_input(time_input):
    """With ``time_input="edm"`` (the default) the initialised student's f is the teacher's denoiser D exactly;
    with ``1000 t`` the copied weights see another time conditioning and the opposite output sign."""
    teacher = _mlp_denoiser("edm", seed=1)
    with torch.no_grad():  # a teacher whose output depends on sigma and x (a fresh MLP's last layer may be zero)
        for p in teacher.parameters():
            p.normal_(0.0, 0.3)
    student = _mlp_denoiser()
    build_objective("scd", student, teacher=teacher, time_input=time_input)
    assert student.trigflow_time_input == time_input
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        gaps = [(student(x, torch.full((16,), s)) - teacher(x, torch.full((16,), s))).abs().max() for s in (0.02, 0.5, 5.0)]
    if time_input == "edm":
        assert max(gaps) < 1e-5
    else:
        assert max(gaps) > 1e-2


def test_scd_rejects_an_unknown_time_input():
    with pytest.raises(ValueError, match="time_input"):
        build_objective("scd", _mlp_denoiser(), teacher=_mlp_denoiser("edm", seed=1), time_input="1000t")
