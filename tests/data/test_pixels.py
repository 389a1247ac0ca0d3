"""One image to training pixels: 8-bit images skip the float round trip exactly, EXIF orientation, resizing."""

import numpy as np
import pytest
from PIL import Image

from cmkit.data.pixels import check_options, image_pixels, to_8bit
from cmkit.io.images import pil_to_unit, unit_to_uint8


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("channels", [1, 3])
def test_8bit_images_give_what_the_float_reader_gives(mode, channels):
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = Image.fromarray(ramp).convert(mode) if mode == "L" else Image.fromarray(np.stack([ramp, ramp[::-1], ramp.T], -1))
    pixels = unit_to_uint8(pil_to_unit(image).pixels)  # the general route every other mode takes
    general = Image.fromarray(pixels[..., 0]) if pixels.shape[-1] == 1 else Image.fromarray(pixels)
    fast, notes = to_8bit(image, channels)
    assert notes == () and np.array_equal(np.asarray(fast), np.asarray(general.convert("L" if channels == 1 else "RGB")))


def test_exif_orientation_and_sizes():
    wide = Image.new("RGB", (6, 2), (255, 0, 0))
    exif = wide.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright, _ = to_8bit(Image.open(_saved(wide, exif)), 3)
    assert upright.size == (2, 6)
    arr, notes = image_pixels(Image.new("RGBA", (12, 6), (255, 255, 255, 0)), 3, 4, "crop")
    assert arr.shape == (3, 4, 4) and arr.dtype == np.uint8 and arr.max() == 0 and len(notes) == 1  # alpha over black
    assert image_pixels(Image.new("L", (5, 3)), 1, None, "none")[0].shape == (1, 3, 5)
    with pytest.raises(ValueError, match="needs a resolution"):
        check_options(None, "crop", 3)
    with pytest.raises(ValueError, match="channels must be 1"):
        check_options(8, "crop", 2)


def _saved(image, exif):
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    buf.seek(0)
    return buf
