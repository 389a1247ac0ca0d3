"""Editing inputs: PIL images, numpy arrays, tensors and files become [-1, 1] tensors; masks become 0/1."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cmkit.editing.inputs import MASK_THRESHOLD, load_image, load_mask, load_unit


def test_all_input_kinds_agree(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    pil = Image.fromarray(pixels)
    path = tmp_path / "x.png"
    pil.save(path)
    expected = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    for value in (pil, str(path), path, pixels, pixels.astype(np.float32) / 255,
                  torch.from_numpy(pixels).permute(2, 0, 1), torch.from_numpy(pixels).permute(2, 0, 1).float() / 255):
        x = load_image(value, channels=3, size=(6, 5))
        assert x.shape == (1, 3, 6, 5) and x.dtype == torch.float32
        assert torch.allclose(x, expected, atol=1e-6), type(value)
    batch = load_image([pil, pil], channels=3)
    assert batch.shape == (2, 3, 6, 5)


def test_channel_conversions():
    gray = Image.fromarray(np.full((4, 4), 255, dtype=np.uint8), mode="L")
    rgb = load_image(gray, channels=3)
    assert rgb.shape == (1, 3, 4, 4) and torch.equal(rgb, torch.ones(1, 3, 4, 4))  # grey is replicated
    color = np.zeros((4, 4, 3), dtype=np.uint8)
    color[..., 0] = 255
    with pytest.raises(ValueError, match="convert the image to grayscale"):
        load_image(color, channels=1)
    luma = load_image(color, channels=1, rgb_to_gray=True)
    assert luma.shape == (1, 1, 4, 4) and luma[0, 0, 0, 0].item() == pytest.approx(0.2989 * 2 - 1, abs=1e-5)
    with pytest.raises(ValueError, match="RGBA"):
        load_image(np.zeros((4, 4, 4), dtype=np.uint8), channels=3)
    assert load_image(Image.new("RGBA", (4, 4)), channels=3).shape == (1, 3, 4, 4)  # PIL alpha is composited


def test_bad_values_and_sizes():
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        load_image(torch.full((1, 4, 4), -0.5), channels=1)
    with pytest.raises(ValueError, match="must be 8x8"):
        load_image(torch.zeros(1, 4, 4), channels=1, size=(8, 8))
    with pytest.raises(FileNotFoundError):
        load_image("/nonexistent/image.png", channels=1)
    with pytest.raises(TypeError, match="file path, PIL image"):
        load_image(3.0, channels=1)
    with pytest.raises(ValueError, match="NaN"):
        load_unit(torch.full((2, 2), float("nan")))


def test_masks_threshold_and_size():
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    m = load_mask(Image.fromarray(values, mode="L"), size=(1, 4))
    assert m.tolist() == [[[[0.0, 0.0, 1.0, 1.0]]]]
    assert MASK_THRESHOLD == 0.5
    assert load_mask(np.array([[True, False]]), size=(1, 2)).tolist() == [[[[1.0, 0.0]]]]
    assert load_mask(torch.tensor([[0.49, 0.5]]), size=(1, 2)).tolist() == [[[[0.0, 1.0]]]]
    with pytest.raises(ValueError, match="image is 8x8; they must be the same size"):
        load_mask(np.zeros((4, 4), dtype=np.uint8), size=(8, 8))


@pytest.mark.parametrize(
    "pixels, match",
    [
        (np.zeros((4, 4), dtype=np.uint8), "selects no pixel to regenerate.*white .* marks the region to regenerate"),
        (np.full((4, 4), 127, dtype=np.uint8), "selects no pixel to regenerate"),  # all mid-grey, below 0.5
        (np.full((4, 4), 255, dtype=np.uint8), "selects every pixel.*black marks the pixels to keep"),
    ],
)
def test_masks_that_select_nothing_or_everything_warn(pixels, match):
    with pytest.warns(UserWarning, match=match):
        load_mask(Image.fromarray(pixels, mode="L"), size=(4, 4))
    batch = np.stack([pixels, np.eye(4, dtype=np.uint8) * 255])[..., None]  # [B, H, W, 1]: names which mask warns
    with pytest.warns(UserWarning, match="mask 1 of 2 selects"):
        load_mask(batch, size=(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mask(np.eye(4, dtype=np.uint8) * 255, size=(4, 4))  # a mask that selects some pixels is quiet
