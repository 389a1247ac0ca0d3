"""A network's conditioning inputs, checked and put in one form: the timestep batch and the class-label matrix.

Every cmkit network is called as ``net(sample, timestep, class_labels=None, ...)``. ``timestep`` may be a Python
number, a 0-d tensor or a 1-d tensor of length 1 or ``B`` (diffusers' convention); :func:`batch_timesteps` makes
it a ``[B]`` tensor on the sample's device. The EDM networks (Karras et al. 2022, 2024) condition on a class
*vector* (one-hot, or any mixture for guidance); :func:`class_label_matrix` accepts cmkit's ``[B]`` integer ids
or such a ``[B, label_dim]`` float matrix and returns the matrix.
"""

from __future__ import annotations

import numbers
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

TimestepLike = Union[Tensor, float, int]


def batch_timesteps(timestep: TimestepLike, batch: int, device: torch.device) -> Tensor:
    """A 1-d tensor of ``batch`` timesteps from a number, a 0-d tensor, or a 1-d tensor of length 1 or ``batch``.

    A Python int gives an int64 tensor and a float a float32 one (its fraction is kept); tensors keep their dtype,
    except float64 on MPS (which has none), which becomes float32.
    """
    if torch.is_tensor(timestep):
        if timestep.dtype == torch.float64 and device.type == "mps":
            timestep = timestep.float()
        t = timestep.to(device)
        if t.ndim == 0:
            t = t[None]
        elif t.ndim != 1 or t.shape[0] not in (1, batch):
            raise ValueError(
                f"timestep has shape {tuple(t.shape)}; pass a number, a 0-d tensor or a 1-d tensor of length "
                f"1 or the batch size {batch}"
            )
    elif isinstance(timestep, numbers.Real) and not isinstance(timestep, bool):
        dtype = torch.long if isinstance(timestep, numbers.Integral) else torch.float32
        t = torch.tensor([timestep], dtype=dtype, device=device)
    else:
        raise TypeError(f"timestep must be a number or a tensor, got {type(timestep).__name__}")
    return t.expand(batch)


def class_label_matrix(
    class_labels: Tensor, label_dim: int, batch: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``[batch, label_dim]`` class vectors in ``dtype``: one-hot rows for integer ids ``[B]``, or a float
    ``[B, label_dim]`` matrix as given (one-hot, soft or all-zero rows, as the EDM reference code takes them).

    Ids outside ``[0, label_dim)`` and matrices of another width raise a ``ValueError`` naming the fix.
    """
    labels = torch.as_tensor(class_labels, device=device)
    if labels.ndim == 1 and not labels.is_floating_point():
        if labels.shape[0] != batch:
            raise ValueError(f"class_labels has {labels.shape[0]} ids for a batch of {batch}; pass one id per sample")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= label_dim):
            raise ValueError(
                f"class ids must lie in [0, {label_dim}) for this network (label_dim={label_dim}), got ids from "
                f"{int(labels.min())} to {int(labels.max())}"
            )
        return F.one_hot(labels.long(), label_dim).to(dtype)
    if labels.ndim == 2 and labels.is_floating_point() and labels.shape[1] == label_dim:
        if labels.shape[0] not in (1, batch):
            raise ValueError(
                f"class_labels has {labels.shape[0]} rows for a batch of {batch}; pass one row per sample (or one row)"
            )
        return labels.to(dtype).expand(batch, label_dim)
    raise ValueError(
        f"class_labels must be integer ids of shape [B] or a float matrix of shape [B, {label_dim}] (one-hot or "
        f"soft labels), got a {labels.dtype} tensor of shape {tuple(labels.shape)}"
    )
