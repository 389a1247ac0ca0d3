"""Attention and group normalisation that also run under forward-mode AD (``torch.func.jvp``), for every cmkit network.

PyTorch's fused ``scaled_dot_product_attention`` kernels (flash, memory-efficient, and the CPU flash kernel) have
no forward-mode derivative: ``torch.func.jvp`` through them raises ``NotImplementedError``. Continuous-time
consistency training (sCM; Lu & Song 2024, sec. 4) differentiates the network forward in time with a JVP, so
:func:`attention` computes ``softmax(q k^T / sqrt(d)) v`` with plain matrix products exactly when a tangent is
traced, and calls the fused kernel otherwise (no cost for ordinary training or sampling).

Why detect rather than a context manager set by the objectives: the tangent is a property of the tensors, so
detection is right for any caller (a user's own ``torch.func.jvp``, ``torch.autograd.forward_ad``) and cannot be
forgotten; :func:`has_tangent` asks the forward-AD dual level of each tensor, which is cheap and sees both
``torch.func.jvp`` and ``forward_ad.make_dual`` duals. Under bf16 autocast the softmax runs in float32 (as the
fused kernels do), so neither the weights nor their tangents over- or underflow.

:func:`group_norm`: PyTorch's forward derivative of ``group_norm`` views its input and fails on the channels-last
feature maps the UNets keep (torch 2.13), so a traced input is made contiguous first; untraced ones keep their
layout.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor


def has_tangent(*tensors: Tensor) -> bool:
    """Whether any of ``tensors`` carries a forward-mode tangent (inside ``torch.func.jvp`` or a ``forward_ad`` dual)."""
    return any(fwAD.unpack_dual(t).tangent is not None for t in tensors)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over the last two dims of ``[..., L, d]`` tensors (Vaswani et al. 2017).

    The fused kernel without a tangent; with one, the same function written out so forward-mode AD can trace it.
    """
    if not has_tangent(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32)
    return torch.matmul(weights.to(v.dtype), v)


def group_norm(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
    """``F.group_norm``, with a traced (tangent-carrying) input made contiguous first (see the module docstring)."""
    return F.group_norm(x.contiguous() if has_tangent(x) else x, num_groups, weight, bias, eps)
