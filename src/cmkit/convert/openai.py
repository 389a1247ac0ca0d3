"""Convert original openai/consistency_models ``.pt`` checkpoints into cmkit / diffusers pipeline directories.

Two OpenAI UNet architectures were published, and both are cmkit presets (:mod:`cmkit.models.presets`):
``imagenet64`` (cd/ct_imagenet64) and ``lsun256`` (cd/ct_bedroom256, cat256). A checkpoint whose every key and
shape fits one of them (with the class table its ``label_emb`` shows, if any) is converted as that preset. Any
other architecture is converted from its UNet2DModel config: ``unet_config`` (a mapping or a JSON file;
``cmkit convert --unet-config``), or a ``preset`` with ``unet_config`` as its overrides (``--preset``).
:func:`openai_sources` maps the config's keys to OpenAI's (``cm/unet.py``, the ADM layout: ``input_blocks``,
``middle_block``, ``output_blocks``, ``time_embed``, ``label_emb``, ``out``); every key of the checkpoint must
be used, with the shape the config needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Union

import torch
from torch import Tensor

from .._validate import check_choice, require_int
from ..models.modeling import load_exact_state_dict
from ..models.presets import PresetName, unet_preset_config
from ..models.unet import UNet2DModel
from ..pipeline import ConsistencyModelPipeline
from ..schedulers.cm import CMStochasticIterativeScheduler
from .unwrap import FoundStateDict, describe_keys, find_state_dict, unwrap_state_dict
from ..io.weights import load_state_dict, load_torch_file

QKVLayout = Literal["qkv_major", "head_major"]
SchedulerPreset = Literal["cd", "ct_imagenet64", "ct_lsun256"]
UNetConfigLike = Union[Mapping[str, Any], str, os.PathLike]

#: Karras grid size N of the published scheduler configs (sigma range 0.002 - 80).
SCHEDULER_TIMESTEPS: dict[str, int] = {"cd": 40, "ct_imagenet64": 201, "ct_lsun256": 151}
#: the presets of the published architectures, tried in this order when no config is given.
PUBLISHED_PRESETS: tuple[PresetName, ...] = ("imagenet64", "lsun256")
#: a key every OpenAI UNet state dict has (the input convolution), and others that show the layout in messages.
OPENAI_MARKER_KEY = "input_blocks.0.0.weight"
_OPENAI_EXAMPLE_KEYS = (OPENAI_MARKER_KEY, "time_embed.0.weight", "middle_block.0.in_layers.0.weight", "out.2.weight")
_OPENAI_UNET: dict[str, Any] = {"what": "OpenAI UNet", "expected": _OPENAI_EXAMPLE_KEYS}
#: what the weights cannot show but every OpenAI UNet is: GroupNorm32 (32 groups, eps 1e-5), a [cos, sin]
#: sinusoidal time embedding, SiLU, a class table added to the time embedding, a mid block with attention.
OPENAI_FIXED: dict[str, Any] = {
    "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
    "time_embedding_type": "positional", "center_input_sample": False, "class_embed_type": None,
    "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1, "downsample_padding": 1,
}  # fmt: skip
_RESBLOCK_PARTS = (
    ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"), ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"),
)  # fmt: skip


@dataclass(frozen=True)
class _Source:
    """Where one of our tensors comes from: an OpenAI key and how to transform its tensor."""

    key: str
    transform: Optional[Callable[[Tensor], Tensor]] = None

    def read(self, sd: Mapping[str, Tensor]) -> Tensor:
        return self.transform(sd[self.key]) if self.transform else sd[self.key]


def find_openai_state_dict(
    checkpoint: Any, state_dict_key: Optional[str] = None, source: str = "the checkpoint"
) -> FoundStateDict:
    """The OpenAI UNet state dict in a loaded checkpoint: bare, wrapped (``{"ema": sd}``, ``{"state_dict": sd}``,
    nested) or with prefixed keys (``module.``); EMA weights first, or the one ``state_dict_key`` names (the result
    lists the ``alternatives``). See :mod:`cmkit.convert.unwrap`."""
    return find_state_dict(checkpoint, OPENAI_MARKER_KEY, **_OPENAI_UNET, name=state_dict_key, source=source)


def _unwrapped(checkpoint: Any, state_dict_key: Optional[str], source: str) -> dict[str, Tensor]:
    return unwrap_state_dict(checkpoint, OPENAI_MARKER_KEY, **_OPENAI_UNET, name=state_dict_key, source=source)


def _check_checkpoint(sd: Mapping[str, Tensor], num_classes: Optional[int], class_cond: Optional[bool]) -> str:
    """Checks that need no config (block numbering, the class flags); returns what the weights show, in words."""
    if OPENAI_MARKER_KEY not in sd:
        raise ValueError(
            f"not a bare OpenAI UNet state dict: expected keys such as {', '.join(map(repr, _OPENAI_EXAMPLE_KEYS))}; "
            f"found {describe_keys(sd)}. For a wrapped or prefixed checkpoint, use convert_openai_state_dict or "
            "find_openai_state_dict(...).state_dict"
        )
    seen = [f"model_channels={tuple(sd[OPENAI_MARKER_KEY].shape)[0]}"]
    for group in ("input_blocks", "output_blocks"):
        found = {int(k.split(".")[1]) for k in sd if k.startswith(f"{group}.") and k.split(".")[1].isdigit()}
        gaps = sorted(set(range(max(found, default=-1) + 1)) - found)
        if gaps:
            raise ValueError(
                f"{group}.{gaps[0]} has no weights. A parameter-free layer there (average-pool downsampling or "
                "upsampling without a convolution, i.e. conv_resample=False) cannot be represented by UNet2DModel"
            )
        seen.append(f"{len(found)} {group}")
    classes = int(sd["label_emb.weight"].shape[0]) if "label_emb.weight" in sd else None
    if class_cond not in (None, classes is not None) or num_classes not in (None, classes):
        flags = [f"{n}={v}" for n, v in (("class_cond", class_cond), ("num_classes", num_classes)) if v is not None]
        has = f"label_emb.weight ({classes} classes): it is class-conditional" if classes is not None else (
            "no label_emb.weight: it is unconditional")  # fmt: skip
        raise ValueError(f"{', '.join(flags)}, but the checkpoint has {has}. These options only check the weights")
    return ", ".join(seen + [f"{classes or 'no'} classes"])


def _openai_config(
    sd: Mapping[str, Tensor], config: Mapping[str, Any], attention_head_dim: Optional[int],
    num_heads: Optional[int], sample_size: Optional[int],
) -> dict[str, Any]:  # fmt: skip
    """``config`` with what every OpenAI UNet has (other values refused) and the explicit options, checked."""
    conflicts = [f"{k}={config[k]!r} (OpenAI: {v!r})" for k, v in OPENAI_FIXED.items() if config.get(k, v) != v]
    if conflicts:
        raise ValueError(f"an OpenAI UNet cannot have {', '.join(conflicts)}; remove these keys from the UNet config")
    if num_heads is not None and attention_head_dim is not None:
        raise ValueError("pass either attention_head_dim or num_heads, not both")
    out = {"attention_head_dim": 64, **config, **OPENAI_FIXED}  # 64: every published model's --num_head_channels
    if out.get("resnet_time_scale_shift") == "scale_shift" and out.get("attn_norm_num_groups") is None:
        out["attn_norm_num_groups"] = OPENAI_FIXED["norm_num_groups"]  # OpenAI's mid attention always normalises
    channels = sorted({int(v.shape[0]) // 3 for k, v in sd.items() if k.endswith(".qkv.weight")})  # attention widths
    if num_heads is not None and channels:
        if len({c // num_heads for c in channels}) > 1 or any(c % num_heads for c in channels):
            raise ValueError(
                f"num_heads={num_heads} gives different head widths for attention layers of {channels} channels; "
                "UNet2DModel uses one attention_head_dim, so pass that instead"
            )
        attention_head_dim = channels[0] // num_heads
    head_dim = require_int("attention_head_dim", out["attention_head_dim"] if attention_head_dim is None else
                           attention_head_dim, 1)  # fmt: skip
    if any(c % head_dim for c in channels):
        raise ValueError(f"attention_head_dim={head_dim} does not divide the attention channels {channels}")
    out.update(attention_head_dim=head_dim, sample_size=out.get("sample_size") if sample_size is None else sample_size)
    if out["sample_size"] is None:
        raise ValueError(
            "the image size is not stored in the weights; put sample_size in the UNet config or pass sample_size "
            "(cmkit convert --sample-size)"
        )
    return out


def _as_linear(key: str, w: Tensor) -> Tensor:
    """A 1x1 convolution's weight (or a bias) as a linear layer's."""
    if w.ndim > 2 and any(size != 1 for size in w.shape[2:]):
        raise ValueError(f"{key} has shape {tuple(w.shape)}; expected a 1x1 convolution")
    return w.reshape(w.shape[0], w.shape[1]) if w.ndim > 2 else w


def _qkv_part(key: str, part: int, heads: int, layout: QKVLayout, w: Tensor) -> Tensor:
    """q (0), k (1) or v (2) out of a fused qkv weight or bias."""
    w, rows = _as_linear(key, w), w.shape[0]
    if rows % (3 * heads):
        raise ValueError(f"{key} has {rows} output channels, not divisible into q, k, v for {heads} heads")
    if layout == "head_major":  # rows ordered (head, q/k/v, dim): guided-diffusion's QKVAttentionLegacy
        w = w.reshape(heads, 3, rows // (3 * heads), *w.shape[1:]).transpose(0, 1).reshape(rows, *w.shape[1:])
    return w.chunk(3, dim=0)[part].clone()


def _plain(ours: str, theirs: str) -> dict[str, _Source]:
    return {f"{ours}.{leaf}": _Source(f"{theirs}.{leaf}") for leaf in ("weight", "bias")}


def _resblock(ours: str, theirs: str, conv: str = "") -> dict[str, _Source]:
    """A residual block; ``conv`` names the resampling conv that may stand in its place (``op`` or ``conv``)."""
    out = {k: s for o, t in _RESBLOCK_PARTS for k, s in _plain(f"{ours}.{o}", f"{theirs}.{t}").items()}
    return {**out, **(_plain(f"{ours}.conv", f"{theirs}.{conv}") if conv else {})}


def _attention(ours: str, theirs: str, heads: int, layout: QKVLayout) -> dict[str, _Source]:
    out = _plain(f"{ours}.group_norm", f"{theirs}.norm")
    for part, name in enumerate(("to_q", "to_k", "to_v")):
        for leaf in ("weight", "bias"):
            key = f"{theirs}.qkv.{leaf}"
            out[f"{ours}.{name}.{leaf}"] = _Source(key, partial(_qkv_part, key, part, heads, layout))
    proj = f"{theirs}.proj_out"
    return {**out, f"{ours}.to_out.0.weight": _Source(f"{proj}.weight", partial(_as_linear, f"{proj}.weight")),
            f"{ours}.to_out.0.bias": _Source(f"{proj}.bias")}  # fmt: skip


def openai_sources(config: Mapping[str, Any], qkv_layout: QKVLayout = "qkv_major") -> dict[str, _Source]:
    """The fixed key map of a (complete) UNet2DModel config: for each of its keys, the OpenAI source."""
    channels, nrb = list(config["block_out_channels"]), int(config["layers_per_block"])
    heads = [c // int(config["attention_head_dim"]) for c in channels]
    levels = len(channels)
    src = {**_plain("time_embedding.linear_1", "time_embed.0"), **_plain("time_embedding.linear_2", "time_embed.2"),
           "class_embedding.weight": _Source("label_emb.weight"), **_plain("conv_in", "input_blocks.0.0"),
           **_plain("conv_norm_out", "out.0"), **_plain("conv_out", "out.2")}  # fmt: skip
    for ours, theirs, n, i in (("down", "input", nrb, 0), ("up", "output", nrb + 1, 1)):
        for lvl, block_type in enumerate(config[f"{ours}_block_types"]):
            attends, level = str(block_type).startswith("Attn"), (levels - 1 - lvl if i else lvl)
            for j in range(n):
                k = lvl * (nrb + 1) + j + 1 - i  # input_blocks.0 is the input conv
                src.update(_resblock(f"{ours}_blocks.{lvl}.resnets.{j}", f"{theirs}_blocks.{k}.0"))
                if attends:
                    at = (f"{ours}_blocks.{lvl}.attentions.{j}", f"{theirs}_blocks.{k}.1")
                    src.update(_attention(*at, heads[level], qkv_layout))
            if lvl < levels - 1:  # the resampler: its own input block, or the last entry of the level's last block
                where = f"input_blocks.{k + 1}.0" if not i else f"output_blocks.{k}.{2 if attends else 1}"
                src.update(_resblock(f"{ours}_blocks.{lvl}.{ours}samplers.0", where, "conv" if i else "op"))
    src.update(_resblock("mid_block.resnets.0", "middle_block.0"))
    src.update(_attention("mid_block.attentions.0", "middle_block.1", heads[-1], qkv_layout))
    src.update(_resblock("mid_block.resnets.1", "middle_block.2"))
    return src


def _checked_sources(
    sd: Mapping[str, Tensor], config: Mapping[str, Any], qkv_layout: QKVLayout
) -> tuple[dict[str, Any], dict[str, _Source]]:
    """(the built config, the key map) once every key and shape of ``sd`` fits ``config``; tensors stay untouched
    (the transforms run on meta copies), so a 500M-parameter checkpoint is checked at no cost."""
    with torch.device("meta"):
        model = UNet2DModel.from_config(config)
    # the config as saved: diffusers' keys only (cmkit's target_conditioning is off for an OpenAI UNet)
    full, targets = {k: v for k, v in model.config.items() if k != "target_conditioning" or v}, model.state_dict()
    every = openai_sources(full, qkv_layout)
    sources = {key: every[key] for key in targets}  # the map covers every key these configs can produce
    meta = {k: v.to("meta") for k, v in sd.items()}
    for key, target in targets.items():
        source = sources[key]
        if source.key not in sd:
            raise ValueError(f"checkpoint lacks {source.key!r} (needed for {key}); it does not fit the UNet config")
        value = source.read(meta)
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"{source.key} has shape {tuple(sd[source.key].shape)}, which gives {tuple(value.shape)} for {key}; "
                f"the UNet config needs {tuple(target.shape)}"
            )
    unknown = sorted(set(sd) - {source.key for source in sources.values()})
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise ValueError(f"checkpoint keys that do not fit the UNet config's OpenAI layout: {shown}")
    return full, sources


def _resolve(
    sd: Mapping[str, Tensor], *, unet_config: Optional[UNetConfigLike] = None, preset: Optional[PresetName] = None,
    num_classes: Optional[int] = None, class_cond: Optional[bool] = None, attention_head_dim: Optional[int] = None,
    num_heads: Optional[int] = None, sample_size: Optional[int] = None, qkv_layout: QKVLayout = "qkv_major",
) -> tuple[dict[str, Any], dict[str, _Source]]:  # fmt: skip
    """The config and key map of a bare state dict: the given config, or the published preset it fits."""
    check_choice("qkv_layout", qkv_layout, ("qkv_major", "head_major"))
    seen = _check_checkpoint(sd, num_classes, class_cond)
    options = (attention_head_dim, num_heads, sample_size)
    if unet_config is not None or preset is not None:
        if isinstance(unet_config, (str, os.PathLike)):
            unet_config = UNet2DModel.load_config(unet_config)  # a JSON file, or a directory with config.json
        if not isinstance(unet_config, (Mapping, type(None))):
            raise ValueError(f"unet_config must be a UNet2DModel config (a mapping), not {type(unet_config).__name__}")
        given = {k: v for k, v in (unet_config or {}).items() if not k.startswith("_")}  # "_class_name" etc.
        config = unet_preset_config(preset, **given) if preset is not None else given
        return _checked_sources(sd, _openai_config(sd, config, *options), qkv_layout)
    classes = int(sd["label_emb.weight"].shape[0]) if "label_emb.weight" in sd else None
    problems = []
    for name in PUBLISHED_PRESETS:
        try:
            config = _openai_config(sd, unet_preset_config(name, num_class_embeds=classes), *options)
            return _checked_sources(sd, config, qkv_layout)
        except ValueError as err:
            problems.append(f"as {name}: {err}")
    raise ValueError(
        f"the checkpoint ({seen}) is neither published OpenAI architecture ({'; '.join(problems)}). Give its "
        "UNet2DModel config: unet_config={...} or a JSON file (cmkit convert --unet-config FILE), or a preset with "
        "overrides (preset=..., cmkit convert --preset NAME [--unet-config OVERRIDES.json])"
    )


def openai_unet_config(state_dict: Mapping[str, Tensor], **options: Any) -> dict[str, Any]:
    """The UNet2DModel config of a bare OpenAI state dict, checked key by key and shape by shape against it
    (``options`` are those of :func:`convert_openai_state_dict`)."""
    return _resolve(state_dict, **options)[0]


def convert_openai_state_dict(
    state_dict: Mapping[str, Tensor], *, state_dict_key: Optional[str] = None, **options: Any
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Convert an OpenAI UNet state dict (bare, wrapped or prefixed: :func:`find_openai_state_dict`, given
    ``state_dict_key``) into ``(UNet2DModel config, UNet2DModel state dict)``.

    ``options``: the architecture is the published preset the weights fit, or ``unet_config`` (a mapping or JSON
    file), over ``preset`` if given. ``attention_head_dim`` (default 64) or ``num_heads``, and ``sample_size``,
    override it; ``num_classes`` / ``class_cond`` are checked against the weights. ``qkv_layout`` is the row order
    of the fused qkv projection: ``"qkv_major"`` (q rows, then k, then v; the consistency models) or
    ``"head_major"`` (per head q, k, v; guided-diffusion's legacy attention). A key that is missing or unused, or
    of the wrong shape, is a ``ValueError`` naming the OpenAI key.
    """
    sd = _unwrapped(state_dict, state_dict_key, "the state dict")
    config, sources = _resolve(sd, **options)
    return config, {key: source.read(sd) for key, source in sources.items()}


def convert_openai_checkpoint(
    checkpoint_path: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], *, scheduler: SchedulerPreset,
    dtype: torch.dtype = torch.float32, state_dict_key: Optional[str] = None, **options: Any,
) -> Path:  # fmt: skip
    """Convert an OpenAI ``.pt`` (loaded with ``weights_only=True``) or ``.safetensors`` file into a
    ConsistencyModelPipeline directory (``model_index.json``, ``unet/``, ``scheduler/``); returns ``out_dir``.
    ``state_dict_key`` and ``options`` are those of :func:`convert_openai_state_dict`. ``scheduler`` picks the
    published Karras grid, sigma in [0.002, 80]: ``"cd"`` (N=40), ``"ct_imagenet64"`` (201), ``"ct_lsun256"`` (151).
    """
    check_choice("scheduler", scheduler, sorted(SCHEDULER_TIMESTEPS))
    path = Path(checkpoint_path)
    loaded = load_state_dict(path) if path.suffix == ".safetensors" else load_torch_file(path)
    config, converted = convert_openai_state_dict(_unwrapped(loaded, state_dict_key, str(path)), **options)
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
