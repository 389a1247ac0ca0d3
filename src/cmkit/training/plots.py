"""Pictures of a training run: sample grids (images), scatter plots (2-D points) and the loss curve.

matplotlib is imported lazily (it is in the ``train`` extra); image grids only need Pillow.
"""

from __future__ import annotations

import math
import os
from collections import deque
from pathlib import Path
from typing import Any, Optional, Sequence

from torch import Tensor

from ..io.atomic import atomic_path
from ..postprocess import image_grid, numpy_to_pil, to_numpy


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'cmkit[train]'") from err
    return plt


def save_image_grid(samples: Tensor, path: str | os.PathLike, cols: Optional[int] = None, scale: int = 1) -> Path:
    """Save a batch of [-1, 1] images ``[N, C, H, W]`` as one PNG grid (optionally upscaled ``scale`` times)."""
    if samples.ndim != 4:
        raise ValueError(f"an image grid needs samples of shape [N, C, H, W], got {tuple(samples.shape)}")
    images = numpy_to_pil(to_numpy((samples.float() / 2 + 0.5).clamp(0, 1)))
    if scale > 1:
        from PIL import Image

        images = [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in images]
    grid = image_grid(images, cols or math.ceil(math.sqrt(len(images))))
    p = Path(path)
    with atomic_path(p) as tmp:
        grid.save(tmp, format="PNG")
    return p


def save_scatter(
    samples: Tensor, path: str | os.PathLike, reference: Optional[Tensor] = None, title: str = ""
) -> Path:
    """Save 2-D points ``[N, 2]`` as a scatter plot PNG, over faint ``reference`` points when given."""
    if samples.ndim != 2 or samples.shape[1] != 2:
        raise ValueError(f"a scatter plot needs points of shape [N, 2], got {tuple(samples.shape)}")
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        r = reference.detach().float().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.8", label="data")
    s = samples.detach().float().cpu().numpy()
    ax.scatter(s[:, 0], s[:, 1], s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_xlim(-2, 2)
    ax.set_ylim(-2, 2)
    return _save_figure(fig, ax, title, path)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Running mean over the last ``window`` values (the loss curve's smoothed line)."""
    out: list[float] = []
    acc, buf = 0.0, deque()
    for v in values:
        buf.append(v)
        acc += v
        if len(buf) > window:
            acc -= buf.popleft()
        out.append(acc / len(buf))
    return out


def save_loss_curve(losses: Sequence[float], path: str | os.PathLike, title: str = "", start_step: int = 0) -> Path:
    """Save the per-step loss (log scale when positive) with a smoothed line as a PNG."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = list(range(start_step + 1, start_step + len(losses) + 1))
    ax.plot(steps, losses, lw=0.5, alpha=0.4, c="tab:blue", label="loss")
    if len(losses) > 1:
        ax.plot(steps, smooth(losses, max(1, len(losses) // 50)), lw=1.5, c="tab:blue", label="smoothed")
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    return _save_figure(fig, ax, title, path)


def _save_figure(fig: Any, ax: Any, title: str, path: str | os.PathLike) -> Path:
    """Title ``ax`` (when ``title``), write ``fig`` to ``path`` as a PNG atomically and close it."""
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    p = Path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, format="png")
    _matplotlib().close(fig)
    return p
