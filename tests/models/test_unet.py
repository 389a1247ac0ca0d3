"""cmkit's UNet2DModel against diffusers' (the oracle): same keys, same outputs, directories readable both ways."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from cmkit.models.presets import UNET_PRESETS, unet_preset, unet_preset_config
from cmkit.models.unet import UNet2DModel, UNet2DOutput

diffusers = pytest.importorskip("diffusers")
DiffusersUNet = diffusers.UNet2DModel

TOL = 1e-4

# Small configs that together cover every block type, both time-conditioning modes, resampling kinds, class and
# time embedding kinds, head dims that do and do not divide the channels, and the rarely used scalar options.
CONFIGS: dict[str, dict] = {
    "conv_default": dict(
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, layers_per_block=1, attention_head_dim=8,
    ),
    "adm_scale_shift_classes": dict(
        block_out_channels=(16, 32, 32), layers_per_block=2, attention_head_dim=16, norm_num_groups=8,
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8, downsample_type="resnet",
        upsample_type="resnet", num_class_embeds=11,
    ),
    "mixed_resampling_options": dict(
        block_out_channels=(16, 24), layers_per_block=2, attention_head_dim=None, norm_num_groups=8,
        down_block_types=("AttnDownBlock2D", "ResnetDownsampleBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        downsample_type="conv", upsample_type="resnet", downsample_padding=0, mid_block_scale_factor=2.0,
        center_input_sample=True, flip_sin_to_cos=False, freq_shift=1, act_fn="mish", norm_eps=1e-6,
        in_channels=2, out_channels=1, time_embedding_dim=40,
    ),
    "scale_shift_mid_without_norm": dict(
        block_out_channels=(16, 48), layers_per_block=1, attention_head_dim=32, norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        resnet_time_scale_shift="scale_shift", upsample_type="conv", downsample_type="resnet",
    ),
    "no_mid_learned_time": dict(
        block_out_channels=(16, 16, 32), layers_per_block=1, norm_num_groups=4, attention_head_dim=4,
        down_block_types=("UNetResDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UNetResUpBlock2D"),
        mid_block_type=None, time_embedding_type="learned", num_train_timesteps=50, act_fn="gelu",
    ),
    "no_mid_attention_timestep_classes": dict(
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"), add_attention=False, class_embed_type="timestep",
        dropout=0.3, act_fn="relu",
    ),
    "identity_classes": dict(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        class_embed_type="identity", num_class_embeds=5,
    ),
}


def _pair(config: dict, seed: int = 0) -> tuple[torch.nn.Module, UNet2DModel]:
    torch.manual_seed(seed)
    ref = DiffusersUNet(**config).eval()
    ours = UNet2DModel(**config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _inputs(config: dict, batch: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.get("in_channels", 3), size, size, generator=g)
    if config.get("time_embedding_type") == "learned":
        t = torch.randint(0, config["num_train_timesteps"], (batch,), generator=g)
    else:
        t = torch.rand(batch, generator=g) * 1000 - 100
    labels = None
    if config.get("class_embed_type") == "timestep":
        labels = torch.rand(batch, generator=g) * 1000
    elif config.get("class_embed_type") == "identity":
        temb = config.get("time_embedding_dim") or 4 * config["block_out_channels"][0]
        labels = torch.randn(batch, temb, generator=g)
    elif config.get("num_class_embeds"):
        labels = torch.randint(0, config["num_class_embeds"], (batch,), generator=g)
    return x, t, labels


MAX_SEEN: dict[str, float] = {}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("batch", [1, 3])
def test_parity_with_diffusers(name, batch):
    config = CONFIGS[name]
    ref, ours = _pair(config, seed=batch)
    x, t, labels = _inputs(config, batch, 16, seed=batch)
    with torch.no_grad():
        expected = ref(x, t, class_labels=labels).sample
        got = ours(x, t, class_labels=labels).sample
    diff = (expected - got).abs().max().item()
    MAX_SEEN[f"{name}/b{batch}"] = diff
    assert got.shape == expected.shape
    assert diff <= TOL, f"{name}: max |diff| {diff:.3g}"


@pytest.mark.parametrize("form", ["int", "zero_d", "one_elem", "per_sample"])
def test_timestep_forms_match_diffusers(form):
    config = CONFIGS["adm_scale_shift_classes"]
    ref, ours = _pair(config)
    x, _, labels = _inputs(config, 5, 8, seed=3)
    timestep = {
        "int": 417,
        "zero_d": torch.tensor(417.25),
        "one_elem": torch.tensor([417.25]),
        "per_sample": torch.linspace(-500, 900, 5, dtype=torch.float64),
    }[form]
    with torch.no_grad():
        diff = (ref(x, timestep, labels).sample - ours(x, timestep, labels).sample).abs().max().item()
    assert diff <= TOL


def test_python_float_timestep_is_not_truncated():
    # diffusers turns a Python float into a long tensor (417.75 -> 417); cmkit keeps the fraction.
    _, ours = _pair(CONFIGS["conv_default"])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        as_float = ours(x, 417.75).sample
        as_tensor = ours(x, torch.tensor(417.75)).sample
        truncated = ours(x, 417).sample
    torch.testing.assert_close(as_float, as_tensor, rtol=0, atol=0)
    assert not torch.allclose(as_float, truncated)


def test_signature_and_saved_config_match_diffusers(tmp_path):
    ours_params = inspect.signature(UNet2DModel.__init__).parameters
    ref_params = inspect.signature(DiffusersUNet.__init__).parameters
    # cmkit's one addition, TCD's target time: last, off by default, and not written to config.json while off
    assert list(ours_params)[-1] == "target_conditioning" and ours_params["target_conditioning"].default is False
    ours_params = {k: p for k, p in ours_params.items() if k != "target_conditioning"}
    assert list(ours_params) == list(ref_params)
    assert {k: p.default for k, p in ours_params.items()} == {k: p.default for k, p in ref_params.items()}
    config = CONFIGS["adm_scale_shift_classes"]
    ref, ours = _pair(config)
    ref.save_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    ref_cfg = json.loads((tmp_path / "ref" / "config.json").read_text())
    ours_cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert ours_cfg["_class_name"] == "UNet2DModel"
    assert {k: v for k, v in ours_cfg.items() if not k.startswith("_")} == {
        k: v for k, v in ref_cfg.items() if not k.startswith("_")
    }


@pytest.mark.parametrize("safe", [True, False])
def test_ours_to_diffusers_round_trip(tmp_path, safe):
    config = CONFIGS["adm_scale_shift_classes"]
    _, ours = _pair(config, seed=7)
    ours.save_pretrained(tmp_path, safe_serialization=safe)
    expected_file = "diffusion_pytorch_model." + ("safetensors" if safe else "bin")
    assert (tmp_path / expected_file).is_file()
    loaded = DiffusersUNet.from_pretrained(tmp_path).eval()
    x, t, labels = _inputs(config, 2, 8, seed=1)
    with torch.no_grad():
        diff = (loaded(x, t, labels).sample - ours(x, t, labels).sample).abs().max().item()
    assert diff <= TOL


@pytest.mark.parametrize("safe", [True, False])
def test_diffusers_to_ours_round_trip(tmp_path, safe):
    config = CONFIGS["mixed_resampling_options"]
    ref, _ = _pair(config, seed=5)
    ref.save_pretrained(tmp_path / "unet", safe_serialization=safe)
    ours = UNet2DModel.from_pretrained(tmp_path, subfolder="unet")
    assert ours.dtype == torch.float32 and not ours.training
    assert all(p.requires_grad for p in ours.parameters())
    x, t, labels = _inputs(config, 3, 8, seed=2)
    with torch.no_grad():
        diff = (ref(x, t, labels).sample - ours(x, t, labels).sample).abs().max().item()
    assert diff <= TOL


def test_from_pretrained_dtype_arguments(tmp_path):
    _, ours = _pair(CONFIGS["conv_default"])
    ours.save_pretrained(tmp_path)
    assert UNet2DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert UNet2DModel.from_pretrained(tmp_path, dtype="bfloat16").dtype == torch.bfloat16
    assert UNet2DModel.from_pretrained(tmp_path, torch_dtype=torch.float16, dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="disagree"):
        UNet2DModel.from_pretrained(tmp_path, torch_dtype=torch.float16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="not a floating dtype"):
        UNet2DModel.from_pretrained(tmp_path, dtype="int8")


def test_bfloat16_error_is_no_worse_than_diffusers_bfloat16():
    # the same weights and inputs in bfloat16 through both libraries, each measured against the float32 output
    config = CONFIGS["adm_scale_shift_classes"]
    ours_err, theirs_err = [], []
    for seed in range(3):
        ref, ours = _pair(config, seed=seed)
        x, t, labels = _inputs(config, 2, 16, seed=4 + seed)
        with torch.no_grad():
            full = ref(x, t, labels).sample
            half = ours.to(torch.bfloat16)(x.bfloat16(), t, labels).sample
            ref_half = ref.to(torch.bfloat16)(x.bfloat16(), t, labels).sample
        assert half.dtype == torch.bfloat16 and ours.dtype == torch.bfloat16
        ours_err.append((half.float() - full).abs())
        theirs_err.append((ref_half.float() - full).abs())
    ours_all, theirs_all = torch.stack(ours_err), torch.stack(theirs_err)
    assert ours_all.pow(2).mean().sqrt() <= 1.1 * theirs_all.pow(2).mean().sqrt()  # equal up to seed noise (~5%)
    assert ours_all.max() <= 1.25 * theirs_all.max()
    assert ours_all.max() <= 0.05 * full.abs().max()


def test_channels_last_layout_inside_and_standard_layout_out():
    config = CONFIGS["adm_scale_shift_classes"]
    ref, ours = _pair(config)
    convs = [m for m in ours.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    x, t, labels = _inputs(config, 2, 8, seed=1)
    with torch.no_grad():
        out = ours(x, t, labels).sample
        # a channels-last input gives the same numbers
        out_cl = ours(x.contiguous(memory_format=torch.channels_last), t, labels).sample
        expected = ref(x, t, labels).sample
    assert out.is_contiguous()
    torch.testing.assert_close(out_cl, out, rtol=0, atol=0)
    torch.testing.assert_close(out, expected, rtol=0, atol=TOL)


def test_gradient_checkpointing_gives_equal_gradients():
    config = dict(CONFIGS["adm_scale_shift_classes"], dropout=0.2)
    _, ours = _pair(config)
    x, t, labels = _inputs(config, 2, 8, seed=2)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            ours.enable_gradient_checkpointing()
        ours.train().zero_grad()
        torch.manual_seed(5)  # the same dropout masks: checkpoint restores the RNG state for the recomputation
        ours(x, t, labels).sample.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters()})
    assert ours.is_gradient_checkpointing
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)
    ours.disable_gradient_checkpointing()
    assert not ours.is_gradient_checkpointing


def test_legacy_attention_key_names_load(tmp_path):
    from cmkit.io.weights import save_state_dict

    config = CONFIGS["conv_default"]
    ref, ours = _pair(config, seed=2)
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in ref.state_dict().items():
        for new, old in renames.items():
            key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    assert any(".proj_attn." in k for k in legacy)
    ref.save_config(tmp_path)
    save_state_dict(legacy, tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = UNet2DModel.from_pretrained(tmp_path)
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_output_object_and_tuple():
    _, ours = _pair(CONFIGS["conv_default"])
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        out = ours(x, 10)
        tup = ours(x, 10, return_dict=False)
    assert isinstance(out, UNet2DOutput) and isinstance(tup, tuple) and len(tup) == 1
    assert torch.equal(out.sample, out[0]) and torch.equal(out["sample"], tup[0])
    with pytest.raises(KeyError):
        out[1]
    assert ours.device == torch.device("cpu") and ours.sample_size is None


def test_compiles_without_graph_breaks():
    # backend="eager" runs Dynamo's full tracing (any graph break fails with fullgraph=True) without Inductor's
    # slow CPU code generation; the pipeline tests compile with mode="reduce-overhead".
    model = unet_preset("tiny", num_class_embeds=3).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        for timestep in (torch.tensor([3.0, 40.0]), torch.tensor(7.0)):
            torch.testing.assert_close(compiled(x, timestep, labels).sample, model(x, timestep, labels).sample)


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "override, match",
    [
        (dict(down_block_types=("CrossAttnDownBlock2D", "AttnDownBlock2D")), "CrossAttnDownBlock2D"),
        (dict(up_block_types=("AttnUpBlock2D", "SkipUpBlock2D")), "SkipUpBlock2D"),
        (dict(time_embedding_type="fourier"), "fourier"),
        (dict(time_embedding_type="learned"), "num_train_timesteps"),
        (dict(class_embed_type="projection"), "class_embed_type"),
        (dict(resnet_time_scale_shift="ada_group"), "resnet_time_scale_shift"),
        (dict(downsample_type="fir"), "downsample_type"),
        (dict(upsample_type="fir"), "upsample_type"),
        (dict(mid_block_type="UNetMidBlock2DCrossAttn"), "mid_block_type"),
        (dict(block_out_channels=(16, 32, 64)), "block_out_channels"),
        (dict(up_block_types=("UpBlock2D",)), "up_block_types"),
        (dict(norm_num_groups=6), "norm_num_groups"),
        (dict(norm_num_groups=None), "norm_num_groups"),
        (dict(attn_norm_num_groups=5), "attn_norm_num_groups"),
        (dict(act_fn="tanh"), "act_fn"),
        (dict(layers_per_block=0), "layers_per_block"),
        (dict(attention_head_dim=64), "attention_head_dim"),
        (dict(downsample_padding=2), "downsample_padding"),
    ],
)
def test_unrepresentable_configs_raise(override, match):
    with pytest.raises(ValueError, match=match):
        UNet2DModel(**{**CONFIGS["conv_default"], **override})


def test_unknown_config_keys_raise_on_load(tmp_path):
    _, ours = _pair(CONFIGS["conv_default"])
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    # metadata diffusers writes is accepted
    UNet2DModel.from_config({**config, "_name_or_path": "x", "_use_default_values": ["dropout"]})
    with pytest.raises(ValueError, match="cross_attention_dim"):
        UNet2DModel.from_config({**config, "cross_attention_dim": 768})
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        UNet2DModel.from_pretrained(tmp_path)


def test_mismatched_weights_raise_clearly(tmp_path):
    from cmkit.io.weights import save_state_dict

    _, ours = _pair(CONFIGS["conv_default"])
    ours.save_config(tmp_path)
    state = ours.state_dict()
    state.pop("conv_out.bias")
    state["conv_in.weight"] = torch.zeros(1, 3, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    save_state_dict(state, tmp_path / "diffusion_pytorch_model.safetensors")
    expected = "missing keys .*conv_out.bias.*unexpected keys .*extra.weight.*shape mismatches .*conv_in.weight"
    with pytest.raises(ValueError, match=expected):
        UNet2DModel.from_pretrained(tmp_path)


def test_pickled_objects_are_refused(tmp_path):
    _, ours = _pair(CONFIGS["conv_default"])
    ours.save_config(tmp_path)
    torch.save({"weights": ours.state_dict(), "fn": inspect.signature}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only"):
        UNet2DModel.from_pretrained(tmp_path)


def test_missing_directory_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError):
        UNet2DModel.from_pretrained(tmp_path / "nope")
    UNet2DModel(**CONFIGS["conv_default"]).save_pretrained(tmp_path / "pipe" / "unet")
    with pytest.raises(FileNotFoundError, match="subfolder='unet'"):
        UNet2DModel.from_pretrained(tmp_path / "pipe")
    UNet2DModel(**CONFIGS["conv_default"]).save_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights"):
        UNet2DModel.from_pretrained(tmp_path)


def test_forward_input_errors():
    _, cond = _pair(CONFIGS["adm_scale_shift_classes"])
    _, uncond = _pair(CONFIGS["conv_default"])
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="pass class_labels"):
        cond(x, 1.0)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, 1.0, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="timestep has shape"):
        uncond(x, torch.ones(3))
    with pytest.raises(ValueError, match="timestep has shape"):
        uncond(x, torch.ones(2, 1))
    with pytest.raises(TypeError, match="timestep"):
        uncond(x, "1.0")
    with pytest.raises(ValueError, match="multiples of 4"):
        cond(torch.randn(1, 3, 10, 12), 1.0, class_labels=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        uncond(torch.randn(3, 8, 8), 1.0)


# --------------------------------------------------------------------------------------------------- presets


def test_presets():
    assert set(UNET_PRESETS) == {"tiny", "small", "base", "imagenet64", "lsun256"}
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in unet_preset(name).parameters()) for name in UNET_PRESETS}
    assert counts["tiny"] < 1_000_000
    assert counts["tiny"] < counts["small"] < counts["base"] < counts["imagenet64"]
    assert abs(counts["imagenet64"] - 296e6) < 0.5e6
    model = unet_preset("tiny", in_channels=1, out_channels=1, num_class_embeds=10)
    assert model.config.in_channels == 1 and model.config.num_class_embeds == 10
    with pytest.raises(ValueError, match="unknown UNet preset"):
        unet_preset("huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown UNet2DModel argument"):
        unet_preset_config("tiny", channels=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imagenet64", "lsun256"])
def test_published_configs_have_diffusers_keys(name):
    # Built on the meta device: no memory or init time, and no forward pass.
    config = unet_preset_config(name)
    with torch.device("meta"):
        ref = DiffusersUNet(**config).state_dict()
        ours = UNet2DModel(**config).state_dict()
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)
