"""FID: clear errors without weights or the extra, image conversion, folders, end to end with random weights."""

import sys
import numpy as np
import pytest
import torch
from cmkit.metrics import fid as fid_module


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
    wrong = save_state_dict({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match="releases/download"):
        fid_module.load_inception(str(wrong))


def test_offline_errors_say_what_to_download_and_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.delenv(fid_module.WEIGHTS_ENV, raising=False)
    with pytest.raises(fid_module.InceptionWeightsError) as missing:
        fid_module.load_feature_extractor()
    message = str(missing.value)
    for part in (fid_module.WEIGHTS_FILE_NAME, fid_module.WEIGHTS_URL, "--inception-weights", fid_module.WEIGHTS_ENV):
        assert part in message
    with pytest.raises(fid_module.InceptionWeightsError, match=r"not found.*releases/download"):
        fid_module.load_feature_extractor(weights_path=tmp_path / "nope.pth")


def test_feature_extractor_registry(monkeypatch):
    from builders import fake_feature_extractor

    monkeypatch.setitem(fid_module.FEATURE_EXTRACTORS, "fake", fake_feature_extractor)
    with pytest.raises(ValueError, match="registered already"):
        fid_module.register_feature_extractor("fake", fake_feature_extractor)
    with pytest.raises(ValueError, match="'inception-v3', 'fake'"):
        fid_module.load_feature_extractor("nope")
    extractor = fid_module.load_feature_extractor("fake")
    features = fid_module.extract_features(extractor, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "cpu")
    assert features.shape == (2, 16) and features.dtype == torch.float64
    with pytest.raises(ValueError, match="uint8"):
        fid_module.extract_features(extractor, torch.zeros(2, 3, 8, 8), "cpu")
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        fid_module.extract_features(lambda x: x.float(), torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "cpu")
