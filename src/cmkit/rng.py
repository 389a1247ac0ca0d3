"""Gaussian noise drawn exactly as diffusers draws it, so one seed gives the same samples in both libraries."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from ._validate import is_int

GeneratorArg = Union[torch.Generator, Sequence[torch.Generator], None]


def check_generator(generator: object) -> None:
    """Raise a TypeError unless ``generator`` is None, a ``torch.Generator`` or a list / tuple of them."""
    items = generator if isinstance(generator, (list, tuple)) else [generator]
    bad = [g for g in items if g is not None and not isinstance(g, torch.Generator)]
    if bad or (isinstance(generator, (list, tuple)) and not generator):
        shown = type(bad[0]).__name__ if bad else "an empty list"
        seed = int(bad[0]) if bad and is_int(bad[0]) else 0
        raise TypeError(
            f"generator must be a torch.Generator, a list of them (one per sample) or None, got {shown}; for a seed "
            f"pass generator=torch.Generator().manual_seed({seed})"
        )


def randn(
    shape: Sequence[int],
    generator: GeneratorArg = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal noise of ``shape``; with a list of generators, sample ``i`` comes from ``generator[i]``.

    Draws happen on the generator's device (a CPU generator gives CPU noise, then moved to ``device``) and in
    ``dtype``, the same sequence of draws as ``diffusers.utils.torch_utils.randn_tensor``.
    """
    check_generator(generator)
    shape = tuple(int(s) for s in shape)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(generator, (list, tuple)):
        if len(generator) == 1:
            generator = generator[0]
        elif len(generator) != shape[0]:
            raise ValueError(
                f"got a list of {len(generator)} generators for a batch of {shape[0]}; pass one generator "
                "or exactly one per sample"
            )
    rand_device = device
    if generator is not None:
        gen_device = (generator[0] if isinstance(generator, (list, tuple)) else generator).device
        if gen_device.type != device.type:
            if gen_device.type != "cpu":
                raise ValueError(f"cannot draw a {device} tensor from a generator on {gen_device}")
            rand_device = torch.device("cpu")
    if isinstance(generator, (list, tuple)):
        parts = [torch.randn((1, *shape[1:]), generator=g, device=rand_device, dtype=dtype) for g in generator]
        return torch.cat(parts, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def randint(
    high: int, size: int, generator: GeneratorArg = None, device: torch.device | str | None = None
) -> Tensor:
    """Integers in ``[0, high)`` from ``generator`` rather than the global RNG; with a list, entry ``i`` from ``generator[i]``."""
    check_generator(generator)
    if isinstance(generator, (list, tuple)):
        if len(generator) == size and size > 1:
            parts = [randint(high, 1, g, device) for g in generator]
            return torch.cat(parts)
        if len(generator) != 1:
            raise ValueError(
                f"got a list of {len(generator)} generators for {size} integers; pass one generator or one per integer"
            )
        generator = generator[0]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, high, (size,), generator=generator, device=gen_device).to(device or gen_device)
