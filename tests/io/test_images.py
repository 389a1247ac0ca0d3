"""cmkit.io.images: every PIL mode becomes [0, 1] floats by its own range, in editing and in training folders."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cmkit.data.folder import load_image_folder
from cmkit.editing.inputs import load_image, load_unit
from cmkit.io.images import ALPHA_NOTE, pil_to_unit

#: a 16-bit ramp from black to mid-grey to nearly white; an 8-bit clip would make almost all of it 255.
RAMP16 = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
EXPECTED = RAMP16.astype(np.float64) / 65535


def _sixteen_bit_images():
    big_endian = Image.frombytes("I;16B", (4, 1), RAMP16.astype(">u2").tobytes())
    return {
        "I;16": Image.fromarray(RAMP16),
        "I;16B": big_endian,
        "I": Image.fromarray(RAMP16.astype(np.int32)),  # how Pillow opens some 16-bit PNG / TIFF files
    }


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_images_are_scaled_by_65535_in_editing(tmp_path, mode):
    image = _sixteen_bit_images()[mode]
    assert image.mode == mode
    x = load_unit(image)
    assert x.shape == (1, 1, 1, 4)
    np.testing.assert_allclose(x[0, 0, 0].numpy(), EXPECTED[0], atol=1e-6)  # mid-grey stays 0.5, not white
    if mode == "I;16":
        image.save(tmp_path / "ramp.png")  # a real 16-bit PNG file
        np.testing.assert_allclose(load_unit(tmp_path / "ramp.png")[0, 0, 0].numpy(), EXPECTED[0], atol=1e-6)
    # the model sees [-1, 1]: black -1, mid-grey ~0, white 1
    y = load_image(image, channels=3)
    assert y[0, :, 0, 2].tolist() == pytest.approx([EXPECTED[0, 2] * 2 - 1] * 3, abs=1e-5)


def test_sixteen_bit_images_are_scaled_by_65535_in_training_folders(tmp_path):
    pixels = np.tile(RAMP16, (4, 1))  # 4x4: columns 0, 256, 32768, 65535
    Image.fromarray(pixels).save(tmp_path / "a.png")
    folder = load_image_folder(tmp_path, resize="none", channels=1)
    assert folder.images[0, 0, 0].tolist() == [0, 1, 128, 255]  # round(255 * v / 65535), not 255 everywhere
    rgb = load_image_folder(tmp_path, resize="none", channels=3)
    assert rgb.images[0, :, 0, 2].tolist() == [128, 128, 128]


def test_float_and_integer_modes_are_read_honestly():
    ok = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    assert ok.mode == "F" and load_unit(ok)[0, 0, 0].tolist() == [0.0, 0.25, 1.0]
    with pytest.raises(ValueError, match=r"mode F\) must hold values in \[0, 1\].*\[0, 200\].*rescale"):
        load_unit(Image.fromarray(np.array([[0.0, 200.0]], dtype=np.float32)))
    with pytest.raises(ValueError, match="NaN"):
        load_unit(Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)))
    with pytest.raises(ValueError, match=r"mode I\) with values in \[-5, 70000\] has no known range"):
        load_unit(Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)))
    with pytest.warns(UserWarning, match="all lie in 0..255; they were read as 8-bit"):
        x = load_unit(Image.fromarray(np.array([[0, 51, 255]], dtype=np.int32)))
    assert x[0, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert load_unit(np.array([[0, 65535]], dtype=np.uint16))[0, 0, 0].tolist() == [0.0, 1.0]  # numpy 16-bit too


def test_alpha_is_composited_over_black_with_a_warning_and_honest_channel_messages():
    red_half = Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    with pytest.warns(UserWarning, match="RGBA.*transparent pixels.*composited over black"):
        x = load_unit(red_half)
    assert x[0, :, 0, 0].tolist() == pytest.approx([128 / 255, 0.0, 0.0])  # alpha x colour
    # a colour RGBA image for a 1-channel model: the message says colour, not "the image is RGB"
    with pytest.warns(UserWarning), pytest.raises(ValueError) as err:
        load_image(red_half, channels=1)
    assert "is in colour" in str(err.value) and "is RGB" not in str(err.value)
    # grey with alpha (LA), grey RGBA and a grey palette image all fit a 1-channel model
    with pytest.warns(UserWarning, match="LA"):
        la = load_image(Image.new("LA", (2, 2), (200, 255 // 2)), channels=1)
    assert la.shape == (1, 1, 2, 2) and la[0, 0, 0, 0].item() == pytest.approx(200 / 255 * 127 / 255 * 2 - 1, abs=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fully opaque images need no note
        opaque = load_image(Image.new("RGBA", (2, 2), (90, 90, 90, 255)), channels=1)
        palette = load_image(Image.new("L", (2, 2), 90).convert("P"), channels=1)
    assert torch.equal(opaque, palette) and opaque[0, 0, 0, 0].item() == pytest.approx(90 / 255 * 2 - 1, abs=1e-6)
    transparent_palette = Image.new("P", (2, 2), 0)
    transparent_palette.info["transparency"] = 0
    decoded = pil_to_unit(transparent_palette)
    assert decoded.channels == 3 and decoded.notes == (ALPHA_NOTE,) and decoded.pixels.max() == 0.0


def test_transparency_in_training_folders_is_counted_in_one_warning(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGBA", (4, 4), (255, 255, 255, 64)).save(tmp_path / name)
    Image.new("RGB", (4, 4), (255, 255, 255)).save(tmp_path / "c.png")
    with pytest.warns(UserWarning, match=r"2 image\(s\) in .*each has transparent pixels") as record:
        folder = load_image_folder(tmp_path, resize="none")
    assert len([w for w in record if "transparent" in str(w.message)]) == 1
    assert folder.images[:, 0, 0, 0].tolist() == [64, 64, 255]  # round(255 * 64 / 255) over black
