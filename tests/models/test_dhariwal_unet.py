"""cmkit's DhariwalUNet (EDM's ADM) against EDM's own outputs; its layout against UNet2DModel's imagenet64."""

import inspect

import pytest
import torch

from builders import assert_reference_parity, reference_fixture
from cmkit.karras import sigma_to_timestep
from cmkit.models.denoiser import Denoiser
from cmkit.models.dhariwal_unet import DhariwalUNet
from cmkit.models.edm_layers import BlockOptions, UNetBlock
from cmkit.models.presets import build_preset, unet_preset
from cmkit.models.reference_nets import load_reference_state_dict

#: EDM training/networks.py DhariwalUNet.__init__: argument names and defaults (None: required).
REFERENCE_SIGNATURE = {
    "img_resolution": None, "in_channels": None, "out_channels": None, "label_dim": 0, "augment_dim": 0,
    "model_channels": 192, "channel_mult": [1, 2, 3, 4], "channel_mult_emb": 4, "num_blocks": 3,
    "attn_resolutions": [32, 16, 8], "dropout": 0.10, "label_dropout": 0,
}  # fmt: skip


def loaded():
    meta, tensors, state = reference_fixture("dhariwal_unet")
    net = DhariwalUNet(**meta["network_kwargs"])
    load_reference_state_dict(net, state)
    return net.eval(), tensors


def test_matches_edm_in_float32():
    net, t = loaded()
    with torch.no_grad():
        out = net(t["x"], sigma_to_timestep(t["sigma"]), t["class_ids"], t["augment_labels"], return_dict=False)[0]
        denoised = Denoiser(net, "edm")(t["x"], t["sigma"], t["class_ids"])
    assert_reference_parity(out, t["output"])
    assert_reference_parity(denoised, t["denoised"])


def test_layers_under_64_channels_have_no_attention_heads_as_in_edm():
    net, _ = loaded()  # attention asked at 8x8, where the fixture has 32 channels: EDM gives such blocks 0 heads
    assert net.enc["8x8_block0"].num_heads == 0 and net.dec["8x8_in0"].num_heads == 0
    assert not any(".qkv." in k for k in net.state_dict())


@pytest.mark.parametrize("kind", ["attn", "down", "up"])
def test_adm_block_with_heads_and_resampling_matches_edm(kind):
    # the block options DhariwalUNet uses (FiLM, skip_scale 1, eps 1e-5), here with 4 heads of 8 channels
    meta, t, _ = reference_fixture("dhariwal_blocks")
    options = BlockOptions(**meta["block_kwargs"])
    block = UNetBlock(**meta["blocks"][kind], options=options).eval()
    prefix = f"block_{kind}.state."
    block.load_state_dict({k[len(prefix):]: v.float() for k, v in t.items() if k.startswith(prefix)})
    with torch.no_grad():
        assert_reference_parity(block(t[f"block_{kind}.x"], t["block.emb"]), t[f"block_{kind}.output"])
    assert block.num_heads == (4 if kind == "attn" else 0)


def test_constructor_is_edms():
    params = inspect.signature(DhariwalUNet.__init__).parameters
    assert [n for n in params if n != "self"] == [*REFERENCE_SIGNATURE, "target_conditioning"]  # cmkit's TCD option
    assert params["target_conditioning"].default is False
    for name, default in REFERENCE_SIGNATURE.items():
        value = params[name].default
        if default is None:
            assert value is inspect.Parameter.empty
        else:
            assert (list(value) if isinstance(value, tuple) else value) == default


def test_the_published_layout_is_the_openai_imagenet64_unets():
    # EDM's ADM ImageNet-64 and the consistency models' imagenet64 UNet2DModel: the same blocks and sizes
    with torch.device("meta"):
        edm = build_preset("adm-imagenet64")
        openai = unet_preset("imagenet64")
    assert edm.num_parameters() == sum(p.numel() for p in openai.parameters()) == 295_899_267
    attention = [name for name, block in edm.enc.items() if getattr(block, "num_heads", 0)]
    assert attention == [f"{r}x{r}_block{i}" for r in (32, 16, 8) for i in range(3)]
    assert edm.enc["8x8_block0"].num_heads == 768 // 64


def test_dropout_only_in_training_and_round_trip(tmp_path):
    net, t = loaded()
    net.save_pretrained(tmp_path / "unet")
    back = DhariwalUNet.from_pretrained(tmp_path / "unet")
    timestep = sigma_to_timestep(t["sigma"])
    with torch.no_grad():
        out = back(t["x"], timestep, t["class_ids"], t["augment_labels"]).sample
        assert_reference_parity(out, t["output"])
        back.train()
        assert not torch.allclose(back(t["x"], timestep, t["class_ids"], t["augment_labels"]).sample, out)


def test_soft_class_vectors_mix_the_class_embeddings():
    net, t = loaded()
    timestep = sigma_to_timestep(t["sigma"])
    mix = torch.full((3, 10), 0.1)
    with torch.no_grad():
        a = net(t["x"], timestep, mix, t["augment_labels"]).sample
        b = net(t["x"], timestep, t["class_ids"], t["augment_labels"]).sample
    assert not torch.allclose(a, b)
