"""Small builders shared by several test modules (imported as ``from builders import ...``; pytest puts tests/
on the path)."""

import json
import os

import numpy as np
import pytest
import torch

from cmkit import CMStochasticIterativeScheduler, ConsistencyModelPipeline
from cmkit.models.mlp import MLPNet
from cmkit.training.config import DataConfig, TrainConfig


def make_mlp_pipe(sample_shape=(2,), num_class_embeds=None, seed=0):
    """An in-memory pipeline around a tiny MLP (no clamping), progress bar off."""
    torch.manual_seed(seed)
    net = MLPNet(sample_shape=sample_shape, width=16, num_blocks=1, embedding_dim=8, num_class_embeds=num_class_embeds)
    pipe = ConsistencyModelPipeline(net.eval(), CMStochasticIterativeScheduler(num_train_timesteps=40, clip_denoised=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline_dir(path, sample_shape, num_classes=None, parameterization=None):
    """A saved tiny MLP pipeline at ``path`` (optionally marked with a ``cmkit_parameterization``)."""
    torch.manual_seed(0)
    net = MLPNet(sample_shape=sample_shape, width=32, num_blocks=1, num_class_embeds=num_classes)
    ConsistencyModelPipeline(net, CMStochasticIterativeScheduler(num_train_timesteps=8)).save_pretrained(path)
    if parameterization:
        index = json.loads((path / "model_index.json").read_text())
        index["cmkit_parameterization"] = parameterization
        (path / "model_index.json").write_text(json.dumps(index))
    return path


def toy_config(tmp_path, **kw):
    """A 6-step EDM run on 8-Gaussians with an MLP, checkpoints every 2 steps; ``kw`` overrides fields."""
    base = dict(
        method="edm", data=DataConfig(kind="toy", toy="8gaussians"), model="mlp", steps=6, batch_size=16, lr=1e-3,
        output_dir=str(tmp_path / "run"), save_every=2, progress=False, num_samples=16, ema_rates=(0.9, 0.99),
    )
    base.update(kw)
    return TrainConfig(**base)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of two feature sets by scipy's ``sqrtm``, as a reference."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


class HookedObjective:
    """An objective that calls ``hook(step)`` before step ``at`` (to crash, raise a signal, ...), else delegates."""

    def __init__(self, inner, at, hook):
        self.inner, self.model, self.at, self.hook = inner, inner.model, at, hook

    def __call__(self, x0, class_labels, step, rng):
        if step == self.at:
            self.hook(step)
        return self.inner(x0, class_labels, step, rng)

    def after_optimizer_step(self, step):
        self.inner.after_optimizer_step(step)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def fake_feature_extractor(weights_path, device):
    """A stand-in for the FID Inception (registered by tests as ``"fake"``): uint8 RGB images are average-pooled
    to 4x4 and sent through a fixed random 48 -> 16 projection and tanh, in float64 (so batch sizes do not change
    the features beyond rounding). It refuses anything but uint8 RGB."""
    projection = torch.randn(48, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)

    def extract(images):
        assert images.dtype == torch.uint8 and images.shape[1] == 3, (images.dtype, images.shape)
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.double() / 255, 4).flatten(1)
        return torch.tanh(pooled @ projection)

    return extract


@pytest.fixture
def fake_extractor(monkeypatch):
    """Registers :func:`fake_feature_extractor` as ``"fake"`` for one test (import the fixture by name)."""
    from cmkit.metrics import fid

    monkeypatch.setitem(fid.FEATURE_EXTRACTORS, "fake", fake_feature_extractor)
    return "fake"


def write_image_folder(root, classes=("a", "b"), per_class=5, seed=0):
    """Random RGB PNGs of varied sizes (10..14 x 9..12) in one sub-folder per class (``classes=()``: flat); the root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes or ("",):
        folder = root / c
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (9 + i % 4, 10 + i % 5)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return root


def edm_archive(path, n=6, labels=True, compression=None, size=8):
    """An archive laid out as EDM's dataset_tool.py writes one: 00000/img00000000.png ..., dataset.json
    (labels i % 3, or null); returns the pixels ``[n, size, size, 3]``."""
    import io
    import zipfile

    from PIL import Image

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(n)]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED if compression is None else compression) as zf:
        for name, pixels in zip(names[::-1], images[::-1]):  # stored out of order: read in name order
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="png", compress_level=0)
            zf.writestr(name, buf.getvalue())
        meta = {"labels": [[name, i % 3] for i, name in enumerate(names)] if labels else None}
        zf.writestr("dataset.json", json.dumps(meta))
    return images


#: the reference networks' outputs (tests/fixtures/reference_nets/README.md) and the parity bound the tests use:
#: max |ours - reference| <= REFERENCE_RTOL * max |reference| in float32.
REFERENCE_FIXTURES = __import__("pathlib").Path(__file__).resolve().parent / "fixtures" / "reference_nets"
REFERENCE_RTOL = 1e-5


def reference_fixture(name):
    """``(meta, tensors, state)`` of a reference fixture: its JSON, its tensors, and the wrapper's state dict in
    float32 (the ``state.`` prefix removed)."""
    from safetensors.torch import load_file

    meta = json.loads((REFERENCE_FIXTURES / f"{name}.json").read_text())
    tensors = load_file(str(REFERENCE_FIXTURES / f"{name}.safetensors"))
    state = {k[len("state."):]: v.float() for k, v in tensors.items() if k.startswith("state.")}
    return meta, tensors, state


def assert_reference_parity(actual, expected, rtol=REFERENCE_RTOL):
    """``max |actual - expected| <= rtol * max |expected|`` (and the same shape); returns the relative error."""
    assert actual.shape == expected.shape
    scale = float(expected.abs().max())
    error = float((actual.detach().float() - expected).abs().max()) / scale
    assert scale > 0 and error <= rtol, f"relative error {error:.2e} > {rtol:.0e}"
    return error


def torchrun_env():
    """The environment for a ``torchrun`` child: this checkout's ``src`` and ``tests`` first on the path, one intra-op
    thread per process (the workers share the cores), and none of the rendezvous variables of an enclosing job."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    paths = [str(root / "src"), str(root / "tests")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(paths))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    return env


class FirstPixelReads(torch.utils.data.Dataset):
    """A map-style data set over image records: item ``i`` is ``(i, red value of pixel (0, 0), label)``, so
    DataLoader tests can check which records each worker read."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        image, label = self.records.read(i)
        return i, image.getpixel((0, 0))[0], label
