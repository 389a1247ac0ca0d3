"""Sizes from model folders and the command line are bounded before anything is allocated (cmkit.limits)."""

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import cmkit.limits
from cmkit.cli import main
from cmkit.limits import MAX_GRID_POINTS, MAX_REPEATS, available_memory, format_bytes, require_int, require_memory
from cmkit.models.mlp import MLPNet, mlp_parameter_count
from cmkit.models.presets import UNET_PRESETS, unet_preset_config
from cmkit.models.unet import UNet2DModel
from cmkit.models.unet_config import DOWN_BLOCKS, UP_BLOCKS, block_kind
from cmkit.models.unet_size import unet_size
from cmkit.schedulers.cm import CMStochasticIterativeScheduler
from cmkit.schedulers.tcd import TCDScheduler

BUNDLED = Path(__file__).resolve().parent.parent / "src" / "cmkit" / "assets" / "digits_cm"
#: generous: the refusals take milliseconds; without them these cases allocate terabytes or build for hours.
FAST_S = 10.0


@pytest.fixture
def sixteen_gib(monkeypatch):
    """A machine with 16 GiB free, whatever this one has, so the refusals do not depend on the host."""
    monkeypatch.setattr(cmkit.limits, "available_memory", lambda device=None: 16 << 30)


def edited_copy(tmp_path, component, **changes):
    """A copy of the bundled digits pipeline whose ``component`` config has ``changes``."""
    root = tmp_path / "model"
    shutil.copytree(BUNDLED, root)
    name = "config.json" if component == "unet" else "scheduler_config.json"
    path = root / component / name
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return root


def test_require_int_bounds_and_non_finite_values():
    assert require_int("n", 5.0, 1, maximum=10) == 5
    for bad in (0, 2.5, True, "3", float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"n must be an integer >= 1"):
            require_int("n", bad, 1)
    with pytest.raises(ValueError, match=r"n must be an integer <= 10 \(why\), got 11; use a smaller value"):
        require_int("n", 11, 1, " (why)", maximum=10)


def test_available_memory_and_the_refusal_message(monkeypatch):
    free = available_memory()
    if free is not None:  # Linux: /proc/meminfo or sysconf
        assert isinstance(free, int) and free > 0
    assert format_bytes(3 * 2**40 + 2**39) == "3.5 TiB" and format_bytes(512) == "512 B"
    monkeypatch.setattr(cmkit.limits, "available_memory", lambda device=None: 2 << 30)
    require_memory(1 << 30, "a thing", "make it smaller")
    with pytest.raises(ValueError, match=r"a thing would take at least 3.0 GiB of memory, but only 2.0 GiB is "
                                         r"available on this machine; make it smaller"):
        require_memory(3 << 30, "a thing", "make it smaller")
    monkeypatch.setattr(cmkit.limits, "available_memory", lambda device=None: None)
    require_memory(1 << 60, "a thing", "make it smaller")  # unknown memory: no check


@pytest.mark.parametrize("name", UNET_PRESETS)
def test_unet_size_from_the_config_equals_the_built_network(name):
    variants = [unet_preset_config(name)]
    if name == "tiny":
        variants += [
            unet_preset_config(name, time_embedding_type="learned", num_train_timesteps=100,
                               class_embed_type="timestep", downsample_type="conv", upsample_type="conv",
                               mid_block_type=None),
            unet_preset_config(name, attention_head_dim=None, add_attention=False, time_embedding_dim=50,
                               num_class_embeds=7, resnet_time_scale_shift="default",
                               down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                               up_block_types=["AttnUpBlock2D", "UpBlock2D"]),
            unet_preset_config(name, target_conditioning=True),  # TCD's target-time embedding
        ]
    for config in variants:
        with torch.device("meta"):
            net = UNet2DModel(**config)
        cfg = dict(net.config)
        down = [block_kind(t, DOWN_BLOCKS, "") for t in cfg["down_block_types"]]
        up = [block_kind(t, UP_BLOCKS, "") for t in cfg["up_block_types"]]
        count, blocks = unet_size(cfg, down, up)
        assert count == sum(p.numel() for p in net.parameters())
        assert 0 < blocks < 50


def test_mlp_size_from_the_config_equals_the_built_network():
    net = MLPNet(sample_shape=(1, 8, 8), width=33, num_blocks=3, embedding_dim=10, num_class_embeds=4)
    assert net.num_parameters() == mlp_parameter_count(64, 33, 3, 10, 4)
    assert MLPNet().num_parameters() == mlp_parameter_count(2, 128, 3, 64) == 175_106  # the documented count


@pytest.mark.parametrize(
    "component, changes, match",
    [
        ("unet", {"width": 300_000}, r"MLPNet with .*width=300000.*would take at least 4\.3 TiB.*lower width"),
        ("unet", {"num_blocks": 1e7}, rf"num_blocks must be an integer <= {MAX_REPEATS:,}"),
        ("unet", {"num_class_embeds": 10**12}, r"num_class_embeds=1000000000000 .*would take at least"),
        ("scheduler", {"num_train_timesteps": 1e10}, rf"num_train_timesteps must be an integer <= {MAX_GRID_POINTS:,}"),
    ],
)
def test_hostile_model_folder_configs_are_refused_fast(tmp_path, capsys, sixteen_gib, component, changes, match):
    model = edited_copy(tmp_path, component, **changes)
    start = time.perf_counter()
    assert main(["sample", "--model", str(model), "--out", str(tmp_path / "x.png")]) == 1
    assert time.perf_counter() - start < FAST_S
    err = capsys.readouterr().err
    assert err.startswith("cmkit sample: error: ") and re.search(match, err), err


def test_hostile_unet_configs_are_refused_before_building(tmp_path, sixteen_gib):
    config = unet_preset_config("tiny", in_channels=1, out_channels=1)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"layers_per_block must be an integer <= {MAX_REPEATS:,}"):
        UNet2DModel(**{**config, "layers_per_block": 10**7})
    with pytest.raises(ValueError, match=r"block_out_channels=\[32, 640000\].*would take at least .* TiB"):
        UNet2DModel(**{**config, "block_out_channels": [32, 640_000]})
    many_levels = {**config, "block_out_channels": [8] * 600, "norm_num_groups": 8, "attn_norm_num_groups": 8,
                   "down_block_types": ["DownBlock2D"] * 600, "up_block_types": ["UpBlock2D"] * 600}
    with pytest.raises(ValueError, match=r"asks for [\d,]+ residual blocks \(600 levels"):
        UNet2DModel(**many_levels)
    with pytest.raises(ValueError, match="num_train_timesteps must be an integer <= 1,000,000"):
        TCDScheduler(num_train_timesteps=10**10)
    with pytest.raises(ValueError, match="num_train_timesteps must be an integer >= 2"):
        CMStochasticIterativeScheduler(num_train_timesteps=float("inf"))
    assert time.perf_counter() - start < FAST_S
    # the same bound reads a folder: a saved UNet pipeline with layers_per_block = 10^7
    from cmkit.pipeline import ConsistencyModelPipeline

    pipe = ConsistencyModelPipeline(UNet2DModel(**config), CMStochasticIterativeScheduler())
    pipe.save_pretrained(tmp_path / "unet_pipe")
    path = tmp_path / "unet_pipe" / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "layers_per_block": 10**7}))
    with pytest.raises(ValueError, match="layers_per_block"):
        ConsistencyModelPipeline.from_pretrained(tmp_path / "unet_pipe")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["sample", "--batch-size", str(10**9)], r"a batch of 1,000,000,000 samples of shape \(1, 8, 8\)"),
        (["sample", "--scale", "100000"], r"--scale 100000 \(16 images of 800000x800000 pixels"),
        (["demo", "--scale", "100000"], r"--scale 100000 \(160 images of 800000x800000 pixels"),
        (["demo", "--per-class", str(10**9)], r"a batch of 10,000,000,000 samples"),
        (["eval", "--num-samples", str(10**9)], r"5,000,000,000 evaluation samples"),
        (["edit", "interpolate", "--num-images", str(10**9)], r"a batch of 1,000,000,000 samples"),
        (["edit", "denoise", "--sigma", "1", "--steps", str(10**9)], r"number of steps must be an integer <= "),
        (["train", "--batch-size", str(10**9), "--steps", "1"], r"a batch of 1,000,000,000 samples .* per process"),
        (["train", "--resolution", str(8 * 10**5), "--steps", "1"], r"the digits at resolution 800000"),
        (["train", "--model", "mlp", "--model-option", "width=300000", "--steps", "1"], r"MLPNet .*width=300000"),
    ],
)
def test_command_line_sizes_are_refused_before_allocating(tmp_path, capsys, sixteen_gib, argv, match):
    command = argv[0]
    if command == "edit":
        Image.new("L", (8, 8), 128).save(tmp_path / "in.png")
        argv = [*argv[:2], "--model", str(BUNDLED), "--out", str(tmp_path / "o.png"), *argv[2:]]
        if argv[1] == "denoise":
            argv += ["--image", str(tmp_path / "in.png")]
    elif command == "train":
        argv = [*argv, "--output", str(tmp_path / "run"), "--no-progress"]
    elif command != "eval":
        argv = [*argv, "--out", str(tmp_path / "o.png")]
    start = time.perf_counter()
    assert main(argv) == 1
    assert time.perf_counter() - start < FAST_S
    err = capsys.readouterr().err
    assert err.startswith(f"cmkit {command}: error: ") and re.search(match, err), err
