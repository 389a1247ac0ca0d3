import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from cmkit.rng import randint, randn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_same_draws_as_diffusers_single_generator(dtype):
    ours = randn((3, 2, 4, 4), torch.Generator().manual_seed(7), dtype=dtype)
    theirs = randn_tensor((3, 2, 4, 4), generator=torch.Generator().manual_seed(7), dtype=dtype)
    assert torch.equal(ours, theirs)


def test_same_draws_as_diffusers_generator_list():
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    assert torch.equal(randn((3, 5), gens()), randn_tensor((3, 5), generator=gens()))
    one = lambda: [torch.Generator().manual_seed(4)]  # noqa: E731
    assert torch.equal(randn((2, 5), one()), randn_tensor((2, 5), generator=one()))


def test_generator_list_length_mismatch():
    with pytest.raises(ValueError, match="one per sample"):
        randn((3, 5), [torch.Generator(), torch.Generator()])


def test_randint_uses_generator_not_global_rng():
    a = randint(1000, 8, torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    b = randint(1000, 8, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.max() < 1000


def test_a_seed_passed_as_generator_is_named_in_the_fix():
    import re

    import numpy as np

    from cmkit.rng import check_generator

    for seed, shown in ((5, 5), (np.int64(9), 9), (True, 0)):  # a bool is no seed: the hint shows 0
        fix = re.escape(f"for a seed pass generator=torch.Generator().manual_seed({shown})")
        with pytest.raises(TypeError, match=fix):
            check_generator(seed)
