import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkit.data.digits import load_digits
from cmkit.metrics import fid as fid_module
from cmkit.metrics import (
    DigitsClassifier,
    balanced_class_labels,
    classifier_accuracy,
    digits_features,
    evaluate_digits,
    fd_digits,
    fd_digits_floor,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    load_digits_classifier,
    projection_directions,
    sliced_wasserstein,
    swd_floor,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- Fréchet distance
def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_frechet_matches_scipy_on_random_features():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 24))
    b = rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24)) * 0.5 + 0.3
    ours = frechet_distance_from_features(torch.from_numpy(a), b)
    assert ours == pytest.approx(_scipy_frechet(a, b), rel=1e-9)


def test_frechet_singular_covariances_match_eigenvalue_formula():
    # Fewer samples than dimensions: both covariances are singular.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 48)), rng.normal(size=(30, 48)) + 0.1
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance_from_features(a, b) == pytest.approx(expected, rel=1e-7)


def test_frechet_closed_forms():
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2; identical statistics give 0.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    mu, sigma = feature_statistics(torch.randn(50, 5, generator=torch.Generator().manual_seed(0)))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-10)


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        frechet_distance([0.0, 1.0], np.eye(2), [0.0], np.eye(1))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(torch.zeros(1, 3))


# ---------------------------------------------------------------- SWD
def test_swd_directions_are_fixed_unit_vectors():
    d = projection_directions(2)
    assert d.shape == (256, 2)
    assert torch.allclose(d.norm(dim=1), torch.ones(256, dtype=torch.float64))
    assert torch.equal(d, projection_directions(2))
    assert not torch.equal(d, projection_directions(2, seed=1))


def test_swd_of_a_shift_is_the_mean_projected_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.2], dtype=torch.float64)
    expected = float((projection_directions(2) @ shift).abs().mean())
    assert sliced_wasserstein(x + shift, x) == pytest.approx(expected, rel=1e-12)
    assert sliced_wasserstein(x, x) == 0.0
    y = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(2 * x, 2 * y) == pytest.approx(2 * sliced_wasserstein(x, y), rel=1e-12)


def test_swd_rejects_unequal_sets():
    with pytest.raises(ValueError, match="same N"):
        sliced_wasserstein(torch.zeros(10, 2), torch.zeros(11, 2))


def test_swd_floor_is_small_against_a_shifted_model():
    def gaussian(n, g):
        return torch.randn(n, 2, generator=g)

    reference = gaussian(4000, torch.Generator().manual_seed(0))
    floor_mean, floor_std = swd_floor(gaussian, reference, draws=3)
    shifted = gaussian(4000, torch.Generator().manual_seed(99)) + torch.tensor([0.2, 0.0])
    assert 0 < floor_mean < 0.05 and floor_std > 0
    assert sliced_wasserstein(shifted, reference) > 3 * floor_mean


@pytest.mark.skipif(importlib.util.find_spec("cmkit.data.toys") is None, reason="2-D toys not available")
def test_toy_swd_floor_and_a_bad_model():
    from cmkit.data.toys import sample_toy
    from cmkit.metrics import toy_reference, toy_swd, toy_swd_floor

    floor_mean, _ = toy_swd_floor("8gaussians", n=2000, draws=2)
    assert torch.equal(toy_reference("8gaussians", 2000), toy_reference("8gaussians", 2000))
    blurred = sample_toy("8gaussians", 2000, torch.Generator().manual_seed(5)) * 1.3
    assert toy_swd(blurred, "8gaussians") > 3 * floor_mean


# ---------------------------------------------------------------- classifier
def test_shipped_classifier_is_accurate_on_held_out_digits():
    x, y = load_digits("test")
    assert classifier_accuracy(x, y) >= 0.98
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    assert classifier_accuracy(x, shuffled) < 0.3


def test_classifier_area_downsamples_larger_images():
    x, _ = load_digits("test")
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 16x16: area-down is exact
    assert torch.equal(digits_features(up), digits_features(x))


def test_classifier_input_checks():
    x, y = load_digits("test")
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        classifier_accuracy(x[:, 0], y)
    with pytest.raises(ValueError, match="multiple of 8"):
        digits_features(torch.zeros(2, 1, 12, 12))
    with pytest.raises(ValueError, match=r"x \* 2 - 1"):
        digits_features((x + 1) * 127.5)
    with pytest.raises(ValueError, match="one label per sample"):
        classifier_accuracy(x, y[:-1])


def test_classifier_save_and_load_round_trip(tmp_path):
    model = load_digits_classifier()
    model.save_pretrained(tmp_path)
    again = DigitsClassifier.from_pretrained(tmp_path)
    assert dict(again.config) == dict(model.config)
    x, _ = load_digits("test")
    assert torch.equal(again.features(x[:8]), model.features(x[:8]))


def test_training_script_is_deterministic(tmp_path, capsys):
    path = ROOT / "scripts" / "train_digits_classifier.py"
    spec = importlib.util.spec_from_file_location("train_digits_classifier", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    try:
        outs = []
        for name in ("a", "b"):
            assert script.main(["--out", str(tmp_path / name), "--epochs", "1", "--no-calibration"]) == 0
            assert "held-out" in capsys.readouterr().out
            outs.append(DigitsClassifier.from_pretrained(tmp_path / name).state_dict())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


# ---------------------------------------------------------------- FD-digits
def test_fd_digits_orders_real_noisy_and_gaussian_samples():
    test_x, _ = load_digits("test")
    train_x, _ = load_digits("train")
    assert fd_digits(test_x) == pytest.approx(0.0, abs=1e-6)
    floor_mean, floor_std = fd_digits_floor()
    assert floor_mean > 0 and floor_std > 0
    g = torch.Generator().manual_seed(0)
    noisy = train_x[:360] + 0.2 * torch.randn(train_x[:360].shape, generator=g)
    flat = train_x.flatten(1)
    gaussian = (flat.mean(0) + flat.std(0) * torch.randn(360, 64, generator=g)).reshape(-1, 1, 8, 8).clamp(-1, 1)
    assert floor_mean < fd_digits(noisy) < fd_digits(gaussian)
    assert fd_digits(gaussian) > 10 * floor_mean


def test_evaluate_digits_splits_into_draws():
    x, y = load_digits("train")
    idx = torch.cat([torch.nonzero(y == c).flatten()[:36] for c in range(10)] * 2)
    samples, labels = x[idx], y[idx]
    result = evaluate_digits(samples, labels, draws=2)
    assert len(result.fd_draws) == 2 and result.num_samples == 720
    assert result.fd_draws[0] == pytest.approx(fd_digits(samples[:360]))
    assert result.accuracy == pytest.approx(classifier_accuracy(samples, labels))
    assert result.ratio == pytest.approx(result.fd_mean / result.floor_mean)
    assert (result.floor_mean, result.floor_std) == fd_digits_floor()
    assert evaluate_digits(samples, draws=2).accuracy is None
    with pytest.raises(ValueError, match="equal draws"):
        evaluate_digits(samples[:700], draws=3)


def test_balanced_class_labels():
    labels = balanced_class_labels(360)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 36))
    with pytest.raises(ValueError, match="multiple of 10"):
        balanced_class_labels(355)


# ---------------------------------------------------------------- FID (optional extra)
def test_fid_without_weights_gives_a_clear_error(monkeypatch):
    monkeypatch.delenv(fid_module.WEIGHTS_ENV, raising=False)
    with pytest.raises(fid_module.InceptionWeightsError, match="CMKIT_INCEPTION_WEIGHTS"):
        fid_module.fid(torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8))
    monkeypatch.setenv(fid_module.WEIGHTS_ENV, "/nonexistent/inception.pth")
    with pytest.raises(fid_module.InceptionWeightsError, match="not found"):
        fid_module.inception_features(torch.rand(2, 3, 8, 8))


def test_fid_without_the_extra_names_it(monkeypatch, tmp_path):
    weights = tmp_path / "inception.pth"
    torch.save({"w": torch.zeros(1)}, weights)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    fid_module.load_inception.cache_clear()
    with pytest.raises(ImportError, match=r"cmkit\[fid\]"):
        fid_module.load_inception(str(weights))


def test_fid_image_conversion():
    gray = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3)
    rgb = fid_module.to_uint8_rgb(gray)
    assert rgb.dtype == torch.uint8 and rgb.shape == (1, 3, 1, 3)
    assert rgb[0, :, 0].tolist() == [[0, 128, 255]] * 3
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        fid_module.to_uint8_rgb(torch.full((1, 3, 2, 2), -0.5))


def test_load_image_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((5, 6, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    images = fid_module.load_image_folder(tmp_path)
    assert images.shape == (3, 3, 5, 6) and images[2].max() == 80
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="different sizes"):
        fid_module.load_image_folder(tmp_path)


def test_fid_end_to_end_with_random_inception_weights(tmp_path, monkeypatch):
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception:  # noqa: BLE001 - missing extra, or a torchvision that does not match torch
        pytest.skip("the 'fid' extra (torch-fidelity with a matching torchvision) is not installed")
    from cmkit.io.weights import save_state_dict

    # Build the extractor once without weights to learn its keys and shapes, then save random weights.
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.torch.load", lambda *a, **k: {})
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    monkeypatch.undo()
    weights = save_state_dict(net.state_dict(), tmp_path / "inception.safetensors")
    fid_module.load_inception.cache_clear()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    features = fid_module.inception_features(images, weights, batch_size=2)
    assert features.shape == (3, 2048) and features.dtype == torch.float64
    assert fid_module.fid(images, images, weights) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- sampling for evaluation and `cmkit eval`
def _tiny_pipeline(path, sample_shape, num_classes=None, parameterization=None):
    import json

    from cmkit.models.mlp import MLPNet
    from cmkit.pipeline import ConsistencyModelPipeline
    from cmkit.schedulers.cm import CMStochasticIterativeScheduler

    torch.manual_seed(0)
    net = MLPNet(sample_shape=sample_shape, width=32, num_blocks=1, num_class_embeds=num_classes)
    ConsistencyModelPipeline(net, CMStochasticIterativeScheduler(num_train_timesteps=8)).save_pretrained(path)
    if parameterization:
        index = json.loads((path / "model_index.json").read_text())
        index["cmkit_parameterization"] = parameterization
        (path / "model_index.json").write_text(json.dumps(index))
    return path


def test_generate_samples_is_seeded_and_batch_size_invariant(tmp_path):
    from cmkit.metrics.generate import generate_heun_samples, generate_samples
    from cmkit.pipeline import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained(_tiny_pipeline(tmp_path / "p", (1, 8, 8), 10))
    pipe.set_progress_bar_config(disable=True)
    labels = balanced_class_labels(20)
    a = generate_samples(pipe, 20, 1, num_inference_steps=2, class_labels=labels, batch_size=20)
    b = generate_samples(pipe, 20, 1, num_inference_steps=2, class_labels=labels, batch_size=20)
    assert torch.equal(a, b) and a.shape == (20, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    direct = pipe(batch_size=20, class_labels=labels, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(1), output_type="pt").images * 2 - 1
    assert torch.equal(a, direct)
    heun = generate_heun_samples(pipe, 6, 0, heun_steps=3, class_labels=labels[:6], batch_size=4)
    assert heun.shape == (6, 1, 8, 8) and torch.isfinite(heun).all()
    with pytest.raises(ValueError, match="one per sample"):
        generate_samples(pipe, 20, class_labels=labels[:5])


def test_generate_heun_samples_makes_2n_minus_1_evaluations_per_batch(tmp_path):
    from cmkit.metrics.generate import generate_heun_samples
    from cmkit.pipeline import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline.from_pretrained(_tiny_pipeline(tmp_path / "t", (1, 8, 8), 10, "edm"))
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    generate_heun_samples(pipe, 6, 0, heun_steps=3, class_labels=torch.arange(6), batch_size=4)
    assert calls == [4] * 5 + [2] * 5  # the NFE `cmkit eval` reports: 2 * heun_steps - 1 per batch


def test_eval_cli_digits_table_and_json(tmp_path, capsys):
    import json

    from cmkit.cli import main

    model = _tiny_pipeline(tmp_path / "p", (1, 8, 8), 10)
    out_json = tmp_path / "r.json"
    assert main(["eval", "--model", str(model), "--draws", "2", "--timesteps", "5", "0", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "floor (train vs held-out" in out and "timesteps [5, 0]" in out and "FD-digits" in out
    rows = json.loads(out_json.read_text())["results"]
    assert [r["nfe"] for r in rows] == [1, 2, 2]
    assert all(len(r["draws"]) == 2 and r["accuracy"] is not None and r["ratio"] > 1 for r in rows)
    assert rows[0]["floor_mean"] == pytest.approx(fd_digits_floor()[0])


def test_eval_cli_teacher_and_toy(tmp_path, capsys):
    from cmkit.cli import main

    teacher = _tiny_pipeline(tmp_path / "t", (1, 8, 8), 10, parameterization="edm")
    assert main(["eval", "--model", str(teacher), "--draws", "2", "--heun-steps", "2"]) == 0
    assert "EDM Heun 2 steps" in capsys.readouterr().out
    toy = _tiny_pipeline(tmp_path / "toy", (2,))
    assert main(["eval", "--model", str(toy)]) == 1
    assert "--toy" in capsys.readouterr().err
    if importlib.util.find_spec("cmkit.data.toys") is not None:
        assert main(["eval", "--model", str(toy), "--toy", "moons", "--num-samples", "500", "--draws", "2"]) == 0
        assert "SWD" in capsys.readouterr().out
