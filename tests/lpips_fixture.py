"""Deterministic LPIPS-VGG weights and images for the LPIPS tests and for tests/fixtures/lpips/make_fixture.py.

Values come from an integer hash of the element index (exact integer arithmetic), not from a random number
generator, so the same weights can be rebuilt on any machine and torch version without storing 59 MB of them.
The layer list is written out here from torchvision's ``vgg16().features`` indices, independently of
``cmkit.training.lpips``, so the tests also check cmkit's layout.
"""

import math

import torch

#: (lpips slice, torchvision features index, in channels, out channels) of VGG-16's convolutions.
VGG16_CONV_LAYERS = (
    (1, 0, 3, 64), (1, 2, 64, 64),
    (2, 5, 64, 128), (2, 7, 128, 128),
    (3, 10, 128, 256), (3, 12, 256, 256), (3, 14, 256, 256),
    (4, 17, 256, 512), (4, 19, 512, 512), (4, 21, 512, 512),
    (5, 24, 512, 512), (5, 26, 512, 512), (5, 28, 512, 512),
)
#: channels of the five compared layers (relu1_2 ... relu5_3)
TAP_CHANNELS = (64, 128, 256, 512, 512)

_MASK32 = 0xFFFFFFFF


def hash_uniform(n: int, seed: int) -> torch.Tensor:
    """``n`` float64 numbers in [0, 1): a 32-bit integer hash (xor-shift-multiply) of ``index + seed * 2654435761``."""
    x = (torch.arange(n, dtype=torch.int64) + seed * 2654435761) & _MASK32
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (x >> 16) ^ x
    return x.double() / 2.0**32


def hash_tensor(shape: tuple[int, ...], seed: int, low: float, high: float) -> torch.Tensor:
    """A float32 tensor of ``shape`` with hashed values spread uniformly over ``[low, high)``."""
    u = hash_uniform(math.prod(shape), seed)
    return (low + (high - low) * u).float().reshape(shape)


def lpips_vgg_state_dict(seed: int = 0, duplicate_lins: bool = True) -> dict[str, torch.Tensor]:
    """A state dict in the key format of ``lpips.LPIPS(net='vgg').state_dict()`` with hashed weights.

    Convolutions: uniform with He variance ``2 / fan_in``; biases in [-0.05, 0.05); heads in [0, 1) (non-negative,
    as trained LPIPS heads are). ``duplicate_lins`` adds the ``lins.K`` copies that lpips' state dict also holds.
    """
    state = {
        "scaling_layer.shift": torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1),
        "scaling_layer.scale": torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1),
    }
    for n, (piece, index, c_in, c_out) in enumerate(VGG16_CONV_LAYERS):
        bound = math.sqrt(3.0) * math.sqrt(2.0 / (c_in * 9))
        state[f"net.slice{piece}.{index}.weight"] = hash_tensor((c_out, c_in, 3, 3), 1000 * seed + 2 * n, -bound, bound)
        state[f"net.slice{piece}.{index}.bias"] = hash_tensor((c_out,), 1000 * seed + 2 * n + 1, -0.05, 0.05)
    for k, c in enumerate(TAP_CHANNELS):
        state[f"lin{k}.model.1.weight"] = hash_tensor((1, c, 1, 1), 1000 * seed + 100 + k, 0.0, 1.0)
    if duplicate_lins:
        for k in range(len(TAP_CHANNELS)):
            state[f"lins.{k}.model.1.weight"] = state[f"lin{k}.model.1.weight"].clone()
    return state


def hashed_images(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Images in [-1, 1) with hashed pixels."""
    return hash_tensor(shape, seed, -1.0, 1.0)
