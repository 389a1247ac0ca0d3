"""What a :class:`~cmkit.models.unet.UNet2DModel` config may be: the block types it builds, the checks that refuse
any config this class cannot build exactly as diffusers does, and the size bounds checked before building.
"""

from __future__ import annotations

from typing import Any, Mapping

from .._validate import check_choice, require_int
from ..limits import MAX_REPEATS, require_parameters_fit
from .layers import activation
from .unet_size import BlockKind, unet_size

#: down block type -> (has attention, downsampler kind; ``None`` = take ``downsample_type`` from the config)
DOWN_BLOCKS: dict[str, BlockKind] = {
    "DownBlock2D": (False, "conv"),
    "ResnetDownsampleBlock2D": (False, "resnet"),
    "AttnDownBlock2D": (True, None),
}
#: up block type -> (has attention, upsampler kind; ``None`` = take ``upsample_type`` from the config)
UP_BLOCKS: dict[str, BlockKind] = {
    "UpBlock2D": (False, "conv"),
    "ResnetUpsampleBlock2D": (False, "resnet"),
    "AttnUpBlock2D": (True, None),
}
#: metadata keys diffusers writes into config.json that do not describe the network (ignored on load).
IGNORED_CONFIG_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")

def block_kind(block_type: str, table: Mapping[str, BlockKind], key: str) -> BlockKind:
    """``block_type``'s entry in ``table``, or a ValueError naming the config ``key`` and the supported types."""
    name = block_type[7:] if block_type.startswith("UNetRes") else block_type  # diffusers' legacy alias prefix
    if name not in table:
        raise ValueError(
            f"{key} contains {block_type!r}, which cmkit's UNet2DModel does not build; supported: {sorted(table)}"
        )
    return table[name]


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the key for any config value this class cannot build exactly as diffusers does."""
    if cfg["time_embedding_type"] == "fourier":
        raise ValueError(
            "time_embedding_type='fourier' (the NCSN++ score-SDE UNet) is not supported by cmkit's UNet2DModel; "
            "use 'positional' (all consistency checkpoints) or 'learned'"
        )
    check_choice("time_embedding_type", cfg["time_embedding_type"], ("positional", "learned"))
    if cfg["time_embedding_type"] == "learned" and not cfg["num_train_timesteps"]:
        raise ValueError("time_embedding_type='learned' needs num_train_timesteps (the size of its table)")
    down, up, channels = list(cfg["down_block_types"]), list(cfg["up_block_types"]), list(cfg["block_out_channels"])
    if len(down) != len(up):
        raise ValueError(
            f"down_block_types has {len(down)} entries but up_block_types has {len(up)}; give both the same length"
        )
    if len(channels) != len(down):
        raise ValueError(
            f"block_out_channels has {len(channels)} entries but down_block_types has {len(down)}; "
            "give one channel count per block"
        )
    if not down:
        raise ValueError("down_block_types is empty; a UNet needs at least one block")
    for block_type in down:
        block_kind(block_type, DOWN_BLOCKS, "down_block_types")
    for block_type in up:
        block_kind(block_type, UP_BLOCKS, "up_block_types")
    check_choice("mid_block_type", cfg["mid_block_type"], ("UNetMidBlock2D", None))
    check_choice("downsample_type", cfg["downsample_type"], ("conv", "resnet"))
    check_choice("upsample_type", cfg["upsample_type"], ("conv", "resnet"))
    check_choice("resnet_time_scale_shift", cfg["resnet_time_scale_shift"], ("default", "scale_shift"))
    check_choice("class_embed_type", cfg["class_embed_type"], (None, "timestep", "identity"))
    check_choice("downsample_padding", cfg["downsample_padding"], (0, 1))
    check_choice("target_conditioning", cfg.get("target_conditioning", False), (False, True))
    layers, groups, attn_groups = cfg["layers_per_block"], cfg["norm_num_groups"], cfg["attn_norm_num_groups"]
    require_int("layers_per_block", layers, 1, " (one count for all blocks)", allow_float=False)
    require_int("norm_num_groups", groups, 1, allow_float=False)
    if any(c % groups for c in channels):
        raise ValueError(f"block_out_channels {channels} must all be divisible by norm_num_groups={groups}")
    if attn_groups is not None and channels[-1] % attn_groups:
        raise ValueError(f"attn_norm_num_groups={attn_groups} must divide the middle block's {channels[-1]} channels")
    head_dim = cfg["attention_head_dim"]
    if head_dim is not None:
        require_int("attention_head_dim", head_dim, 1, " (or None)", allow_float=False)
    activation(cfg["act_fn"])  # raises for an unknown activation name


def check_size(cfg: Mapping[str, Any]) -> None:
    """Refuse configs whose network cannot fit in memory or would take too long to build (cmkit.limits)."""
    for key in ("in_channels", "out_channels"):
        require_int(key, cfg[key], 1)
    for c in cfg["block_out_channels"]:
        require_int("each block_out_channels entry", c, 1)
    for key in ("time_embedding_dim", "num_class_embeds"):
        if cfg[key] is not None:
            require_int(key, cfg[key], 1, " (or None)")
    if cfg["time_embedding_type"] == "learned":
        require_int("num_train_timesteps", cfg["num_train_timesteps"], 1, " (the learned time table)")
    require_int("layers_per_block", cfg["layers_per_block"], 1, maximum=MAX_REPEATS)
    down = [block_kind(t, DOWN_BLOCKS, "down_block_types") for t in cfg["down_block_types"]]
    up = [block_kind(t, UP_BLOCKS, "up_block_types") for t in cfg["up_block_types"]]
    count, blocks = unet_size(cfg, down, up)
    if blocks > MAX_REPEATS:
        raise ValueError(
            f"this UNet2DModel config asks for {blocks:,} residual blocks ({len(cfg['block_out_channels'])} levels, "
            f"layers_per_block={cfg['layers_per_block']}), more than cmkit builds ({MAX_REPEATS:,}); use fewer levels "
            "or a smaller layers_per_block"
        )
    require_parameters_fit(
        count,
        f"a UNet2DModel with block_out_channels={list(cfg['block_out_channels'])}, "
        f"layers_per_block={cfg['layers_per_block']}",
        "lower block_out_channels or layers_per_block (config.json, or --model-option when training)",
    )
