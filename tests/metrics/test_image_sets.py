"""Image sets streamed in batches: folders (recursive, greyscale to RGB) and .npz archives in three layouts."""

import numpy as np
import pytest
import torch
from cmkit.metrics.image_sets import open_image_set


def _all(image_set, batch_size):
    return torch.cat(list(image_set.batches(batch_size)))


def test_folder_is_read_recursively_in_path_order_with_grey_as_rgb(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(3, 5, 6, 3), dtype=np.uint8)
    (tmp_path / "000000").mkdir()
    for i, image in enumerate(rgb):
        Image.fromarray(image).save(tmp_path / "000000" / f"{i:06d}.png")
    grey = rng.integers(0, 256, size=(5, 6), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "zz.png")
    images = open_image_set(tmp_path)
    assert images.num_images == 4
    batches = list(images.batches(3))
    assert [b.shape for b in batches] == [(3, 3, 5, 6), (1, 3, 5, 6)] and batches[0].dtype == torch.uint8
    got = torch.cat(batches)
    np.testing.assert_array_equal(got[:3].permute(0, 2, 3, 1).numpy(), rgb)  # 8-bit pixels unchanged
    assert all(torch.equal(got[3, c], torch.from_numpy(grey)) for c in range(3))


def test_folder_errors_name_the_file(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 4, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"different sizes: .*b\.png is 5x4"):
        _all(open_image_set(tmp_path), 8)
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*b\.png"):
        _all(open_image_set(tmp_path), 8)
    with pytest.raises(FileNotFoundError, match="folder of images"):
        open_image_set(tmp_path / "missing")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW"])
def test_npz_images_in_each_layout(tmp_path, layout):
    nhwc = np.random.default_rng(1).integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)
    if layout == "NHW":
        nhwc = nhwc[..., :1]
    stored = {"NHWC": nhwc, "NCHW": nhwc.transpose(0, 3, 1, 2), "NHW": nhwc[..., 0]}[layout]
    np.savez(tmp_path / "d.npz", images=stored, mu=np.zeros(2))
    got = _all(open_image_set(tmp_path / "d.npz"), 2)
    expected = np.repeat(nhwc, 3, axis=-1) if layout == "NHW" else nhwc
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), expected)


def test_npz_image_refusals(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        open_image_set(tmp_path / "f.npz")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4), np.uint8), b=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="holds no image array"):
        open_image_set(tmp_path / "two.npz")
    np.savez(tmp_path / "s.npz", images=np.zeros((2, 4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"expected uint8 images \[N, H, W, C\]"):
        open_image_set(tmp_path / "s.npz")
