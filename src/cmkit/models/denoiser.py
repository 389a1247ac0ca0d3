"""Preconditioning: wrap a raw network ``F`` into a consistency function or an EDM denoiser.

``D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), class_labels)``
(EDM eq. 7; CM appendix C). The network sees exactly what the diffusers pipeline feeds the UNet
(``scale_model_input`` = ``c_in x`` and ``timestep`` = ``c_noise``), so a trained consistency model is
sampled by the ordinary :class:`~cmkit.ConsistencyModelPipeline` with ``CMStochasticIterativeScheduler``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..karras import SIGMA_DATA, SIGMA_MIN, Parameterization, append_dims, c_in, output_scalings, sigma_to_timestep


def call_network(net: nn.Module, x: Tensor, timestep: Tensor, class_labels: Optional[Tensor]) -> Tensor:
    """Call a UNet2DModel-like network (``net(sample, timestep, class_labels=..., return_dict=False)``)."""
    out = net(x, timestep, class_labels=class_labels, return_dict=False)
    return out[0] if isinstance(out, (tuple, list)) else out


class Denoiser(nn.Module):
    """A network ``F`` preconditioned as a consistency function ``f`` or an EDM denoiser ``D``."""

    def __init__(
        self,
        net: nn.Module,
        parameterization: Parameterization = "consistency",
        sigma_min: float = SIGMA_MIN,
        sigma_data: float = SIGMA_DATA,
    ) -> None:
        super().__init__()
        if parameterization not in ("consistency", "edm"):
            raise ValueError(f"parameterization must be 'consistency' or 'edm', got {parameterization!r}")
        self.net = net
        self.parameterization: Parameterization = parameterization
        self.sigma_min = float(sigma_min)
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Optional[Tensor] = None) -> Tensor:
        """``f(x, sigma)`` for per-sample ``sigma`` of shape ``[B]`` (a scalar is broadcast)."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out = output_scalings(sigma, self.parameterization, self.sigma_min, self.sigma_data)
        x_in = x * append_dims(c_in(sigma, self.sigma_data), x.ndim).to(x.dtype)
        f = call_network(self.net, x_in, sigma_to_timestep(sigma), class_labels)
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * f.to(x.dtype)
