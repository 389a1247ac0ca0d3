"""cmkit's SongUNet (EDM's DDPM++ / NCSN++) against EDM's own outputs, and as a cmkit network."""

import inspect
import json

import pytest
import torch

from builders import assert_reference_parity, reference_fixture
from cmkit import CMStochasticIterativeScheduler, ConsistencyModelPipeline
from cmkit.karras import sigma_to_timestep
from cmkit.models.denoiser import Denoiser
from cmkit.models.reference_nets import load_reference_state_dict
from cmkit.models.song_unet import SongUNet

FIXTURES = ("song_unet_ddpmpp", "song_unet_ncsnpp", "song_unet_skip")
#: EDM training/networks.py SongUNet.__init__: argument names and defaults (None: required).
REFERENCE_SIGNATURE = {
    "img_resolution": None, "in_channels": None, "out_channels": None, "label_dim": 0, "augment_dim": 0,
    "model_channels": 128, "channel_mult": [1, 2, 2, 2], "channel_mult_emb": 4, "num_blocks": 4,
    "attn_resolutions": [16], "dropout": 0.10, "label_dropout": 0, "embedding_type": "positional",
    "channel_mult_noise": 1, "encoder_type": "standard", "decoder_type": "standard", "resample_filter": [1, 1],
}  # fmt: skip


def small(**overrides):
    torch.manual_seed(0)
    kw = dict(img_resolution=16, in_channels=3, out_channels=3, label_dim=10, augment_dim=9, model_channels=16,
              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.1)  # fmt: skip
    return SongUNet(**{**kw, **overrides})


def loaded(name):
    meta, tensors, state = reference_fixture(name)
    net = SongUNet(**meta["network_kwargs"])
    load_reference_state_dict(net, state)
    return net.eval(), tensors


def call(net, t, labels=None, augment="fixture"):
    augment_labels = t.get("augment_labels") if augment == "fixture" else augment
    timestep = sigma_to_timestep(t["sigma"])
    return net(t["x"], timestep, class_labels=labels, augment_labels=augment_labels, return_dict=False)[0]


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_edm_in_float32(name):
    net, t = loaded(name)
    with torch.no_grad():
        out = call(net, t, t.get("class_ids"))
        assert_reference_parity(out, t["output"])
        if "class_labels" in t:  # one-hot vectors, as EDM takes them, give the same output as ids
            torch.testing.assert_close(call(net, t, t["class_labels"]), out, rtol=0, atol=0)


@pytest.mark.parametrize("name", FIXTURES)
def test_edm_denoiser_matches_edm_precond(name):
    # Denoiser(net, "edm") is EDMPrecond; its timestep 250 ln sigma reaches the net as c_noise = ln(sigma) / 4
    net, t = loaded(name)
    with torch.no_grad():
        denoised = Denoiser(net, "edm")(t["x"], t["sigma"], t.get("class_ids"))
    assert_reference_parity(denoised, t["denoised"])


def test_constructor_and_keys_are_edms():
    params = inspect.signature(SongUNet.__init__).parameters
    names = [n for n in params if n != "self"]
    assert names == [*REFERENCE_SIGNATURE, "target_conditioning"]  # cmkit's TCD option, last and off by default
    assert params["target_conditioning"].default is False
    for name, default in REFERENCE_SIGNATURE.items():
        value = params[name].default
        if default is None:
            assert value is inspect.Parameter.empty
        else:
            assert (list(value) if isinstance(value, tuple) else value) == default
    meta, _, state = reference_fixture("song_unet_ncsnpp")
    assert sorted(SongUNet(**meta["network_kwargs"]).state_dict()) == sorted(k[len("model."):] for k in state)


def test_dropout_acts_only_in_training_mode():
    net, t = loaded("song_unet_ddpmpp")
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    with torch.no_grad():
        assert_reference_parity(call(net, t, t["class_ids"]), t["output"])  # eval: dropout off
        net.train()
        torch.manual_seed(0)
        a = call(net, t, t["class_ids"])
        torch.manual_seed(1)
        b = call(net, t, t["class_ids"])
    assert not torch.allclose(a, b) and not torch.allclose(a, t["output"])


def test_label_dropout_drops_whole_label_vectors_in_training():
    net, t = loaded("song_unet_ddpmpp")
    net.label_dropout = 0.999999
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with torch.no_grad():
        unconditional = call(net.eval(), t, torch.zeros(3, 10))
        dropped = call(net.train(), t, t["class_ids"])
    torch.testing.assert_close(dropped, unconditional)


def test_augment_labels_default_to_zeros():
    net, t = loaded("song_unet_ddpmpp")
    with torch.no_grad():
        torch.testing.assert_close(call(net, t, t["class_ids"], None), call(net, t, t["class_ids"], torch.zeros(3, 9)))
        assert not torch.allclose(call(net, t, t["class_ids"], None), t["output"])


def test_save_and_load_round_trip(tmp_path):
    net, t = loaded("song_unet_ncsnpp")
    net.save_pretrained(tmp_path / "unet")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert config["_class_name"] == "SongUNet" and config["embedding_type"] == "fourier"
    assert config["resample_filter"] == [1, 3, 3, 1]
    back = SongUNet.from_pretrained(tmp_path / "unet")
    assert not back.training
    with torch.no_grad():
        torch.testing.assert_close(call(back, t, t["class_ids"]), call(net, t, t["class_ids"]), rtol=0, atol=0)


def test_a_config_for_another_network_is_refused(tmp_path):
    net = small()
    net.save_pretrained(tmp_path / "unet")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    (tmp_path / "unet" / "config.json").write_text(json.dumps({**config, "block_out_channels": [16, 32]}))
    with pytest.raises(ValueError, match="SongUNet does not take: block_out_channels"):
        SongUNet.from_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "config.json").write_text(json.dumps({**config, "_class_name": "EDM2UNet"}))
    with pytest.raises(ValueError, match="describes an EDM2UNet, not a SongUNet"):
        SongUNet.from_pretrained(tmp_path / "unet")


def test_a_pipeline_saves_loads_and_samples(tmp_path):
    from cmkit.pipeline_io import read_model_index

    net = small(label_dim=3, augment_dim=0).eval()
    pipe = ConsistencyModelPipeline(net, CMStochasticIterativeScheduler(num_train_timesteps=8))
    pipe.save_pretrained(tmp_path / "pipe")
    assert read_model_index(tmp_path / "pipe")["unet"] == ["cmkit", "SongUNet"]
    back = ConsistencyModelPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(back.unet, SongUNet) and back.num_classes == 3 and back.sample_shape == (3, 16, 16)
    back.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    images = back(batch_size=2, num_inference_steps=1, output_type="pt", generator=generator).images
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_activation_floats_count_the_encoder_activations():
    net = small(channel_mult=[1, 2], num_blocks=2)
    # 16x16: conv + 2 blocks of 16 channels; 8x8: down (16) + 2 blocks of 32 channels
    assert net.activation_floats((3, 16, 16)) == 3 * 16 * 256 + (16 + 2 * 32) * 64


@pytest.mark.parametrize("overrides, match", [
    (dict(embedding_type="learned"), "embedding_type"),
    (dict(encoder_type="fancy"), "encoder_type"),
    (dict(channel_mult=[1, 2, 2, 2, 2, 2]), "halved only 4 times"),
    (dict(num_blocks=0), "num_blocks"),
    (dict(resample_filter=[1, 2, 1]), "resample_filter"),
    (dict(model_channels=18), "GroupNorm over 18 channels"),
    (dict(dropout=1.0), "dropout"),
    (dict(channel_mult=[]), "channel_mult"),
])  # fmt: skip
def test_bad_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        small(**overrides)


@pytest.mark.parametrize("cls", ["SongUNet", "DhariwalUNet", "EDM2UNet"])
def test_a_network_too_large_for_memory_is_refused_before_allocating(cls, monkeypatch):
    import cmkit.limits
    from cmkit.models.presets import build_preset

    monkeypatch.setattr(cmkit.limits, "available_memory", lambda device=None: 10**6)  # 1 MB
    name = {"SongUNet": "ddpmpp", "DhariwalUNet": "adm-imagenet64", "EDM2UNet": "edm2-img64-s"}[cls]
    with pytest.raises(ValueError, match=rf"a {cls} with model_channels=.*parameters\) would take at least"):
        build_preset(name)


def test_bad_inputs_raise():
    net = small().eval()
    x, t = torch.randn(2, 3, 16, 16), torch.zeros(2)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        net(torch.randn(2, 1, 16, 16), t, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="multiples of 2"):
        net(torch.randn(2, 3, 15, 15), t, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class-conditional"):
        net(x, t)
    with pytest.raises(ValueError, match=r"lie in \[0, 10\)"):
        net(x, t, class_labels=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"\[B, 10\]"):
        net(x, t, class_labels=torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"augment_labels must have shape \[2, 9\]"):
        net(x, t, class_labels=torch.tensor([0, 1]), augment_labels=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="unconditional"):
        small(label_dim=0)(x, t, class_labels=torch.tensor([0, 1]))
