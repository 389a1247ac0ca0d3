"""The network presets: classes, the papers' arguments and parameter counts, shapes from the data, overrides."""

import pytest
import torch

from cmkit.models.dhariwal_unet import DhariwalUNet
from cmkit.models.edm2_unet import EDM2UNet
from cmkit.models.presets import (
    NETWORK_PRESETS, UNET_PRESETS, build_preset, build_preset_for_data, preset_config,
)  # fmt: skip
from cmkit.models.song_unet import SongUNet
from cmkit.models.unet import UNet2DModel

#: parameter counts of the reference implementations (EDM training/networks.py, EDM2 training/networks_edm2.py)
#: built with the same arguments, counted once with the reference code.
REFERENCE_COUNTS = {
    "ddpmpp": 55_733_891,  # SongUNet, CIFAR-10 unconditional, augment_dim 9
    "ncsnpp": 56_397_827,
    "adm-imagenet64": 295_899_267,  # DhariwalUNet, 1000 classes
    "edm2-img64-s": 280_209_253,  # EDM2 UNet (its Precond adds a 128-channel uncertainty head: +128)
    "edm2-img64-m": 497_803_045,
    "edm2-img64-l": 777_492_197,
    "edm2-img64-xl": 1_119_276_709,
}


@pytest.mark.parametrize("name", REFERENCE_COUNTS)
def test_full_size_presets_have_the_reference_parameter_counts(name):
    with torch.device("meta"):
        net = build_preset(name)
    assert sum(p.numel() for p in net.parameters()) == REFERENCE_COUNTS[name]


def test_the_table_names_classes_and_the_papers_arguments():
    assert [n for n in NETWORK_PRESETS if NETWORK_PRESETS[n].network is UNet2DModel] == list(UNET_PRESETS)
    classes = {name: preset.network for name, preset in NETWORK_PRESETS.items()}
    assert classes["ddpmpp"] is classes["ncsnpp"] is SongUNet and classes["adm-imagenet64"] is DhariwalUNet
    assert {classes[f"edm2-img64-{s}"] for s in ("s", "m", "l", "xl")} == {EDM2UNet}
    _, ddpmpp = preset_config("ddpmpp")
    assert [ddpmpp[k] for k in ("model_channels", "channel_mult", "num_blocks", "dropout")] == [128, [2, 2, 2], 4, 0.13]
    assert ddpmpp["augment_dim"] == 9 and ddpmpp["attn_resolutions"] == [16]
    _, ncsnpp = preset_config("ncsnpp")
    assert [ncsnpp[k] for k in ("embedding_type", "encoder_type", "resample_filter")] == ["fourier", "residual",
                                                                                         [1, 3, 3, 1]]
    _, adm = preset_config("adm-imagenet64")
    assert [adm[k] for k in ("model_channels", "attn_resolutions", "dropout", "label_dim")] == [192, [32, 16, 8], 0.1,
                                                                                               1000]
    assert [preset_config(f"edm2-img64-{s}")[1]["dropout"] for s in ("s", "m", "l", "xl")] == [0.0, 0.1, 0.1, 0.1]


@pytest.mark.parametrize("name, shape_keys", [
    ("ddpmpp", {"img_resolution": 16, "in_channels": 1, "out_channels": 1, "label_dim": 10}),
    ("adm-imagenet64", {"img_resolution": 16, "in_channels": 1, "out_channels": 1, "label_dim": 10}),
    ("edm2-img64-s", {"img_resolution": 16, "img_channels": 1, "label_dim": 10}),
    ("tiny", {"sample_size": 16, "in_channels": 1, "out_channels": 1, "num_class_embeds": 10}),
])  # fmt: skip
def test_the_data_decide_the_shape(name, shape_keys):
    with torch.device("meta"):
        net = build_preset_for_data(name, 16, 1, 10)
        unconditional = build_preset_for_data(name, 16, 1, None)
    assert {k: net.config[k] for k in shape_keys} == shape_keys
    assert unconditional.config.get("label_dim", unconditional.config.get("num_class_embeds")) in (0, None)


def test_overrides_scale_a_preset_down_and_unknown_ones_raise():
    net = build_preset_for_data("ddpmpp", 16, 1, 10, model_channels=16, num_blocks=1)
    assert net.config["model_channels"] == 16 and net.config["channel_mult"] == [2, 2, 2]
    with pytest.raises(ValueError, match=r"unknown SongUNet argument\(s\) \['block_out_channels'\]"):
        build_preset("ddpmpp", block_out_channels=[16])
    with pytest.raises(ValueError, match="unknown network preset 'huge'"):
        build_preset("huge")
