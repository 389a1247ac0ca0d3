"""A small CNN classifier for 8x8 digits, whose penultimate features define FD-digits.

Inputs are images in [-1, 1] of shape ``[N, 1, H, W]`` with ``H = W`` a multiple of 8; larger images are
area-downsampled to 8x8 first (the mean over each ``H/8 x W/8`` block), so models trained at 16x16 or 32x32
upsamplings of the digits are measured the same way. The shipped weights
(``cmkit/assets/digits_classifier.safetensors``) were trained on the fixed train split only, by
``scripts/train_digits_classifier.py``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigMixin, register_to_config
from ..io.weights import load_state_dict, save_state_dict

WEIGHTS_NAME = "digits_classifier.safetensors"
CONFIG_NAME = "digits_classifier.json"
#: non-negative inputs above this are taken to be on a [0, 255] (or [0, 16]) scale rather than [-1, 1].
_NONNEGATIVE_MAX = 1.5


def to_classifier_input(images: Tensor) -> Tensor:
    """Check ``[N, 1, H, W]`` images in [-1, 1], area-downsample them to 8x8 and clamp to [-1, 1] (float32)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"digit images must have shape [N, 1, H, W], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h != w or h % 8:
        raise ValueError(f"digit images must be square with a side that is a multiple of 8, got {h}x{w}")
    x = images.detach().to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("digit images contain NaN or infinite values")
    if x.numel() and x.min() >= 0 and x.max() > _NONNEGATIVE_MAX:
        raise ValueError(
            f"digit images must lie in [-1, 1], got values in [{x.min():.3g}, {x.max():.3g}] (a [0, 255] scale?); "
            "convert [0, 1] images with x * 2 - 1 (the pipeline's output_type='pt' gives [0, 1])"
        )
    if h != 8:
        x = F.avg_pool2d(x, kernel_size=h // 8)
    return x.clamp(-1.0, 1.0)


class DigitsClassifier(ConfigMixin, nn.Module):
    """Two conv stages (8x8 -> 4x4 -> 2x2), a hidden layer of ``feature_dim`` units (the features), logits."""

    config_name = CONFIG_NAME

    @register_to_config
    def __init__(self, channels: tuple[int, int] = (32, 64), feature_dim: int = 128, num_classes: int = 10,
                 dropout: float = 0.3) -> None:
        super().__init__()
        c1, c2 = channels
        self.stage1 = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.stage2 = nn.Sequential(
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.hidden = nn.Linear(c2 * 4, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``[N, feature_dim]`` (after the hidden layer's ReLU) of 8x8 inputs."""
        h = self.stage2(self.stage1(x))
        return F.relu(self.hidden(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[N, num_classes]`` of 8x8 inputs."""
        return self.head(self.dropout(self.features(x)))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the weights (safetensors) and config JSON into ``directory``."""
        directory = Path(directory)
        self.save_config(directory)
        return save_state_dict(self.state_dict(), directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "DigitsClassifier":
        """Load a classifier saved by :meth:`save_pretrained`, in eval mode."""
        directory = Path(directory)
        model = cls.from_config(cls.load_config(directory))
        model.load_state_dict(load_state_dict(directory / WEIGHTS_NAME))
        return model.eval()


@lru_cache(maxsize=1)
def load_digits_classifier() -> DigitsClassifier:
    """The shipped classifier (cached, eval mode, gradients off)."""
    with resources.as_file(resources.files("cmkit.assets").joinpath(WEIGHTS_NAME)) as weights:
        if not weights.is_file():
            raise FileNotFoundError(
                f"the digits classifier weights are missing ({weights}); run scripts/train_digits_classifier.py"
            )
        model = DigitsClassifier.from_pretrained(weights.parent)
    model.requires_grad_(False)
    return model
