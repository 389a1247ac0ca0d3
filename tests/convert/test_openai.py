"""OpenAI ``.pt`` conversion, checked against an independent functional implementation of OpenAI's UNet.

``openai_checkpoint`` writes a state dict in the OpenAI layout by following the construction rules of
``cm/unet.py`` (levels, resblocks, attention at chosen downsampling rates, resampling, output blocks), with a
distinct random tensor per key, and returns the block plan. ``openai_forward`` runs that plan with the OpenAI
semantics (ResBlock, AttentionBlock with q, k, v rows in ``(three heads dim)`` order, [cos, sin] time embedding).
A converted UNet2DModel must reproduce it; a wrong key mapping or q/k/v split would not.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from cmkit.convert.openai import (
    convert_openai_checkpoint,
    convert_openai_state_dict,
    find_openai_state_dict,
    openai_unet_config,
)
from cmkit.models.modeling import load_exact_state_dict
from cmkit.models.presets import unet_preset_config
from cmkit.models.unet import UNet2DModel

TOL = 1e-4


# ------------------------------------------------------------------------------ OpenAI layout and reference


def openai_checkpoint(
    *,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_ds=(2,),
    resblock_updown=True,
    scale_shift=True,
    num_classes=None,
    in_channels=3,
    out_channels=3,
    seed=0,
    device="cpu",
):
    """(state dict, plan) of an OpenAI UNetModel; the plan lists each block's (prefix, kind) entries."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def tensor(shape, scale):
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=g) * scale

    def linear(prefix, cout, cin, *kernel):
        sd[f"{prefix}.weight"] = tensor((cout, cin, *kernel), 1 / math.sqrt(cin * math.prod(kernel)))
        sd[f"{prefix}.bias"] = tensor((cout,), 0.1)

    def norm(prefix, c):
        sd[f"{prefix}.weight"] = 1 + tensor((c,), 0.1)
        sd[f"{prefix}.bias"] = tensor((c,), 0.1)

    temb = 4 * model_channels

    def resblock(prefix, cin, cout):
        norm(f"{prefix}.in_layers.0", cin)
        linear(f"{prefix}.in_layers.2", cout, cin, 3, 3)
        linear(f"{prefix}.emb_layers.1", 2 * cout if scale_shift else cout, temb)
        norm(f"{prefix}.out_layers.0", cout)
        linear(f"{prefix}.out_layers.3", cout, cout, 3, 3)
        if cin != cout:
            linear(f"{prefix}.skip_connection", cout, cin, 1, 1)

    def attention(prefix, c):
        norm(f"{prefix}.norm", c)
        linear(f"{prefix}.qkv", 3 * c, c, 1, 1)
        linear(f"{prefix}.proj_out", c, c, 1, 1)

    linear("time_embed.0", temb, model_channels)
    linear("time_embed.2", temb, temb)
    if num_classes:
        sd["label_emb.weight"] = tensor((num_classes, temb), 1.0)
    ch = model_channels * channel_mult[0]
    linear("input_blocks.0.0", ch, in_channels, 3, 3)
    plan_in = [[("input_blocks.0.0", "conv")]]
    chans, ds, k = [ch], 1, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            block = [(f"input_blocks.{k}.0", "res")]
            resblock(f"input_blocks.{k}.0", ch, mult * model_channels)
            ch = mult * model_channels
            if ds in attention_ds:
                attention(f"input_blocks.{k}.1", ch)
                block.append((f"input_blocks.{k}.1", "attn"))
            plan_in.append(block)
            chans.append(ch)
            k += 1
        if level != len(channel_mult) - 1:
            if resblock_updown:
                resblock(f"input_blocks.{k}.0", ch, ch)
                plan_in.append([(f"input_blocks.{k}.0", "res_down")])
            else:
                linear(f"input_blocks.{k}.0.op", ch, ch, 3, 3)
                plan_in.append([(f"input_blocks.{k}.0.op", "conv_down")])
            chans.append(ch)
            ds *= 2
            k += 1
    resblock("middle_block.0", ch, ch)
    attention("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    plan_mid = [("middle_block.0", "res"), ("middle_block.1", "attn"), ("middle_block.2", "res")]
    plan_out, k = [], 0
    for level, mult in list(enumerate(channel_mult))[::-1]:
        for i in range(num_res_blocks + 1):
            block = [(f"output_blocks.{k}.0", "res")]
            resblock(f"output_blocks.{k}.0", ch + chans.pop(), model_channels * mult)
            ch = model_channels * mult
            sub = 1
            if ds in attention_ds:
                attention(f"output_blocks.{k}.1", ch)
                block.append((f"output_blocks.{k}.1", "attn"))
                sub = 2
            if level and i == num_res_blocks:
                if resblock_updown:
                    resblock(f"output_blocks.{k}.{sub}", ch, ch)
                    block.append((f"output_blocks.{k}.{sub}", "res_up"))
                else:
                    linear(f"output_blocks.{k}.{sub}.conv", ch, ch, 3, 3)
                    block.append((f"output_blocks.{k}.{sub}.conv", "conv_up"))
                ds //= 2
            plan_out.append(block)
            k += 1
    norm("out.0", ch)
    linear("out.2", out_channels, model_channels * channel_mult[0], 3, 3)
    plan = {"in": plan_in, "mid": plan_mid, "out": plan_out}
    return sd, {**plan, "model_channels": model_channels, "scale_shift": scale_shift}


def openai_forward(sd, plan, x, t, y=None, head_dim=32):
    """OpenAI's UNetModel.forward, written functionally from the paper/code semantics."""
    gn = lambda h, p: F.group_norm(h, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-5)  # noqa: E731
    conv = lambda h, p, **kw: F.conv2d(h, sd[f"{p}.weight"], sd[f"{p}.bias"], **kw)  # noqa: E731
    lin = lambda h, p: F.linear(h, sd[f"{p}.weight"], sd[f"{p}.bias"])  # noqa: E731

    half = plan["model_channels"] // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = lin(F.silu(lin(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), "time_embed.0")), "time_embed.2")
    if y is not None:
        emb = emb + sd["label_emb.weight"][y]

    def res(h, p, resample=None):
        a = F.silu(gn(h, f"{p}.in_layers.0"))
        if resample == "up":
            a, h = F.interpolate(a, scale_factor=2, mode="nearest"), F.interpolate(h, scale_factor=2, mode="nearest")
        elif resample == "down":
            a, h = F.avg_pool2d(a, 2), F.avg_pool2d(h, 2)
        a = conv(a, f"{p}.in_layers.2", padding=1)
        e = lin(F.silu(emb), f"{p}.emb_layers.1")[:, :, None, None]
        if plan["scale_shift"]:
            scale, shift = e.chunk(2, dim=1)
            a = F.silu(gn(a, f"{p}.out_layers.0") * (1 + scale) + shift)
        else:
            a = F.silu(gn(a + e, f"{p}.out_layers.0"))
        a = conv(a, f"{p}.out_layers.3", padding=1)
        skip = conv(h, f"{p}.skip_connection") if f"{p}.skip_connection.weight" in sd else h
        return skip + a

    def attn(h, p):
        b, c, height, width = h.shape
        heads = c // head_dim
        qkv = conv(gn(h, f"{p}.norm"), f"{p}.qkv").reshape(b, 3, heads, head_dim, height * width)
        q, k, v = qkv.unbind(1)
        scale = head_dim**-0.25
        w = torch.softmax(torch.einsum("bhdt,bhds->bhts", q * scale, k * scale), dim=-1)
        a = torch.einsum("bhts,bhds->bhdt", w, v).reshape(b, c, height, width)
        return h + conv(a, f"{p}.proj_out")

    def run(h, block):
        for p, kind in block:
            if kind == "conv":
                h = conv(h, p, padding=1)
            elif kind == "res":
                h = res(h, p)
            elif kind == "res_down":
                h = res(h, p, "down")
            elif kind == "res_up":
                h = res(h, p, "up")
            elif kind == "attn":
                h = attn(h, p)
            elif kind == "conv_down":
                h = conv(h, p, stride=2, padding=1)
            elif kind == "conv_up":
                h = conv(F.interpolate(h, scale_factor=2, mode="nearest"), p, padding=1)
        return h

    hs, h = [], x
    for block in plan["in"]:
        h = run(h, block)
        hs.append(h)
    h = run(h, plan["mid"])
    for block in plan["out"]:
        h = run(torch.cat([h, hs.pop()], dim=1), block)
    return conv(F.silu(gn(h, "out.0")), "out.2", padding=1)


def unet_config(
    *, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,), resblock_updown=True,
    scale_shift=True, num_classes=None, in_channels=3, out_channels=3,
):
    """The UNet2DModel config a user writes for ``openai_checkpoint``'s architecture (image size and head width
    left to the call): the escape hatch for architectures that are not published presets."""
    attends = [2**level in attention_ds for level in range(len(channel_mult))]
    down, up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if resblock_updown else ("DownBlock2D", "UpBlock2D")
    return {
        "in_channels": in_channels, "out_channels": out_channels, "layers_per_block": num_res_blocks,
        "num_class_embeds": num_classes, "block_out_channels": [model_channels * m for m in channel_mult],
        "down_block_types": ["AttnDownBlock2D" if a else down for a in attends],
        "up_block_types": ["AttnUpBlock2D" if a else up for a in reversed(attends)],
        "resnet_time_scale_shift": "scale_shift" if scale_shift else "default",
        "downsample_type": "resnet" if resblock_updown else "conv",
        "upsample_type": "resnet" if resblock_updown else "conv",
    }  # fmt: skip


ARCHS = {
    # ImageNet-64 style: FiLM conditioning, residual resampling, attention below full resolution, classes.
    "imagenet_like": dict(channel_mult=(1, 2), num_res_blocks=2, attention_ds=(2,), num_classes=7),
    # LSUN style: additive conditioning, attention only at the deepest level, learned sigma (6 outputs).
    "lsun_like": dict(channel_mult=(1, 1, 2), attention_ds=(4,), scale_shift=False, out_channels=6),
    # Convolutional resampling and attention at every level (AttnDownBlock2D with conv downsampling).
    "conv_resample": dict(channel_mult=(1, 2), attention_ds=(1, 2), resblock_updown=False, num_classes=3),
}


def _convert_and_compare(arch, seed=0, **convert_kwargs):
    sd, plan = openai_checkpoint(seed=seed, **ARCHS[arch])
    config, converted = convert_openai_state_dict(
        sd, unet_config=unet_config(**ARCHS[arch]), sample_size=8, attention_head_dim=32, **convert_kwargs
    )
    model = UNet2DModel.from_config(config).eval()
    load_exact_state_dict(model, converted)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([-1500.0, 10.0, 1095.0])
    y = torch.randint(0, ARCHS[arch]["num_classes"], (3,), generator=g) if ARCHS[arch].get("num_classes") else None
    with torch.no_grad():
        expected = openai_forward(sd, plan, x, t, y)
        got = model(x, t, class_labels=y).sample
    return sd, plan, config, converted, expected, got, (x, t, y)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_converted_model_equals_openai_reference(arch):
    _, _, config, converted, expected, got, inputs = _convert_and_compare(arch)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOL
    # the same converted weights also run in diffusers' UNet2DModel (strict load) with the same result
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.UNet2DModel(**config).eval()
    ref.load_state_dict(converted, strict=True)
    x, t, y = inputs
    with torch.no_grad():
        assert (ref(x, t, class_labels=y).sample - expected).abs().max().item() <= TOL


def test_given_config_is_checked_against_the_weights():
    # Each fact the old inference read from the weights is now checked: a config that gets one wrong is refused,
    # naming the OpenAI key that shows it.
    sd, _ = openai_checkpoint(**ARCHS["lsun_like"])
    right = unet_config(**ARCHS["lsun_like"])
    config = openai_unet_config(sd, unet_config=right, sample_size=8, attention_head_dim=32)
    assert config["block_out_channels"] == [32, 32, 64]
    assert config["layers_per_block"] == 1
    assert config["down_block_types"] == ["ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D"]
    assert config["up_block_types"] == ["AttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"]
    assert config["resnet_time_scale_shift"] == "default" and config["out_channels"] == 6
    assert config["num_class_embeds"] is None and config["attn_norm_num_groups"] is None
    wrong = {
        "block_out_channels": ([32, 32, 32], r"input_blocks.5.1.norm.weight has shape \(64,\)"),
        "layers_per_block": (2, r"input_blocks.5.0.in_layers.2.weight has shape \(64, 32, 3, 3\)"),
        "down_block_types": (["ResnetDownsampleBlock2D"] * 3, "do not fit.*input_blocks.5.1.norm.bias"),
        "up_block_types": (["AttnUpBlock2D"] * 3, "lacks 'output_blocks.2.1.norm.weight'"),
        "resnet_time_scale_shift": ("scale_shift", r"emb_layers.1.weight has shape \(32, 128\)"),
        "out_channels": (3, r"out.2.weight has shape \(6, 32, 3, 3\)"),
        "num_class_embeds": (5, "lacks 'label_emb.weight'"),
    }
    for key, (value, message) in wrong.items():
        with pytest.raises(ValueError, match=message):
            openai_unet_config(sd, unet_config={**right, key: value}, sample_size=8, attention_head_dim=32)
    sd, _ = openai_checkpoint(**ARCHS["conv_resample"])
    right = unet_config(**ARCHS["conv_resample"])
    config = openai_unet_config(sd, unet_config=right, sample_size=8, attention_head_dim=32)
    assert config["down_block_types"] == ["AttnDownBlock2D", "AttnDownBlock2D"]
    assert config["downsample_type"] == "conv" and config["upsample_type"] == "conv"
    assert config["num_class_embeds"] == 3 and config["resnet_time_scale_shift"] == "scale_shift"
    for key, value, message in [
        ("upsample_type", "resnet", "lacks 'output_blocks.1.2.in_layers.0.weight'"),
        ("downsample_type", "resnet", "lacks 'input_blocks.2.0.in_layers.0.weight'"),
        ("num_class_embeds", None, "do not fit.*label_emb.weight"),
        ("resnet_time_scale_shift", "default", r"emb_layers.1.weight has shape \(64, 128\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            openai_unet_config(sd, unet_config={**right, key: value}, sample_size=8, attention_head_dim=32)


def test_qkv_split_order():
    sd, _, _, converted, _, _, _ = _convert_and_compare("imagenet_like")
    qkv_w = sd["middle_block.1.qkv.weight"][:, :, 0, 0]
    qkv_b = sd["middle_block.1.qkv.bias"]
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        assert torch.equal(converted[f"mid_block.attentions.0.{name}.weight"], qkv_w.chunk(3)[i])
        assert torch.equal(converted[f"mid_block.attentions.0.{name}.bias"], qkv_b.chunk(3)[i])
    # swapping the q and k rows must change the converted network (the test above would catch a wrong split)
    swapped = dict(sd)
    q, k, v = sd["middle_block.1.qkv.weight"].chunk(3)
    swapped["middle_block.1.qkv.weight"] = torch.cat([k, q, v])
    _, conv_swapped = convert_openai_state_dict(swapped, unet_config=_cfg(), sample_size=8, attention_head_dim=32)
    mid = "mid_block.attentions.0"
    assert torch.equal(conv_swapped[f"{mid}.to_q.weight"], converted[f"{mid}.to_k.weight"])


def test_head_major_layout_converts_to_the_same_weights():
    sd, _ = openai_checkpoint(**ARCHS["imagenet_like"])
    _, reference = convert_openai_state_dict(sd, unet_config=_cfg(), sample_size=8, attention_head_dim=32)
    legacy = {}
    for key, value in sd.items():
        if key.endswith(".qkv.weight") or key.endswith(".qkv.bias"):
            c = value.shape[0] // 3
            heads = c // 32
            # (three, heads, dim) rows -> (heads, three, dim) rows, as guided-diffusion stores them
            value = value.reshape(3, heads, 32, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
        legacy[key] = value
    _, converted = convert_openai_state_dict(
        legacy, unet_config=_cfg(), sample_size=8, attention_head_dim=32, qkv_layout="head_major"
    )
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)
    heads_2 = [k for k in reference if k.startswith("mid_block.attentions.0.to_q")]
    assert heads_2  # the 64-channel mid attention has two heads, so the permutation is not the identity
    assert not torch.equal(legacy["middle_block.1.qkv.weight"], sd["middle_block.1.qkv.weight"])


def test_num_heads_and_head_dim_arguments():
    sd, _ = openai_checkpoint(**ARCHS["imagenet_like"])  # attention only at 64 channels
    config = openai_unet_config(sd, unet_config=_cfg(), sample_size=8, num_heads=2)
    assert config["attention_head_dim"] == 32
    with pytest.raises(ValueError, match="not both"):
        openai_unet_config(sd, unet_config=_cfg(), sample_size=8, num_heads=2, attention_head_dim=32)
    with pytest.raises(ValueError, match="does not divide"):
        openai_unet_config(sd, unet_config=_cfg(), sample_size=8, attention_head_dim=48)
    sd, _ = openai_checkpoint(**ARCHS["conv_resample"])  # attention at 32 and 64 channels
    with pytest.raises(ValueError, match="different head widths"):
        openai_unet_config(sd, unet_config=unet_config(**ARCHS["conv_resample"]), sample_size=8, num_heads=2)


# the published launch.sh flags: --num_channels, channel_mult for the image size, --num_res_blocks,
# --attention_resolutions 32,16,8 (as downsampling rates), --class_cond, --use_scale_shift_norm
PUBLISHED = {
    "imagenet64": dict(model_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3, attention_ds=(2, 4, 8),
                       num_classes=1000),
    "lsun256": dict(model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attention_ds=(8, 16, 32),
                    scale_shift=False),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_architectures_give_the_published_configs(name):
    # Meta tensors: the full-size layouts without allocating (or initialising) hundreds of millions of weights.
    sd, _ = openai_checkpoint(device="meta", **PUBLISHED[name])
    config, converted = convert_openai_state_dict(sd)
    with torch.device("meta"):
        published = UNet2DModel(**unet_preset_config(name))  # type: ignore[arg-type]
    # diffusers' keys: cmkit's target_conditioning (off) is left out, as UNet2DModel's saved config leaves it out
    assert config == {k: v for k, v in published.config.items() if k != "target_conditioning"}
    assert published.config["target_conditioning"] is False
    assert converted.keys() == published.state_dict().keys()


@pytest.mark.parametrize("scheduler, n", [("cd", 40), ("ct_imagenet64", 201), ("ct_lsun256", 151)])
def test_convert_checkpoint_writes_a_pipeline(tmp_path, scheduler, n):
    sd, plan = openai_checkpoint(**ARCHS["imagenet_like"], seed=3)
    torch.save(sd, tmp_path / "model.pt")
    out = convert_openai_checkpoint(
        tmp_path / "model.pt", tmp_path / "pipe", scheduler=scheduler, unet_config=_cfg(), sample_size=8,
        attention_head_dim=32,
    )
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["num_train_timesteps"], sched["sigma_min"], sched["sigma_max"]) == (n, 0.002, 80.0)
    unet = UNet2DModel.from_pretrained(out / "unet")
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([5.0, 500.0]), torch.tensor([0, 6])
    with torch.no_grad():
        assert (unet(x, t, y).sample - openai_forward(sd, plan, x, t, y)).abs().max().item() <= TOL


def test_converted_pipeline_samples_in_cmkit_and_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from cmkit.pipeline import ConsistencyModelPipeline

    sd, _ = openai_checkpoint(**ARCHS["imagenet_like"], seed=4)
    torch.save(sd, tmp_path / "cd.pt")
    out = convert_openai_checkpoint(
        tmp_path / "cd.pt", tmp_path / "pipe", scheduler="cd", unet_config=_cfg(), sample_size=8, attention_head_dim=32
    )
    ours = ConsistencyModelPipeline.from_pretrained(out)
    theirs = diffusers.ConsistencyModelPipeline.from_pretrained(out)
    theirs.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=None, timesteps=[22, 0], class_labels=[1, 5], batch_size=2, output_type="np")
    a = ours(generator=torch.Generator().manual_seed(0), **kw).images
    b = theirs(generator=torch.Generator().manual_seed(0), **kw).images
    assert abs(a - b).max() <= 1e-4


def test_cli_convert(tmp_path, capsys):
    from cmkit.cli import main

    sd, _ = openai_checkpoint(**ARCHS["lsun_like"], seed=5)
    torch.save(sd, tmp_path / "ct.pt")
    (tmp_path / "unet.json").write_text(json.dumps(unet_config(**ARCHS["lsun_like"])))
    args = ["convert", "--checkpoint", str(tmp_path / "ct.pt"), "--out", str(tmp_path / "pipe"), "--unet-config",
            str(tmp_path / "unet.json")]  # fmt: skip
    rc = main([*args, "--scheduler", "ct_lsun256", "--sample-size", "8", "--attention-head-dim", "32",
               "--no-class-cond", "--dtype", "bfloat16"])  # fmt: skip
    assert rc == 0 and "wrote" in capsys.readouterr().out
    assert UNet2DModel.from_pretrained(tmp_path / "pipe" / "unet").config.out_channels == 6
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(w.dtype == torch.bfloat16 for w in weights.values())
    rc = main([*args, "--scheduler", "cd", "--sample-size", "8", "--attention-head-dim", "32", "--class-cond"])
    assert rc == 1 and "no label_emb.weight" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--scheduler", "ct_cifar10"])
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    assert "cd_imagenet64_l2.pt" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- errors


def _sd(**kw):
    return openai_checkpoint(**{**ARCHS["imagenet_like"], **kw})[0]


def _cfg(**kw):
    """The UNet config of ``_sd(**kw)``."""
    return unet_config(**{**ARCHS["imagenet_like"], **{k: v for k, v in kw.items() if k != "seed"}})


def test_class_conditioning_checks():
    sd = _sd()
    with pytest.raises(ValueError, match="class-conditional"):
        convert_openai_state_dict(sd, unet_config=_cfg(), sample_size=8, attention_head_dim=32, class_cond=False)
    with pytest.raises(ValueError, match="7 classes"):
        convert_openai_state_dict(sd, unet_config=_cfg(), sample_size=8, attention_head_dim=32, num_classes=1000)
    _converted(sd, num_classes=7, class_cond=True)
    uncond = _sd(num_classes=None)
    with pytest.raises(ValueError, match="unconditional"):
        _converted(uncond, unet_config=_cfg(num_classes=None), num_classes=10)


def test_layout_errors_name_the_key():
    sd = _sd()
    with pytest.raises(ValueError, match="sample_size"):
        convert_openai_state_dict(sd, unet_config=_cfg(), attention_head_dim=32)  # the config has no sample_size
    with pytest.raises(ValueError, match="'time_embed.0.weight'"):
        _converted({k: v for k, v in sd.items() if not k.startswith("time_embed")})
    extra = {**sd, "input_blocks.1.0.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="input_blocks.1.0.extra.weight"):
        _converted(extra)
    bad = {**sd, "output_blocks.0.0.out_layers.3.bias": torch.zeros(5)}
    with pytest.raises(ValueError, match=r"output_blocks.0.0.out_layers.3.bias has shape \(5,\)"):
        _converted(bad)
    missing = {k: v for k, v in sd.items() if k != "middle_block.1.proj_out.bias"}
    with pytest.raises(ValueError, match="lacks 'middle_block.1.proj_out.bias'"):
        _converted(missing)
    not_1x1 = {**sd, "middle_block.1.proj_out.weight": torch.zeros(64, 64, 3, 3)}
    with pytest.raises(ValueError, match="1x1 convolution"):
        _converted(not_1x1)
    with pytest.raises(ValueError, match="qkv_layout"):
        _converted(sd, qkv_layout="kvq")  # type: ignore[arg-type]


def test_parameter_free_resampling_is_refused():
    sd = _sd(resblock_updown=False)
    sd = {k: v for k, v in sd.items() if not k.startswith("input_blocks.3.0.op")}  # avg-pool downsampling
    with pytest.raises(ValueError, match="conv_resample=False"):
        _converted(sd, unet_config=_cfg(resblock_updown=False))


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(ValueError, match="scheduler"):
        convert_openai_checkpoint(tmp_path / "x.pt", tmp_path / "o", scheduler="edm")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        convert_openai_checkpoint(tmp_path / "x.pt", tmp_path / "o", scheduler="cd")
    torch.save({"model": _sd(), "step": 3, "fn": math.sqrt}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match="weights_only"):
        convert_openai_checkpoint(tmp_path / "pickle.pt", tmp_path / "o", scheduler="cd")


# ------------------------------------------------------------------------------------ wrapped checkpoints


def _converted(sd, **kw):
    return convert_openai_state_dict(sd, **{"unet_config": _cfg(), "sample_size": 8, "attention_head_dim": 32, **kw})[1]


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "wrap, name",
    [
        (lambda sd: {"model": sd}, "model"),
        (lambda sd: {"ema": sd}, "ema"),
        (lambda sd: {"state_dict": sd}, "state_dict"),
        (lambda sd: _prefixed(sd, "module."), "module."),  # DistributedDataParallel
        (lambda sd: {"state_dict": _prefixed(sd, "module._orig_mod.")}, "state_dict/module._orig_mod."),  # compiled DDP
        (lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "step": 7}, "model"),
    ],
)
def test_wrapped_and_prefixed_state_dicts_convert_like_the_bare_one(wrap, name):
    sd = _sd()
    found = find_openai_state_dict(wrap(sd))
    assert found.name == name and found.alternatives == ()
    _assert_same_weights(found.state_dict, sd)
    _assert_same_weights(_converted(wrap(sd)), _converted(sd))


def test_several_state_dicts_take_the_ema_weights_and_say_so():
    online, ema = _sd(seed=1), _sd(seed=2)
    for checkpoint in ({"model": online, "ema": ema, "step": 3}, {"ema": ema, "model": online}):
        with pytest.warns(UserWarning, match=r"converting checkpoint\['ema'\].*Others: 'model'.*--state-dict-key"):
            _assert_same_weights(_converted(checkpoint), _converted(ema))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit choice is not warned about
        _assert_same_weights(_converted({"model": online, "ema": ema}, state_dict_key="model"), _converted(online))
    # a flat dict holding two prefixed models, as some trainers save them
    flat = {**_prefixed(online, "model."), **_prefixed(ema, "model_ema.")}
    found = find_openai_state_dict(flat)
    assert (found.name, found.alternatives) == ("model_ema.", ("model.",))
    _assert_same_weights(found.state_dict, ema)
    with pytest.raises(ValueError, match=r"no OpenAI UNet state dict named 'online'; it has 'ema', 'model'"):
        find_openai_state_dict({"model": online, "ema": ema}, "online")


def test_cli_converts_the_chosen_state_dict_of_a_training_checkpoint(tmp_path, capsys):
    from cmkit.cli import main

    online, ema = _sd(seed=1), _sd(seed=2)
    torch.save({"model": _prefixed(online, "module."), "ema": ema, "step": 9}, tmp_path / "run.pt")
    (tmp_path / "unet.json").write_text(json.dumps(_cfg()))
    args = ["convert", "--checkpoint", str(tmp_path / "run.pt"), "--scheduler", "cd", "--sample-size", "8",
            "--attention-head-dim", "32", "--unet-config", str(tmp_path / "unet.json")]  # fmt: skip
    with pytest.warns(UserWarning, match=r"converting checkpoint\['ema'\]"):
        assert main([*args, "--out", str(tmp_path / "ema")]) == 0
    assert main([*args, "--out", str(tmp_path / "online"), "--state-dict-key", "model/module."]) == 0
    for name, sd in (("ema", ema), ("online", online)):
        _assert_same_weights(UNet2DModel.from_pretrained(tmp_path / name / "unet").state_dict(), _converted(sd))
    assert main([*args, "--out", str(tmp_path / "x"), "--state-dict-key", "model"]) == 1
    assert "has 'ema', 'model/module.'" in capsys.readouterr().err


def test_unrecognised_layout_names_the_keys_seen_and_expected(tmp_path):
    expected = r"keys such as 'input_blocks.0.0.weight', 'time_embed.0.weight'"
    trainer = {"step": 3, "weights": {"encoder.conv.weight": torch.zeros(2, 2), "encoder.conv.bias": torch.zeros(2)}}
    with pytest.raises(ValueError, match=expected + r".*'step' \(int\), 'weights': \{'encoder.conv.weight'"):
        convert_openai_state_dict(trainer, sample_size=8)
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "other.pt")
    seen = r"'conv.weight' \(tensor \(4, 3, 3, 3\)\)"
    with pytest.raises(ValueError, match=r"other.pt holds no OpenAI UNet state dict.*" + seen):
        convert_openai_checkpoint(tmp_path / "other.pt", tmp_path / "o", scheduler="cd")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="a list, not a mapping"):
        convert_openai_checkpoint(tmp_path / "list.pt", tmp_path / "o", scheduler="cd")
    sd = _sd()
    seen = rf"'model': \{{'time_embed.0.weight'.*\({len(sd)} entries\)"
    with pytest.raises(ValueError, match=expected + ".*" + seen + ".*find_openai_state_dict"):
        openai_unet_config({"model": sd}, sample_size=8)


# ------------------------------------------------------------------------- published presets and the escape hatch


@pytest.mark.parametrize("name, classes", [("imagenet64", None), ("lsun256", 10)])
def test_published_layouts_are_recognised_with_or_without_classes(name, classes):
    sd, _ = openai_checkpoint(device="meta", **{**PUBLISHED[name], "num_classes": classes})
    config = openai_unet_config(sd)
    with torch.device("meta"):
        published = UNet2DModel(**unet_preset_config(name, num_class_embeds=classes))  # type: ignore[arg-type]
    # diffusers' keys: cmkit's target_conditioning (off) is left out, as UNet2DModel's saved config leaves it out
    assert config == {k: v for k, v in published.config.items() if k != "target_conditioning"}
    assert published.config["target_conditioning"] is False


def test_unknown_architecture_without_config_names_what_it_saw_and_the_fix(tmp_path, capsys):
    with pytest.raises(ValueError) as err:
        convert_openai_state_dict(_sd())
    message = str(err.value)
    assert "model_channels=32, 6 input_blocks, 6 output_blocks, 7 classes" in message
    assert "as imagenet64: input_blocks.0.0.weight has shape (32, 3, 3, 3)" in message
    assert "as lsun256: " in message and "--unet-config FILE" in message and "--preset NAME" in message
    # a published layout with one difference (learned sigma: 6 outputs) names the key, then converts as a preset
    # plus that override
    sd, _ = openai_checkpoint(device="meta", **{**PUBLISHED["imagenet64"], "out_channels": 6})
    with pytest.raises(ValueError, match=r"as imagenet64: out.2.weight has shape \(6, 192, 3, 3\)"):
        openai_unet_config(sd)
    config = openai_unet_config(sd, preset="imagenet64", unet_config={"out_channels": 6})
    assert config == {**openai_unet_config(openai_checkpoint(device="meta", **PUBLISHED["imagenet64"])[0]),
                      "out_channels": 6}  # fmt: skip
    from cmkit.cli import main

    torch.save(_sd(), tmp_path / "mine.pt")
    args = ["convert", "--checkpoint", str(tmp_path / "mine.pt"), "--out", str(tmp_path / "o"), "--scheduler", "cd"]
    assert main(args) == 1 and "--unet-config" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unet_config_file_and_preset_overrides_convert_like_a_mapping(tmp_path):
    sd = _sd()
    config, reference = convert_openai_state_dict(sd, unet_config=_cfg(), sample_size=8, attention_head_dim=32)
    UNet2DModel.from_config(config).save_config(tmp_path / "unet")  # diffusers' config.json, with _class_name
    for given in (tmp_path / "unet" / "config.json", str(tmp_path / "unet")):
        from_file, converted = convert_openai_state_dict(sd, unet_config=given)
        assert from_file == config
        _assert_same_weights(converted, reference)
    # the LSUN-like architecture as the lsun256 preset plus the keys that differ, in Python and on the CLI
    from cmkit.cli import main

    lsun_like, _ = openai_checkpoint(**ARCHS["lsun_like"], seed=6)
    _, reference = convert_openai_state_dict(
        lsun_like, unet_config=unet_config(**ARCHS["lsun_like"]), sample_size=8, attention_head_dim=32
    )
    differ = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "out_channels")
    overrides = {k: unet_config(**ARCHS["lsun_like"])[k] for k in differ}
    kw = dict(preset="lsun256", sample_size=8, attention_head_dim=32)
    _assert_same_weights(convert_openai_state_dict(lsun_like, unet_config=overrides, **kw)[1], reference)
    torch.save(lsun_like, tmp_path / "ct.pt")
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    assert main(["convert", "--checkpoint", str(tmp_path / "ct.pt"), "--out", str(tmp_path / "pipe"), "--scheduler",
                 "ct_lsun256", "--preset", "lsun256", "--unet-config", str(tmp_path / "overrides.json"),
                 "--sample-size", "8", "--attention-head-dim", "32"]) == 0  # fmt: skip
    _assert_same_weights(UNet2DModel.from_pretrained(tmp_path / "pipe" / "unet").state_dict(), reference)


def test_unet_configs_an_openai_unet_cannot_have_are_refused(tmp_path):
    sd = _sd()
    with pytest.raises(ValueError, match=r"cannot have norm_num_groups=8 \(OpenAI: 32\)"):
        _converted(sd, unet_config=None, preset="tiny")
    with pytest.raises(ValueError, match=r"flip_sin_to_cos=False \(OpenAI: True\)"):
        _converted(sd, unet_config={**_cfg(), "flip_sin_to_cos": False})
    with pytest.raises(ValueError, match="UNet2DModel does not take: channels"):
        _converted(sd, unet_config={**_cfg(), "channels": 3})
    with pytest.raises(ValueError, match="unknown UNet preset 'huge'"):
        _converted(sd, preset="huge")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a UNet2DModel config"):
        _converted(sd, unet_config=tmp_path / "list.json")
    with pytest.raises(FileNotFoundError):
        _converted(sd, unet_config=tmp_path / "absent.json")
