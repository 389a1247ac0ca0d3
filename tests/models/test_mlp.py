import json

import pytest
import torch

from cmkit.karras import SIGMA_MIN, sigma_to_timestep
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet


def test_default_size_and_shape():
    net = MLPNet()
    assert net.num_parameters() == 175_106
    assert net.sample_shape == (2,)
    (out,) = net(torch.randn(5, 2), torch.full((5,), 10.0))
    assert out.shape == (5, 2)
    assert net(torch.randn(5, 2), 3.0, return_dict=True)["sample"].shape == (5, 2)


def test_image_shaped_samples_are_flattened():
    net = MLPNet(sample_shape=(1, 8, 8), width=32, num_blocks=1, num_class_embeds=10)
    x = torch.randn(3, 1, 8, 8)
    (out,) = net(x, torch.zeros(3), class_labels=torch.tensor([0, 3, 9]))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="class_labels"):
        net(x, torch.zeros(3))
    with pytest.raises(ValueError, match="sample_shape"):
        net(torch.randn(3, 64), torch.zeros(3), class_labels=torch.zeros(3, dtype=torch.long))


def test_class_labels_change_the_output():
    torch.manual_seed(0)
    net = MLPNet(width=16, num_blocks=1, num_class_embeds=3)
    x = torch.randn(2, 2)
    a = net(x, torch.zeros(2), class_labels=torch.tensor([0, 0]))[0]
    b = net(x, torch.zeros(2), class_labels=torch.tensor([1, 1]))[0]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="no class embedding"):
        MLPNet()(x, torch.zeros(2), class_labels=torch.tensor([0, 1]))


def test_time_embedding_distinguishes_noise_levels():
    torch.manual_seed(0)
    net = MLPNet(width=16, num_blocks=1)
    x = torch.randn(1, 2)
    outs = [net(x, sigma_to_timestep(torch.tensor([s])))[0] for s in (0.002, 0.5, 80.0)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


def test_boundary_condition_through_denoiser():
    d = Denoiser(MLPNet(), "consistency")
    x = torch.randn(16, 2)
    assert torch.equal(d(x, torch.full((16,), SIGMA_MIN)), x)


def test_save_and_load_roundtrip(tmp_path):
    torch.manual_seed(1)
    net = MLPNet(width=24, num_blocks=2, dropout=0.1, num_class_embeds=4)
    net.save_pretrained(tmp_path / "unet")
    cfg = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert cfg["_class_name"] == "MLPNet" and cfg["width"] == 24 and cfg["sample_shape"] == [2]
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = MLPNet.from_pretrained(tmp_path, subfolder="unet").eval()
    net.eval()
    x, t, c = torch.randn(4, 2), torch.randn(4) * 100, torch.tensor([0, 1, 2, 3])
    assert torch.equal(net(x, t, c)[0], loaded(x, t, c)[0])
    assert loaded.config["dropout"] == 0.1


def test_load_rejects_other_classes(tmp_path):
    MLPNet(width=8, num_blocks=1).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["_class_name"] = "UNet2DModel"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not an MLPNet"):
        MLPNet.from_pretrained(tmp_path)


def test_bad_config():
    with pytest.raises(ValueError, match="embedding_dim"):
        MLPNet(embedding_dim=3)
    with pytest.raises(ValueError, match="dropout"):
        MLPNet(dropout=1.0)


def test_runs_in_bfloat16_close_to_float32():
    import torch

    from cmkit.models.mlp import MLPNet

    torch.manual_seed(0)
    net = MLPNet(sample_shape=(1, 8, 8), width=32, num_blocks=2, num_class_embeds=10).eval()
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([-1000.0, 0.0, 500.0, 1000.0])
    labels = torch.tensor([0, 3, 5, 9])
    ref = net(x, t, class_labels=labels)[0]
    out = net.to(torch.bfloat16)(x.bfloat16(), t, class_labels=labels)[0]
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_from_pretrained_is_the_shared_mixin_and_keeps_train_mode(tmp_path):
    from cmkit.models.modeling import PretrainedMixin, _article

    assert MLPNet.from_pretrained.__func__ is PretrainedMixin.from_pretrained.__func__
    MLPNet(width=8, num_blocks=1).save_pretrained(tmp_path)
    loaded = MLPNet.from_pretrained(tmp_path, torch_dtype="bfloat16")
    assert loaded.training  # MLPNet opts out of the mixin's eval mode
    assert loaded.dtype == torch.bfloat16 and loaded.device == torch.device("cpu")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["_class_name"] = "UNet2DModel"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="describes a UNet2DModel, not an MLPNet"):
        MLPNet.from_pretrained(tmp_path)
    articles = {name: _article(name) for name in ("MLPNet", "UNet2DModel", "Encoder", "Upsampler", "Denoiser", "SDNet")}
    assert articles == {"MLPNet": "an", "UNet2DModel": "a", "Encoder": "an", "Upsampler": "an", "Denoiser": "a",
                        "SDNet": "an"}
