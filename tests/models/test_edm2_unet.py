"""cmkit's EDM2UNet against EDM2's own outputs (eval and training mode, gradients), and its magnitude-preserving ops."""

import inspect

import pytest
import torch

from builders import assert_reference_parity, reference_fixture
from cmkit.karras import sigma_to_timestep
from cmkit.models.denoiser import Denoiser
from cmkit.models.edm2_unet import EDM2UNet
from cmkit.models.mp_layers import MPConv, mp_cat, mp_silu, mp_sum, normalize
from cmkit.models.reference_nets import REFERENCE_NETWORKS, load_reference_state_dict

#: EDM2 training/networks_edm2.py: UNet.__init__ (with ECT's dropout_res after concat_balance, as in locuslab/ect's
#: ImageNet branch) then Block.__init__'s options, names and defaults (None: required), then the uncertainty head of
#: Precond (0 here: off).
REFERENCE_SIGNATURE = {
    "img_resolution": None, "img_channels": None, "label_dim": None, "model_channels": 192,
    "channel_mult": [1, 2, 3, 4], "channel_mult_noise": None, "channel_mult_emb": None, "num_blocks": 3,
    "attn_resolutions": [16, 8], "label_balance": 0.5, "concat_balance": 0.5, "dropout_res": None,
    "resample_filter": [1, 1],
    "channels_per_head": 64, "dropout": 0, "res_balance": 0.3, "attn_balance": 0.3, "clip_act": 256,
    "logvar_channels": 0,
}  # fmt: skip
REQUIRED = ("img_resolution", "img_channels", "label_dim")


def loaded():
    meta, tensors, state = reference_fixture("edm2_unet")
    net = REFERENCE_NETWORKS["edm2.Precond"](**meta["precond_kwargs"])
    load_reference_state_dict(net, state)
    return net.eval(), tensors


def test_matches_edm2_in_float32():
    net, t = loaded()
    timestep = sigma_to_timestep(t["sigma"])
    with torch.no_grad():
        assert_reference_parity(net(t["x"], timestep, t["class_ids"]).sample, t["output"])
        assert_reference_parity(Denoiser(net, "edm")(t["x"], t["sigma"], t["class_ids"]), t["denoised"])
        assert_reference_parity(net.logvar(timestep), t["logvar"])


def test_training_mode_forces_weight_normalisation_as_edm2():
    net, t = loaded()
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # the fixture ran training mode with dropout off
    net.train()
    out = net(t["x"], sigma_to_timestep(t["sigma"]), t["class_ids"]).sample
    assert_reference_parity(out, t["output_train"])
    conv = net.enc["16x16_conv"].weight
    assert_reference_parity(conv, t["after_train.enc.16x16_conv.weight"])  # rewritten in place to unit norm
    out.square().mean().backward()
    assert_reference_parity(conv.grad, t["grad.enc.16x16_conv.weight"])
    assert_reference_parity(net.out_gain.grad.reshape(1), t["grad.out_gain"])


def test_eval_mode_leaves_the_weights_and_dropout_alone():
    net, t = loaded()
    assert all(m.p == 0.1 for m in net.modules() if isinstance(m, torch.nn.Dropout))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        a = net(t["x"], sigma_to_timestep(t["sigma"]), t["class_ids"]).sample
        b = net(t["x"], sigma_to_timestep(t["sigma"]), t["class_ids"]).sample
    assert torch.equal(a, b) and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_constructor_is_edm2s():
    params = inspect.signature(EDM2UNet.__init__).parameters
    assert [n for n in params if n != "self"] == [*REFERENCE_SIGNATURE, "target_conditioning"]  # cmkit's TCD option
    assert params["target_conditioning"].default is False
    for name, default in REFERENCE_SIGNATURE.items():
        value = params[name].default
        if name in REQUIRED:
            assert value is inspect.Parameter.empty
        else:
            assert (list(value) if isinstance(value, tuple) else value) == default


def test_round_trip_keeps_the_uncertainty_head(tmp_path):
    net, t = loaded()
    net.save_pretrained(tmp_path / "unet")
    back = EDM2UNet.from_pretrained(tmp_path / "unet")
    timestep = sigma_to_timestep(t["sigma"])
    with torch.no_grad():
        torch.testing.assert_close(back.logvar(timestep), net.logvar(timestep), rtol=0, atol=0)
        torch.testing.assert_close(back(t["x"], timestep, t["class_ids"]).sample, t["output"])
    with pytest.raises(ValueError, match="no uncertainty head"):
        EDM2UNet(img_resolution=8, img_channels=1, label_dim=0, model_channels=8, channel_mult=[1], num_blocks=1,
                 attn_resolutions=[]).logvar(torch.zeros(2))


def test_magnitude_preserving_ops_keep_unit_variance():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, 64, generator=g), torch.randn(4096, 32, generator=g)
    for t in (0.3, 0.5, 0.9):
        assert abs(float(mp_sum(a[:, :32], b, t).var()) - 1) < 0.05
        assert abs(float(mp_cat(a, b, t=t).var()) - 1) < 0.05
    assert abs(float(mp_silu(a).square().mean()) - 1) < 0.05
    assert torch.allclose(normalize(a * 7).square().mean(dim=1), torch.ones(4096), atol=1e-3)
    layer = MPConv(64, 48, kernel=[])
    with torch.no_grad():
        assert abs(float(layer(a).var()) - 1) < 0.1  # unit-norm rows over sqrt(fan_in): variance kept


def test_bad_configs_raise():
    base = dict(img_resolution=16, img_channels=3, label_dim=0, model_channels=16, channel_mult=[1, 2], num_blocks=1)
    with pytest.raises(ValueError, match="do not divide"):
        EDM2UNet(**base, attn_resolutions=[8], channels_per_head=10)
    with pytest.raises(ValueError, match="res_balance"):
        EDM2UNet(**base, res_balance=1.5)
    with pytest.raises(ValueError, match="clip_act"):
        EDM2UNet(**base, clip_act=0)
    for bad in (0, -8, "16", True):
        with pytest.raises(ValueError, match=r"dropout_res must be a positive .*e\.g\. 16; None: every block"):
            EDM2UNet(**base, dropout_res=bad)


# ----- ECT's dropout_res: dropout only in the blocks at feature resolutions <= dropout_res --------------------------

#: three levels (16, 8, 4 pixels), one block each; dropout 0.5.
ECT_SMALL = dict(img_resolution=16, img_channels=3, label_dim=0, model_channels=8, channel_mult=[1, 1, 1],
                 num_blocks=1, attn_resolutions=[4], channels_per_head=8, dropout=0.5)  # fmt: skip


def block_resolutions(net):
    """Each block's feature resolution from its EDM2 name (``enc.8x8_down``, ``dec.16x16_up``, ...)."""
    from cmkit.models.edm2_unet import Block

    return {name: int(name.split(".")[1].split("x")[0]) for name, m in net.named_modules() if isinstance(m, Block)}


def with_random_gains(net):
    """``net`` with its zero-initialised gains (``out_gain``, each block's ``emb_gain``) drawn at random, so that
    its output depends on every block."""
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.normal_()
    return net


def blocks_where_dropout_acts(net, x, timestep):
    """The names of the blocks whose dropout changed its input in one forward pass."""
    acted, hooks = set(), []
    for name in block_resolutions(net):
        drop = net.get_submodule(name).drop
        def record(module, inputs, output, name=name):
            if not torch.equal(inputs[0], output):
                acted.add(name)

        hooks.append(drop.register_forward_hook(record))
    try:
        net(x, timestep)
    finally:
        for h in hooks:
            h.remove()
    return acted


def test_dropout_res_restricts_dropout_to_the_low_resolution_blocks_in_training_mode():
    x, timestep = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([100.0, -300.0])
    torch.manual_seed(0)
    net = EDM2UNet(**ECT_SMALL, dropout_res=8).train()
    res = block_resolutions(net)
    assert sorted(set(res.values())) == [4, 8, 16]
    assert blocks_where_dropout_acts(net, x, timestep) == {n for n, r in res.items() if r <= 8}
    assert {n: net.get_submodule(n).drop.p for n in res} == {n: 0.5 if r <= 8 else 0.0 for n, r in res.items()}
    torch.manual_seed(0)
    edm2 = EDM2UNet(**ECT_SMALL).train()  # the default: every block, as EDM2
    assert blocks_where_dropout_acts(edm2, x, timestep) == set(res)


def test_dropout_res_changes_nothing_in_eval_mode_and_nothing_at_all_above_the_image_resolution():
    x, timestep = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([100.0, -300.0])
    torch.manual_seed(0)
    edm2 = with_random_gains(EDM2UNet(**ECT_SMALL))
    nets = {}
    for dropout_res in (8, 16.0):
        nets[dropout_res] = EDM2UNet(**ECT_SMALL, dropout_res=dropout_res)
        nets[dropout_res].load_state_dict(edm2.state_dict())
        assert nets[dropout_res].config["dropout_res"] == dropout_res
    with torch.no_grad():
        expected = edm2.eval()(x, timestep).sample
        assert torch.equal(nets[8].eval()(x, timestep).sample, expected)
    outputs = []
    for net in (edm2, nets[16.0]):  # every level <= 16: the same masks as EDM2's under one seed
        torch.manual_seed(5)
        outputs.append(net.train()(x, timestep).sample)
    assert torch.equal(*outputs) and not torch.equal(outputs[0], expected)
