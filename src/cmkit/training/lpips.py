"""LPIPS with a VGG-16 trunk (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"), cmkit's own: no torchvision and no ``lpips`` package are needed.

For images ``x, y`` in [-1, 1] (Zhang et al. 2018, eq. 1)::

    d(x, y) = sum_l 1/(H_l W_l) sum_{h,w} sum_c w_{l,c} (yhat^l_{hwc}(x) - yhat^l_{hwc}(y))^2

* the input is first mapped to the statistics VGG was trained on: ``(x - shift) / scale`` per channel, with
  ``shift = 2 mean - 1`` and ``scale = 2 std`` of ImageNet (``mean = (0.485, 0.456, 0.406)``,
  ``std = (0.229, 0.224, 0.225)``), i.e. :data:`LPIPS_SHIFT` and :data:`LPIPS_SCALE` (lpips v0.1);
* ``F^l`` are the activations of VGG-16 (Simonyan & Zisserman 2015, configuration D) after the last ReLU of each of
  its five stages: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (:data:`TAP_NAMES`);
* ``yhat^l = F^l / (||F^l||_2 + eps)`` is unit-normalised over channels at each position (``eps = 1e-10``);
* ``w_l >= 0`` are the learned per-channel weights (a bias-free 1x1 convolution). The paper writes the term as
  ``||w_l * (yhat - yhat')||^2``; the released weights multiply the *squared* differences, so a released weight is
  the paper's ``w^2``. cmkit follows the released weights;
* the spatial mean over ``(h, w)`` and the sum over the five layers give one number per sample.

Weights load from local files only (nothing is downloaded), read safely (:func:`cmkit.io.weights.load_state_dict`),
in either of two formats:

1. the state dict of ``lpips.LPIPS(net='vgg')`` (keys ``scaling_layer.shift``, ``net.slice1.0.weight`` ...
   ``net.slice5.28.bias``, ``lin0.model.1.weight`` ... ``lin4.model.1.weight``, and ``lins.K...`` copies);
2. a torchvision ``vgg16`` state dict (``features.N.weight``; its ``classifier.*`` layers are ignored) together
   with lpips' linear-head file (``lpips/weights/v0.1/vgg.pth``: ``lin0.model.1.weight`` ...), as two files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from ..io.weights import load_state_dict

PathLike = Union[str, os.PathLike]

#: VGG-16 configuration D: output channels of the 3x3 convolutions (padding 1, each followed by a ReLU), stage by
#: stage; a 2x2 max-pool with stride 2 comes before every stage but the first.
VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
#: the layers LPIPS compares: the last ReLU of each stage.
TAP_NAMES: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
#: lpips v0.1's input scaling ``(x - shift) / scale`` for x in [-1, 1]: ImageNet's ``2 mean - 1`` and ``2 std``.
LPIPS_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
LPIPS_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
#: added to the channel norm before dividing (Zhang et al.'s release).
NORM_EPS = 1e-10
#: the smallest input side: four 2x2 pools come before relu5_3, which must keep at least one position.
MIN_INPUT_SIZE = 16

_LPIPS_FILE_HINT = (
    "expected the state dict of lpips.LPIPS(net='vgg') (keys net.slice1.0.weight ... lin0.model.1.weight), or a "
    "torchvision vgg16 state dict (features.N.weight) plus lpips' linear-head file weights/v0.1/vgg.pth "
    "(lin0.model.1.weight ...) given as two files"
)


def _vgg16_convs() -> tuple[tuple[int, int, int, int], ...]:
    """``(stage, features_index, in_channels, out_channels)`` of the 13 convolutions, in order. ``features_index`` is
    the position in torchvision's ``vgg16().features`` (conv and ReLU take one slot each, a pool one slot)."""
    convs = []
    index, channels = 0, 3
    for stage, widths in enumerate(VGG16_STAGES, start=1):
        if stage > 1:
            index += 1  # the max-pool before this stage
        for width in widths:
            convs.append((stage, index, channels, width))
            index += 2  # the convolution and its ReLU
            channels = width
    return tuple(convs)


#: ``(stage, features_index, in_channels, out_channels)`` of each VGG-16 convolution.
VGG16_CONVS: tuple[tuple[int, int, int, int], ...] = _vgg16_convs()
_CONV_BY_FEATURES_INDEX = {index: n for n, (_, index, _, _) in enumerate(VGG16_CONVS)}


def unit_normalize(features: Tensor) -> Tensor:
    """``F / (||F||_2 + eps)`` over the channel dimension (dim 1) at each position.

    The norm is :func:`torch.linalg.vector_norm`, whose gradient at a zero vector is zero, so a position where every
    channel is zero (all ReLUs off) gives a finite gradient; ``sqrt(sum F^2)`` would give NaN there.
    """
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + NORM_EPS)


class LPIPSVGG16(nn.Module):
    """The LPIPS-VGG distance ``d(x, y)`` of inputs in [-1, 1], ``[B, 3, H, W]`` with ``H, W >= 16``, to ``[B]``.

    Built with zero weights; :func:`load_lpips_vgg16` (or :meth:`load_lpips_state_dict`) loads real ones. The
    module is frozen (no parameter needs a gradient); the gradient flows to the inputs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        # skip_init: no random initialisation of 14.7M weights that are always replaced by loaded ones
        self.convs = nn.ModuleList(skip_init(nn.Conv2d, c_in, c_out, 3, padding=1) for _, _, c_in, c_out in VGG16_CONVS)
        self.heads = nn.ParameterList(nn.Parameter(torch.zeros(widths[-1])) for widths in VGG16_STAGES)
        for conv in self.convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: Tensor) -> list[Tensor]:
        """The activations ``F^l`` at relu1_2 ... relu5_3 of the scaled input."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS-VGG needs images [B, 3, H, W], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"LPIPS-VGG needs images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (four 2x2 pools come before "
                f"relu5_3), got {tuple(x.shape[-2:])}; upsample them first (lpips_resize)"
            )
        h = (x.to(self.shift.dtype) - self.shift) / self.scale
        taps = []
        for n, (stage, _, _, _) in enumerate(VGG16_CONVS):
            if n > 0 and stage != VGG16_CONVS[n - 1][0]:
                taps.append(h)  # the last ReLU of the previous stage
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            h = F.relu(self.convs[n](h))
        taps.append(h)
        return taps

    def layer_distances(self, x: Tensor, y: Tensor) -> Tensor:
        """The five per-layer terms ``1/(H_l W_l) sum_{h,w} sum_c w_{l,c} (yhat^l(x) - yhat^l(y))^2``, ``[5, B]``."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
        terms = []
        for f_x, f_y, w in zip(self.features(x), self.features(y), self.heads):
            sq = (unit_normalize(f_x.float()) - unit_normalize(f_y.float())).pow(2)
            terms.append(torch.einsum("bchw,c->bhw", sq, w.float()).mean(dim=(1, 2)))
        return torch.stack(terms)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``d(x, y)`` per sample, ``[B]`` (Zhang et al. 2018, eq. 1)."""
        return self.layer_distances(x, y).sum(dim=0)

    def load_lpips_state_dict(self, state: Mapping[str, Tensor], source: str = "the state dict") -> None:
        """Load weights in lpips' or torchvision's key format (see the module docstring); ``source`` names the file(s)
        in errors. Missing or unknown keys, wrong shapes and negative head weights are errors that name them."""
        own = self.state_dict()
        converted: dict[str, Tensor] = {}
        origin: dict[str, str] = {}
        unexpected = []
        for key, value in state.items():
            target = _own_key(key)
            if target is None:
                if not key.startswith("classifier."):  # torchvision's fully connected layers: not used by LPIPS
                    unexpected.append(key)
                continue
            if target.startswith("heads."):
                value = value.reshape(-1) if value.ndim == 4 and value.shape[0] == 1 else value
            if target in converted and not torch.equal(converted[target], value):
                raise ValueError(f"{source}: {origin[target]} and {key} both give {_lpips_key(target)} but differ")
            converted[target] = value
            origin.setdefault(target, key)
        for name in ("shift", "scale"):  # absent from torchvision files: lpips v0.1's constants
            converted.setdefault(name, own[name])
        missing = [_lpips_key(k) for k in own if k not in converted]
        if missing or unexpected:
            convs_only = missing and all(k.startswith("lin") for k in missing)
            hint = (
                "the linear heads are missing: pass lpips' head file (lpips/weights/v0.1/vgg.pth) as a second file"
                if convs_only and not unexpected
                else _LPIPS_FILE_HINT
            )
            raise ValueError(
                f"{source} is not an LPIPS-VGG state dict: missing {len(missing)} keys {missing[:4]}, unexpected "
                f"{len(unexpected)} keys {unexpected[:4]}; {hint}"
            )
        for key, value in converted.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(
                    f"{source}: {origin.get(key, key)} has shape {tuple(value.shape)}, LPIPS-VGG needs "
                    f"{tuple(own[key].shape)} ({_LPIPS_FILE_HINT})"
                )
        for key in (f"heads.{k}" for k in range(len(VGG16_STAGES))):
            if not torch.isfinite(converted[key]).all() or (converted[key] < 0).any():
                raise ValueError(
                    f"{source}: the linear head {origin[key]} has negative or non-finite weights (min "
                    f"{converted[key].min().item():.3g}); LPIPS heads are non-negative (Zhang et al. 2018, sec. 3): "
                    "save the trained heads, e.g. lpips.LPIPS(net='vgg', pretrained=True).state_dict()"
                )
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True)


_LPIPS_CONV = re.compile(r"net\.slice([1-5])\.(\d+)\.(weight|bias)")
_TORCHVISION_CONV = re.compile(r"features\.(\d+)\.(weight|bias)")
_LPIPS_HEAD = re.compile(r"lin([0-4])\.model\.1\.weight|lins\.([0-4])\.model\.1\.weight")
_OWN = re.compile(r"convs\.(\d+)\.(weight|bias)|heads\.[0-4]|shift|scale")
_SCALING = {"scaling_layer.shift": "shift", "scaling_layer.scale": "scale"}


def _own_key(key: str) -> str | None:
    """This module's name for ``key`` of an lpips, torchvision or cmkit LPIPS-VGG state dict; None if it has none."""
    if key in _SCALING:
        return _SCALING[key]
    if m := _LPIPS_CONV.fullmatch(key):
        n = _CONV_BY_FEATURES_INDEX.get(int(m[2]))
        return f"convs.{n}.{m[3]}" if n is not None and VGG16_CONVS[n][0] == int(m[1]) else None
    if m := _TORCHVISION_CONV.fullmatch(key):
        n = _CONV_BY_FEATURES_INDEX.get(int(m[1]))
        return f"convs.{n}.{m[2]}" if n is not None else None
    if m := _LPIPS_HEAD.fullmatch(key):
        return f"heads.{m[1] or m[2]}"
    if m := _OWN.fullmatch(key):
        return key if not m[1] or int(m[1]) < len(VGG16_CONVS) else None
    return None


def _lpips_key(own_key: str) -> str:
    """The lpips-format name of this module's key ``own_key`` (what errors show)."""
    if own_key in ("shift", "scale"):
        return f"scaling_layer.{own_key}"
    kind, n, *rest = own_key.split(".")
    if kind == "heads":
        return f"lin{n}.model.1.weight"
    stage, index, _, _ = VGG16_CONVS[int(n)]
    return f"net.slice{stage}.{index}.{rest[0]}"


def load_lpips_vgg16(paths: PathLike | Sequence[PathLike], device: str | torch.device = "cpu") -> LPIPSVGG16:
    """:class:`LPIPSVGG16` with the weights in ``paths``: one lpips state-dict file, or several files whose keys
    together make one (a torchvision ``vgg16`` file and lpips' head file ``vgg.pth``). Files are read safely."""
    files = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not files:
        raise ValueError(f"LPIPS needs at least one weights file; {_LPIPS_FILE_HINT}")
    merged: dict[str, Tensor] = {}
    for path in files:
        for key, value in load_state_dict(path).items():
            if key in merged and not torch.equal(merged[key], value):
                raise ValueError(
                    f"key {key} appears in more than one of the LPIPS files {[str(f) for f in files]} with different "
                    "values; pass one lpips state dict, or a torchvision vgg16 file and lpips' head file"
                )
            merged[key] = value
    module = LPIPSVGG16()
    module.load_lpips_state_dict(merged, source=" + ".join(str(f) for f in files))
    return module.to(device)
