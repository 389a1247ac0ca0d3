"""Sampled tensors to outputs: the documented image formula and grids."""

import numpy as np
import pytest
import torch
from cmkit.postprocess import image_grid, numpy_to_pil, postprocess


def test_postprocess_images_match_documented_formula():
    x = torch.linspace(-1.5, 1.5, 2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    pt = postprocess(x, "pt")
    torch.testing.assert_close(pt, ((x + 1) / 2).clamp(0, 1))
    arr = postprocess(x, "np")
    assert arr.shape == (2, 2, 2, 3)
    pil = postprocess(x, "pil")
    np.testing.assert_array_equal(np.asarray(pil[1]), np.round(arr[1] * 255).astype(np.uint8))


def test_image_grid_layout():
    ims = numpy_to_pil(np.stack([np.full((2, 3, 3), v, dtype=np.float32) for v in (0.0, 0.5, 1.0)]))
    grid = image_grid(ims, cols=2)
    assert grid.size == (6, 4)
    px = np.asarray(grid)
    assert px[0, 0, 0] == 0 and px[0, 3, 0] == 128 and px[2, 0, 0] == 255 and px[2, 3, 0] == 0
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([])
