"""Convert original openai/consistency_models ``.pt`` checkpoints into cmkit / diffusers pipeline directories.

The OpenAI UNet (``cm/unet.py``, the ADM layout) stores its weights as

* ``time_embed.{0,2}`` (time MLP), ``label_emb`` (class table, if class-conditional), ``out.{0,2}`` (norm, conv);
* ``input_blocks.K``: ``K = 0`` is the input conv, then per resolution level ``num_res_blocks`` blocks
  ``{0: resblock, 1: attention}`` followed (except at the last level) by a downsampler (a resblock, or a
  strided conv ``op``);
* ``middle_block.{0: resblock, 1: attention, 2: resblock}``;
* ``output_blocks.K``: per level, deepest first, ``num_res_blocks + 1`` blocks ``{0: resblock, 1: attention}``
  whose last one also holds the upsampler (a resblock, or ``conv``) as its final entry;
* resblocks: ``in_layers.{0: norm, 2: conv}``, ``emb_layers.1``, ``out_layers.{0: norm, 3: conv}`` and, when the
  channel count changes, ``skip_connection``; attention: ``norm``, ``qkv`` (a 1x1 conv producing q, k, v),
  ``proj_out``.

A checkpoint may hold the state dict bare, under a wrapper key (``{"model": sd}``, ``{"ema": sd}``,
``{"state_dict": sd}``, ...) or with prefixed keys (``module.`` from DistributedDataParallel); see
:func:`find_openai_state_dict`.

Everything except the attention head width and the image size is read from the weights: channels per level,
``num_res_blocks``, which levels attend, the resampling kind, FiLM (``emb_layers`` twice as wide as the block) or
additive time conditioning, class conditioning and the output channels. The head width is invisible in the
weights; every published checkpoint uses 64 (``--num_head_channels 64``), the default here.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Union

import torch
from torch import Tensor

from .unwrap import FoundStateDict, describe_keys, find_state_dict

QKVLayout = Literal["qkv_major", "head_major"]
SchedulerPreset = Literal["cd", "ct_imagenet64", "ct_lsun256"]

#: Karras grid size N of the published scheduler configs (sigma range 0.002 - 80).
SCHEDULER_TIMESTEPS: dict[str, int] = {"cd": 40, "ct_imagenet64": 201, "ct_lsun256": 151}
#: a key every OpenAI UNet state dict has (the input convolution), and others that show the layout in messages.
OPENAI_MARKER_KEY = "input_blocks.0.0.weight"
_OPENAI_EXAMPLE_KEYS = (OPENAI_MARKER_KEY, "time_embed.0.weight", "middle_block.0.in_layers.0.weight", "out.2.weight")
#: OpenAI's GroupNorm32: 32 groups, eps 1e-5.
OPENAI_NORM_GROUPS = 32
OPENAI_NORM_EPS = 1e-5

_RESBLOCK_PARTS = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)


@dataclass(frozen=True)
class _Source:
    """Where one of our tensors comes from: an OpenAI key and how to transform its tensor."""

    key: str
    transform: Optional[Callable[[Tensor], Tensor]] = None


# ------------------------------------------------------------------------------------------ checkpoint files


def find_openai_state_dict(
    checkpoint: Any, state_dict_key: Optional[str] = None, source: str = "the checkpoint"
) -> FoundStateDict:
    """The OpenAI UNet state dict in a loaded checkpoint: bare, wrapped (``{"ema": sd}``, ``{"model": sd}``,
    ``{"state_dict": sd}``, nested ones) or with every key prefixed (``module.``, ``_orig_mod.``).

    When there are several, EMA weights are taken first (see :mod:`cmkit.io.unwrap`); ``state_dict_key`` names
    another (``"model"``, ``"state_dict/module."``; the names are listed in the result's ``alternatives``).
    Nothing recognisable is a ``ValueError`` that shows the keys found and the keys expected.
    """
    return find_state_dict(
        checkpoint, OPENAI_MARKER_KEY, what="OpenAI UNet", expected=_OPENAI_EXAMPLE_KEYS, name=state_dict_key,
        source=source,
    )  # fmt: skip


def _unwrapped(checkpoint: Any, state_dict_key: Optional[str], source: str) -> dict[str, Tensor]:
    """The state dict to convert; a warning says which one when there was a choice."""
    found = find_openai_state_dict(checkpoint, state_dict_key, source)
    if found.alternatives and state_dict_key is None:
        warnings.warn(
            f"{source} holds {len(found.alternatives) + 1} UNet state dicts; converting {found.describe()} "
            f"(state_dict_key={found.name!r}; EMA weights are preferred). Others: "
            f"{', '.join(repr(n) for n in found.alternatives)}; choose one with state_dict_key (cmkit convert "
            "--state-dict-key)",
            stacklevel=3,
        )
    return found.state_dict


# --------------------------------------------------------------------------------------------- architecture


def _kind(sd: Mapping[str, Tensor], prefix: str) -> Optional[str]:
    """What the module at ``prefix`` is, judged by its parameter names."""
    if f"{prefix}.in_layers.0.weight" in sd:
        return "resblock"
    if f"{prefix}.qkv.weight" in sd:
        return "attention"
    if f"{prefix}.op.weight" in sd:
        return "conv_down"
    if f"{prefix}.conv.weight" in sd:
        return "conv_up"
    return None


def _indices(sd: Mapping[str, Tensor], group: str) -> list[int]:
    found = sorted({int(k.split(".")[1]) for k in sd if k.startswith(f"{group}.") and k.split(".")[1].isdigit()})
    if found != list(range(len(found))):
        missing = sorted(set(range(found[-1] + 1)) - set(found)) if found else []
        raise ValueError(
            f"{group}.{missing[0] if missing else 0} has no weights. A parameter-free layer there (average-pool "
            "downsampling or upsampling without a convolution, i.e. conv_resample=False) cannot be represented by "
            "UNet2DModel"
        )
    return found


def _shape(sd: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"not an OpenAI UNet checkpoint in the expected layout: missing key {key!r}")
    return tuple(sd[key].shape)


def _infer_levels(sd: Mapping[str, Tensor]) -> tuple[int, int]:
    """(number of resolution levels, num_res_blocks), read from where the decoder's upsamplers sit."""
    outputs = _indices(sd, "output_blocks")
    if not outputs:
        raise ValueError("not an OpenAI UNet checkpoint: no output_blocks.* keys")
    ups = []
    for k in outputs:
        if _kind(sd, f"output_blocks.{k}.0") != "resblock":
            raise ValueError(f"output_blocks.{k}.0 should be a residual block (in_layers/emb_layers/out_layers)")
        kinds = [_kind(sd, f"output_blocks.{k}.{j}") for j in (1, 2)]
        if kinds[0] in ("resblock", "conv_up") or (kinds[0] == "attention" and kinds[1] in ("resblock", "conv_up")):
            ups.append(k)
    if not ups:
        return 1, len(outputs) - 1
    per_level = ups[0] + 1
    levels = len(outputs) // per_level
    if len(outputs) % per_level or ups != [per_level * (lvl + 1) - 1 for lvl in range(levels - 1)] or per_level < 2:
        raise ValueError(
            f"unrecognised output_blocks layout: upsamplers at blocks {ups} of {len(outputs)}; expected one at the "
            "end of every level but the last, with the same number of blocks per level"
        )
    return levels, per_level - 1


def _resample_kind(sd: Mapping[str, Tensor], prefix: str) -> str:
    kind = _kind(sd, prefix)
    if kind == "resblock":
        return "resnet"
    if kind in ("conv_down", "conv_up"):
        return "conv"
    raise ValueError(f"expected a down/upsampler at {prefix} (a resblock or a conv), found none")


def _one_kind(kinds: list[str], what: str, default: str) -> str:
    distinct = sorted(set(kinds))
    if len(distinct) > 1:
        raise ValueError(
            f"attention levels mix {' and '.join(distinct)} {what}; UNet2DModel has one {what}_type for all of them"
        )
    return distinct[0] if distinct else default


def _head_dim(channels: list[int], attention_head_dim: Optional[int], num_heads: Optional[int]) -> int:
    if num_heads is not None and attention_head_dim is not None:
        raise ValueError("pass either attention_head_dim or num_heads, not both")
    if num_heads is not None:
        dims = sorted({c // num_heads for c in channels if c % num_heads == 0})
        if len(dims) != 1 or any(c % num_heads for c in channels):
            raise ValueError(
                f"num_heads={num_heads} gives different head widths for attention layers of {sorted(set(channels))} "
                "channels; UNet2DModel uses one attention_head_dim, so pass that instead"
            )
        return dims[0]
    head_dim = 64 if attention_head_dim is None else int(attention_head_dim)
    bad = sorted({c for c in channels if c % head_dim})
    if head_dim < 1 or bad:
        raise ValueError(f"attention_head_dim={head_dim} does not divide the attention channels {bad}")
    return head_dim


def _published_sample_size(config: Mapping[str, object]) -> Optional[int]:
    """The image size of the published preset with this architecture, if there is one."""
    from ..models.presets import unet_preset_config

    for name in ("imagenet64", "lsun256"):
        preset = unet_preset_config(name)  # type: ignore[arg-type]
        keys = ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block")
        if all(config[k] == preset[k] for k in keys):
            return int(preset["sample_size"])
    return None


def infer_openai_config(
    state_dict: Mapping[str, Tensor],
    *,
    num_classes: Optional[int] = None,
    class_cond: Optional[bool] = None,
    attention_head_dim: Optional[int] = None,
    num_heads: Optional[int] = None,
    sample_size: Optional[int] = None,
) -> dict[str, object]:
    """The UNet2DModel config of an OpenAI state dict (explicit arguments are checked against the weights)."""
    sd = state_dict
    if OPENAI_MARKER_KEY not in sd:
        raise ValueError(
            f"not a bare OpenAI UNet state dict: expected keys such as {', '.join(map(repr, _OPENAI_EXAMPLE_KEYS))}; "
            f"found {describe_keys(sd)}. For a wrapped or prefixed checkpoint, use convert_openai_state_dict or "
            "find_openai_state_dict(...).state_dict"
        )
    model_channels, in_channels = _shape(sd, "input_blocks.0.0.weight")[:2]
    temb_dim, temb_in = _shape(sd, "time_embed.0.weight")
    out_channels = _shape(sd, "out.2.weight")[0]
    if temb_in != model_channels:
        raise ValueError(
            f"time_embed.0.weight takes {temb_in} inputs, but input_blocks.0.0 has {model_channels} channels"
        )
    levels, nrb = _infer_levels(sd)
    inputs = _indices(sd, "input_blocks")
    if len(inputs) != levels * (nrb + 1):
        raise ValueError(
            f"input_blocks has {len(inputs)} blocks, but {levels} levels of {nrb} residual blocks need "
            f"{levels * (nrb + 1)}; the encoder and decoder do not match"
        )

    channels: list[int] = []
    attn_channels: list[int] = []
    down_attn: set[int] = set()
    up_attn: set[int] = set()
    down_kinds: dict[int, str] = {}
    up_kinds: dict[int, str] = {}
    for lvl in range(levels):
        first = 1 + lvl * (nrb + 1)
        if _kind(sd, f"input_blocks.{first}.0") != "resblock":
            raise ValueError(f"input_blocks.{first}.0 should be a residual block")
        channels.append(_shape(sd, f"input_blocks.{first}.0.out_layers.3.weight")[0])
        if lvl < levels - 1:
            down_kinds[lvl] = _resample_kind(sd, f"input_blocks.{first + nrb}.0")
        if _kind(sd, f"input_blocks.{first}.1") == "attention":
            down_attn.add(lvl)
            attn_channels.append(channels[-1])
    for i in range(levels):
        first = i * (nrb + 1)
        attends = _kind(sd, f"output_blocks.{first}.1") == "attention"
        if i < levels - 1:
            up_kinds[i] = _resample_kind(sd, f"output_blocks.{first + nrb}.{2 if attends else 1}")
        if attends:
            up_attn.add(i)
            attn_channels.append(_shape(sd, f"output_blocks.{first}.0.out_layers.3.weight")[0])
    # A level without a resampler (the last) takes the kind of the others; it builds the same network either way.
    default_down, default_up = down_kinds.get(0, "resnet"), up_kinds.get(0, "resnet")
    plain_down = {"resnet": "ResnetDownsampleBlock2D", "conv": "DownBlock2D"}
    plain_up = {"resnet": "ResnetUpsampleBlock2D", "conv": "UpBlock2D"}
    down_types = [
        "AttnDownBlock2D" if i in down_attn else plain_down[down_kinds.get(i, default_down)] for i in range(levels)
    ]
    up_types = ["AttnUpBlock2D" if i in up_attn else plain_up[up_kinds.get(i, default_up)] for i in range(levels)]
    has_mid_attention = _kind(sd, "middle_block.1") == "attention"
    if has_mid_attention:
        attn_channels.append(channels[-1])

    emb_rows = _shape(sd, "input_blocks.1.0.emb_layers.1.weight")[0]
    if emb_rows == 2 * channels[0]:
        shift = "scale_shift"
    elif emb_rows == channels[0]:
        shift = "default"
    else:
        raise ValueError(
            f"input_blocks.1.0.emb_layers.1.weight has {emb_rows} rows; expected {channels[0]} (additive time "
            f"conditioning) or {2 * channels[0]} (use_scale_shift_norm)"
        )

    has_labels = "label_emb.weight" in sd
    if class_cond is True and not has_labels:
        raise ValueError("class_cond=True, but the checkpoint has no label_emb.weight: it is unconditional")
    if class_cond is False and has_labels:
        raise ValueError(
            f"class_cond=False, but the checkpoint has label_emb.weight ({_shape(sd, 'label_emb.weight')[0]} classes); "
            "it is class-conditional and would compute something else without it"
        )
    num_class_embeds = None
    if has_labels:
        num_class_embeds, label_dim = _shape(sd, "label_emb.weight")
        if label_dim != temb_dim:
            raise ValueError(f"label_emb.weight has width {label_dim}, the time embedding {temb_dim}")
        if num_classes is not None and num_classes != num_class_embeds:
            raise ValueError(f"num_classes={num_classes}, but label_emb.weight has {num_class_embeds} classes")
    elif num_classes is not None:
        raise ValueError(f"num_classes={num_classes}, but the checkpoint has no label_emb.weight: it is unconditional")

    config: dict[str, object] = {
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "layers_per_block": nrb,
        "num_class_embeds": num_class_embeds,
        "block_out_channels": channels,
        "attention_head_dim": _head_dim(attn_channels, attention_head_dim, num_heads) if attn_channels else 64,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "resnet_time_scale_shift": shift,
        "downsample_type": _one_kind([down_kinds[i] for i in down_kinds if i in down_attn], "downsample", default_down),
        "upsample_type": _one_kind([up_kinds[i] for i in up_kinds if i in up_attn], "upsample", default_up),
        "norm_num_groups": OPENAI_NORM_GROUPS,
        "norm_eps": OPENAI_NORM_EPS,
        "flip_sin_to_cos": True,  # OpenAI's embedding is [cos, sin]
        "freq_shift": 0,
        "add_attention": has_mid_attention,
    }
    if shift == "scale_shift" and has_mid_attention:
        config["attn_norm_num_groups"] = OPENAI_NORM_GROUPS  # OpenAI's mid attention always normalises its input
    if temb_dim != 4 * model_channels:
        config["time_embedding_dim"] = temb_dim
    if sample_size is None:
        config["sample_size"] = _published_sample_size(config)
        if config["sample_size"] is None:
            raise ValueError(
                "the image size is not stored in the weights and this is not a published architecture; "
                "pass sample_size (cmkit convert --sample-size)"
            )
    return config


# ----------------------------------------------------------------------------------------------- key mapping


def _as_linear(key: str) -> Callable[[Tensor], Tensor]:
    def squeeze(w: Tensor) -> Tensor:
        if w.ndim > 2 and all(s == 1 for s in w.shape[2:]):
            return w.reshape(w.shape[0], w.shape[1])
        if w.ndim <= 2:
            return w
        raise ValueError(f"{key} has shape {tuple(w.shape)}; expected a 1x1 convolution")

    return squeeze


def _qkv_part(key: str, part: int, heads: int, layout: QKVLayout) -> Callable[[Tensor], Tensor]:
    """Slice q (0), k (1) or v (2) out of a fused qkv weight or bias."""

    def take(w: Tensor) -> Tensor:
        w = _as_linear(key)(w) if w.ndim > 1 else w
        rows = w.shape[0]
        if rows % (3 * heads):
            raise ValueError(f"{key} has {rows} output channels, not divisible into q, k, v for {heads} heads")
        if layout == "head_major":  # rows ordered (head, q/k/v, dim): guided-diffusion's QKVAttentionLegacy
            w = w.reshape(heads, 3, rows // (3 * heads), *w.shape[1:]).transpose(0, 1).reshape(rows, *w.shape[1:])
        return w.chunk(3, dim=0)[part].clone()

    return take


def _resblock(ours: str, theirs: str) -> dict[str, _Source]:
    return {
        f"{ours}.{o}.{leaf}": _Source(f"{theirs}.{t}.{leaf}") for o, t in _RESBLOCK_PARTS for leaf in ("weight", "bias")
    }


def _attention(ours: str, theirs: str, heads: int, layout: QKVLayout) -> dict[str, _Source]:
    out = {f"{ours}.group_norm.{leaf}": _Source(f"{theirs}.norm.{leaf}") for leaf in ("weight", "bias")}
    for part, name in enumerate(("to_q", "to_k", "to_v")):
        for leaf in ("weight", "bias"):
            key = f"{theirs}.qkv.{leaf}"
            out[f"{ours}.{name}.{leaf}"] = _Source(key, _qkv_part(key, part, heads, layout))
    out[f"{ours}.to_out.0.weight"] = _Source(f"{theirs}.proj_out.weight", _as_linear(f"{theirs}.proj_out.weight"))
    out[f"{ours}.to_out.0.bias"] = _Source(f"{theirs}.proj_out.bias")
    return out


def _plain(ours: str, theirs: str) -> dict[str, _Source]:
    return {f"{ours}.{leaf}": _Source(f"{theirs}.{leaf}") for leaf in ("weight", "bias")}


def openai_sources(config: Mapping[str, object], qkv_layout: QKVLayout = "qkv_major") -> dict[str, _Source]:
    """For every possible UNet2DModel key of ``config``, the OpenAI key (and transform) it is read from."""
    channels = list(config["block_out_channels"])  # type: ignore[call-overload]
    nrb = int(config["layers_per_block"])  # type: ignore[call-overload]
    head_dim = int(config["attention_head_dim"])  # type: ignore[call-overload]
    levels = len(channels)
    src: dict[str, _Source] = {}
    src.update(_plain("time_embedding.linear_1", "time_embed.0"))
    src.update(_plain("time_embedding.linear_2", "time_embed.2"))
    src["class_embedding.weight"] = _Source("label_emb.weight")
    src.update(_plain("conv_in", "input_blocks.0.0"))
    k = 1
    for lvl, block_type in enumerate(config["down_block_types"]):  # type: ignore[call-overload]
        attends = str(block_type).startswith("Attn")
        for j in range(nrb):
            src.update(_resblock(f"down_blocks.{lvl}.resnets.{j}", f"input_blocks.{k}.0"))
            if attends:
                heads = channels[lvl] // head_dim
                src.update(_attention(f"down_blocks.{lvl}.attentions.{j}", f"input_blocks.{k}.1", heads, qkv_layout))
            k += 1
        if lvl < levels - 1:
            src.update(_resblock(f"down_blocks.{lvl}.downsamplers.0", f"input_blocks.{k}.0"))
            src.update(_plain(f"down_blocks.{lvl}.downsamplers.0.conv", f"input_blocks.{k}.0.op"))
            k += 1
    src.update(_resblock("mid_block.resnets.0", "middle_block.0"))
    src.update(_attention("mid_block.attentions.0", "middle_block.1", channels[-1] // head_dim, qkv_layout))
    src.update(_resblock("mid_block.resnets.1", "middle_block.2"))
    k = 0
    for i, block_type in enumerate(config["up_block_types"]):  # type: ignore[call-overload]
        attends = str(block_type).startswith("Attn")
        ch = channels[levels - 1 - i]
        for j in range(nrb + 1):
            src.update(_resblock(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0"))
            if attends:
                heads = ch // head_dim
                src.update(_attention(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1", heads, qkv_layout))
            if j == nrb and i < levels - 1:
                sub = 2 if attends else 1
                src.update(_resblock(f"up_blocks.{i}.upsamplers.0", f"output_blocks.{k}.{sub}"))
                src.update(_plain(f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{k}.{sub}.conv"))
            k += 1
    src.update(_plain("conv_norm_out", "out.0"))
    src.update(_plain("conv_out", "out.2"))
    return src


def convert_openai_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    num_classes: Optional[int] = None,
    class_cond: Optional[bool] = None,
    attention_head_dim: Optional[int] = None,
    num_heads: Optional[int] = None,
    sample_size: Optional[int] = None,
    qkv_layout: QKVLayout = "qkv_major",
    state_dict_key: Optional[str] = None,
) -> tuple[dict[str, object], dict[str, Tensor]]:
    """Convert an OpenAI UNet state dict into ``(UNet2DModel config, UNet2DModel state dict)``.

    ``state_dict`` may also be a wrapped or prefixed checkpoint (see :func:`find_openai_state_dict`, which
    ``state_dict_key`` is passed to).

    The architecture is inferred from the weights; ``num_classes`` / ``class_cond`` are checked against them.
    ``attention_head_dim`` (default 64) or ``num_heads`` set the head split the weights cannot show.
    ``qkv_layout`` is the row order of the fused qkv projection: ``"qkv_major"`` (q rows, then k, then v; the
    consistency-model checkpoints) or ``"head_major"`` (per head q, k, v; guided-diffusion's legacy attention).
    Unknown keys, missing keys and shape mismatches raise ``ValueError`` naming the OpenAI key.
    """
    from ..models.unet import UNet2DModel

    if qkv_layout not in ("qkv_major", "head_major"):
        raise ValueError(f"qkv_layout={qkv_layout!r} is not supported; use 'qkv_major' or 'head_major'")
    sd = _unwrapped(state_dict, state_dict_key, "the state dict")
    config = infer_openai_config(
        sd, num_classes=num_classes, class_cond=class_cond, attention_head_dim=attention_head_dim,
        num_heads=num_heads, sample_size=sample_size,
    )  # fmt: skip
    with torch.device("meta"):
        model = UNet2DModel(**config)  # type: ignore[arg-type]
    config = {k: v for k, v in model.config.items()}
    expected = model.state_dict()
    sources = openai_sources(config, qkv_layout)
    converted: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, target in expected.items():
        source = sources.get(key)
        if source is None:  # pragma: no cover - the mapping covers every key the configs above can produce
            raise ValueError(f"no OpenAI source known for UNet2DModel key {key!r}")
        if source.key not in sd:
            raise ValueError(f"checkpoint lacks {source.key!r} (needed for {key}); it does not fit the inferred layout")
        tensor = sd[source.key]
        value = source.transform(tensor) if source.transform else tensor
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"{source.key} has shape {tuple(tensor.shape)}, which gives {tuple(value.shape)} for {key}; "
                f"the inferred architecture needs {tuple(target.shape)}"
            )
        converted[key] = value
        used.add(source.key)
    unknown = sorted(set(sd) - used)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise ValueError(f"checkpoint keys that do not fit the inferred OpenAI UNet layout: {shown}")
    return config, converted


def convert_openai_checkpoint(
    checkpoint_path: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    *,
    scheduler: SchedulerPreset,
    num_classes: Optional[int] = None,
    class_cond: Optional[bool] = None,
    attention_head_dim: Optional[int] = None,
    num_heads: Optional[int] = None,
    sample_size: Optional[int] = None,
    qkv_layout: QKVLayout = "qkv_major",
    dtype: torch.dtype = torch.float32,
    state_dict_key: Optional[str] = None,
) -> Path:
    """Convert an OpenAI ``.pt`` (loaded with ``weights_only=True``) into a ConsistencyModelPipeline directory.

    The file may hold the state dict bare, wrapped or prefixed (:func:`find_openai_state_dict`); when it holds
    several (e.g. ``model`` and ``ema``), the EMA weights are converted with a warning, or the one
    ``state_dict_key`` names.

    ``scheduler`` picks the published Karras grid: ``"cd"`` (N=40), ``"ct_imagenet64"`` (N=201) or
    ``"ct_lsun256"`` (N=151), all with sigma in [0.002, 80]. Writes ``model_index.json``, ``unet/`` and
    ``scheduler/`` in diffusers' layout and returns ``out_dir``.
    """
    from ..models.modeling import load_exact_state_dict
    from ..models.unet import UNet2DModel
    from ..pipeline import ConsistencyModelPipeline
    from ..schedulers.cm import CMStochasticIterativeScheduler
    from .weights import load_state_dict, load_torch_file

    if scheduler not in SCHEDULER_TIMESTEPS:
        raise ValueError(f"scheduler={scheduler!r} is not known; use one of {sorted(SCHEDULER_TIMESTEPS)}")
    path = Path(checkpoint_path)
    loaded = load_state_dict(path) if path.suffix == ".safetensors" else load_torch_file(path)
    state = _unwrapped(loaded, state_dict_key, str(path))
    config, converted = convert_openai_state_dict(
        state, num_classes=num_classes, class_cond=class_cond, attention_head_dim=attention_head_dim,
        num_heads=num_heads, sample_size=sample_size, qkv_layout=qkv_layout,
    )  # fmt: skip
    with torch.device("meta"):
        unet = UNet2DModel.from_config(config)
    load_exact_state_dict(unet, converted, source=str(checkpoint_path))
    unet.to(dtype=dtype).eval()
    cm_scheduler = CMStochasticIterativeScheduler(
        num_train_timesteps=SCHEDULER_TIMESTEPS[scheduler], sigma_min=0.002, sigma_max=80.0
    )
    out = Path(out_dir)
    ConsistencyModelPipeline(unet=unet, scheduler=cm_scheduler).save_pretrained(out)
    return out
