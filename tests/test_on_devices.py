"""Device cleanliness: training, sampling, the pipeline, editing and metrics on every device this machine has.

Two kinds of test:

* on a *simulated* accelerator (:mod:`device_rules`: the meta device plus CUDA's and MPS's rules), which runs
  on any CPU-only machine and catches tensors that meet on the wrong device (the CD / CT / iCT sigma grid was
  indexed on the CPU by indices drawn on the training device, which CUDA refuses);
* on the real devices present: the CPU always, plus CUDA and MPS where available (skipped elsewhere), one
  training step of every method, a pipeline call, every edit and the digits metrics, compared with the CPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from device_rules import SIMULATED, AcceleratorRules, DeviceRuleError

from cmkit.data import TensorSource
from cmkit.editing import presets
from cmkit.metrics.fd_digits import classifier_accuracy, digits_features
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.models.presets import unet_preset
from cmkit.pipeline import ConsistencyModelPipeline
from cmkit.sampling import edm_sampling_sigmas, sample_consistency, sample_heun
from cmkit.schedulers.cm import CMStochasticIterativeScheduler
from cmkit.schedulers.tcd import TCDScheduler
from cmkit.training.config import TrainConfig
from cmkit.training.distributed import DistContext
from cmkit.training.loop import Trainer
from cmkit.training.objectives import METHODS, build_objective, method_spec
from cmkit.streams import StepRandom

ACCELERATORS = [
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
    pytest.param("mps", marks=pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no MPS device")),
]
#: the CPU runs every test body here, so the device tests are exercised even where no accelerator exists.
DEVICES = ["cpu", *ACCELERATORS]
#: how far an accelerator's images may drift from the CPU's (TF32 convolutions, other kernels), in [0, 1] units.
IMAGE_ATOL = {"cpu": 0.0, "cuda": 1e-2, "mps": 1e-2}


def _gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ----- the simulated accelerator -----------------------------------------------------------------------------------
def test_rules_refuse_what_cuda_and_mps_refuse():
    grid = torch.linspace(1.0, 0.0, 5, dtype=torch.float64)
    on_device = torch.ones(3, device=SIMULATED)
    with AcceleratorRules(mps=True):
        with pytest.raises(DeviceRuleError, match="indexed by indices on meta"):
            grid[torch.tensor([1, 2]).to(SIMULATED)]
        with pytest.raises(DeviceRuleError, match="from a generator on cpu"):
            torch.randn(3, generator=_gen(), device=SIMULATED)
        with pytest.raises(DeviceRuleError, match="MPS has no float64"):
            on_device.double()
        with pytest.raises(DeviceRuleError, match="mixes tensors"):
            on_device + torch.ones(3)
        # what the devices accept: CPU scalars, CPU indices into device tensors, CPU draws moved over, read-backs
        assert (on_device * torch.tensor(2.0)).device == SIMULATED
        assert on_device[torch.tensor([0, 2])].shape == (2,)
        assert torch.randn(3, generator=_gen()).to(SIMULATED).device == SIMULATED
        assert float(on_device.sum()) == 1.0 and bool(on_device.any())  # placeholders: meta tensors hold no values
    with AcceleratorRules(mps=False):
        assert on_device.double().dtype == torch.float64  # CUDA has float64


def _objective(method: str, net_seed: int = 0):
    torch.manual_seed(net_seed)
    net = MLPNet(width=32, num_blocks=2, embedding_dim=16, dropout=0.1)
    spec = method_spec(method)
    teacher = Denoiser(MLPNet(width=32, num_blocks=2, embedding_dim=16), "edm") if spec.needs_teacher else None
    model = Denoiser(net, spec.parameterization)
    options = {"total_steps": 100} if method in ("ct", "ict") else {}
    return build_objective(method, model, teacher, **options)


@pytest.mark.parametrize("method", METHODS)
def test_training_step_is_device_clean_on_a_simulated_accelerator(method):
    # StepRandom draws on the training device; the CD / CT / iCT grids stay float64 on the CPU (MPS has no float64)
    obj = _objective(method)
    obj.model.to(SIMULATED)
    x0 = torch.randn(8, 2).to(SIMULATED)
    # sCT / sCD: CUDA's rules only. torch.func.jvp lifts the Python numbers of the network's arithmetic to float64
    # tensors on the device, which MPS cannot hold: sCM training on MPS is not supported (docs/training-math.md)
    with AcceleratorRules(mps=method_spec(method).parameterization != "trigflow"):
        out = obj(x0, None, 30, StepRandom(0, 30, 8, device=SIMULATED))
        out.loss.backward()
        obj.after_optimizer_step(30)
    assert out.loss.device == SIMULATED and out.loss.ndim == 0
    grads = [p.grad for p in obj.model.parameters() if p.grad is not None]
    assert grads and all(g.device == SIMULATED for g in grads)
    for helper in ("teacher", "target"):
        net = getattr(obj, helper, None)
        if net is not None:
            assert all(p.device == SIMULATED for p in net.parameters()), helper


def test_samplers_are_device_clean_on_a_simulated_accelerator():
    torch.manual_seed(0)
    f = Denoiser(MLPNet(width=16, num_blocks=1, embedding_dim=8), "consistency").to(SIMULATED)
    d = Denoiser(MLPNet(width=16, num_blocks=1, embedding_dim=8), "edm").to(SIMULATED)
    x = torch.randn(4, 2).to(SIMULATED)
    with AcceleratorRules(mps=True):
        assert sample_consistency(f, x, torch.tensor([80.0, 0.5], dtype=torch.float64), _gen()).device == SIMULATED
        assert sample_heun(d, x, edm_sampling_sigmas(3)).device == SIMULATED


@pytest.mark.parametrize("task", ["inpaint", "colorize", "super_resolve", "denoise", "stroke_edit"])
def test_edits_are_device_clean_on_a_simulated_accelerator(task):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    build = {
        "inpaint": lambda y: presets.inpainting(y, mask),
        "colorize": presets.colorization,
        "super_resolve": lambda y: presets.super_resolution(y[..., ::2, ::2], 2),
        "denoise": lambda y: presets.denoising(y, 1.0),
        "stroke_edit": lambda y: presets.stroke_editing(y, 2.0, _gen()),
    }[task]
    unet = unet_preset("tiny", in_channels=3, out_channels=3, norm_num_groups=4, block_out_channels=(8, 16),
                       attention_head_dim=4).eval()
    f = Denoiser(unet, "consistency").to(SIMULATED)
    task = build(images)  # built from CPU inputs and moved, as the pipeline does
    moved = dataclasses.replace(
        task, reference=task.reference.to(SIMULATED), mask=task.mask.to(SIMULATED),
        start=None if task.start is None else task.start.to(SIMULATED),
    )
    with AcceleratorRules(mps=True):
        out = moved.run(f, task.sigmas(2), _gen())
    assert out.device == SIMULATED and out.shape == (2, 3, 8, 8)


# ----- real devices ------------------------------------------------------------------------------------------------
def _tiny_unet(seed: int = 0, classes=None):
    torch.manual_seed(seed)
    return unet_preset("tiny", in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                       attention_head_dim=4, num_class_embeds=classes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_one_training_step_of_every_method(device, method, tmp_path):
    spec = method_spec(method)
    teacher = Denoiser(_tiny_unet(seed=1, classes=3), "edm") if spec.needs_teacher else None
    model = Denoiser(_tiny_unet(classes=3), spec.parameterization)
    options = {"total_steps": 10, "s0": 2, "s1": 8} if method in ("ct", "ict") else {}
    objective = build_objective(method, model, teacher, **options)
    data = TensorSource(torch.rand(16, 1, 8, 8) * 2 - 1, labels=torch.arange(16) % 3)
    cfg = TrainConfig(
        method=method, steps=10, batch_size=4, output_dir=str(tmp_path), progress=False, num_samples=4,
        teacher=str(tmp_path / "teacher") if teacher is not None else None,  # recorded only; the teacher is built here
    )
    trainer = Trainer(cfg, objective, data, DistContext(device=torch.device(device)))
    loss, grad_norm, _ = trainer.step(5)
    assert np.isfinite(loss) and np.isfinite(grad_norm)
    assert all(p.device.type == device for p in trainer.model.parameters())
    assert all(v.device.type == device for avg in trainer.ema.averages.values() for v in avg.values())
    samples = trainer.generate(trainer.eval_model(), 4)  # one consistency step, or Heun for the EDM teacher
    assert samples.device.type == device and samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all()


def _pipeline(device: str) -> ConsistencyModelPipeline:
    pipe = ConsistencyModelPipeline(_tiny_unet(classes=10).eval(), CMStochasticIterativeScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_pipeline_call_matches_the_cpu(device):
    kw = dict(batch_size=2, class_labels=[1, 7], num_inference_steps=None, timesteps=[22, 0], output_type="pt")
    reference = _pipeline("cpu")(generator=_gen(3), **kw).images
    pipe = _pipeline(device)
    images = pipe(generator=_gen(3), **kw).images  # a CPU generator: the CPU's noise on any device
    assert images.device.type == device
    torch.testing.assert_close(images.cpu(), reference, rtol=0, atol=IMAGE_ATOL[device])
    own = pipe(generator=_gen(3, device), batch_size=2, num_inference_steps=2, output_type="np").images  # labels drawn
    assert own.shape == (2, 8, 8, 1) and np.isfinite(own).all()


@pytest.mark.parametrize("device", DEVICES)
def test_every_edit_matches_the_cpu(device):
    image = torch.rand(1, 8, 8)
    mask = torch.zeros(8, 8)
    mask[2:6, 2:6] = 1
    edits = {
        "inpaint": lambda p, g: p.inpaint(image, mask, num_inference_steps=2, generator=g, output_type="pt"),
        "super_resolve": lambda p, g: p.super_resolve(
            image[:, ::2, ::2], 2, num_inference_steps=2, generator=g, output_type="pt"
        ),
        "denoise": lambda p, g: p.denoise(image, 0.5, generator=g, output_type="pt"),
        "stroke_edit": lambda p, g: p.stroke_edit(image, 2.0, generator=g, output_type="pt"),
        "interpolate": lambda p, g: p.interpolate(num_images=3, generator=g, output_type="pt"),
        "interpolate_images": lambda p, g: p.interpolate(
            image, image.flip(-1), num_images=3, sigma=2.0, generator=g, output_type="pt"
        ),
    }
    cpu, pipe = _pipeline("cpu"), _pipeline(device)
    for name, run in edits.items():
        reference = run(cpu, _gen(1)).images
        images = run(pipe, _gen(1)).images
        assert images.device.type == device, name
        torch.testing.assert_close(images.cpu(), reference, rtol=0, atol=IMAGE_ATOL[device], msg=name)
        own = run(pipe, _gen(1, device)).images  # a generator on the device draws there
        assert own.shape == reference.shape and torch.isfinite(own).all(), name


@pytest.mark.parametrize("device", DEVICES)
def test_tcd_scheduler_steps_on_the_device(device):
    scheduler = TCDScheduler()
    scheduler.set_timesteps(4, device=device)
    sample = torch.randn(2, 4, 8, 8, generator=_gen()).to(device)
    for t in scheduler.timesteps:
        sample = scheduler.step(0.1 * sample, t, sample, eta=0.3, generator=_gen(int(t))).prev_sample
    noised = scheduler.add_noise(sample, torch.randn_like(sample), scheduler.timesteps[:1])
    assert sample.device.type == device and noised.device.type == device and torch.isfinite(noised).all()


@pytest.mark.parametrize("device", DEVICES)
def test_digits_metrics_take_samples_from_any_device(device):
    from cmkit.data.digits import load_digits

    images, labels = load_digits("test")
    images, labels = images[:40], labels[:40]
    reference = digits_features(images)
    torch.testing.assert_close(digits_features(images.to(device)), reference)
    assert classifier_accuracy(images.to(device), labels.to(device)) == classifier_accuracy(images, labels)
