"""A user's image folder: class sub-folders, resizing, grayscale, flips, and every bad-data error."""

import numpy as np
import pytest
import torch
from PIL import Image

from cmkit.data import build_dataset
from cmkit.data.indexed import IndexedImageSource
from cmkit.data.folder import load_image_folder, scan_image_folder


def write(path, size=(8, 8), color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def classes(tmp_path):
    root = tmp_path / "pets"
    write(root / "dog" / "a.png", color=(0, 255, 0))
    write(root / "dog" / "nested" / "b.jpg", color=(0, 255, 0))
    write(root / "cat" / "c.png", color=(255, 0, 0))
    (root / "cat" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    (root / "empty_class").mkdir()  # no images: not a class
    return root


def test_class_subfolders_sorted_names(classes):
    folder = load_image_folder(classes, resolution=4)
    assert folder.class_names == ["cat", "dog"]
    assert folder.labels.tolist() == [0, 1, 1]
    assert folder.images.shape == (3, 3, 4, 4) and folder.images.dtype == torch.uint8
    assert folder.images[0, :, 0, 0].tolist() == [255, 0, 0]  # the cat is red
    assert folder.images[1, :, 0, 0].tolist() == [0, 255, 0]
    unlabelled = load_image_folder(classes, resolution=4, class_labels=False)
    assert unlabelled.labels is None and unlabelled.class_names == [] and len(unlabelled.images) == 3


def test_flat_folder_is_unconditional(tmp_path):
    for i in range(3):
        write(tmp_path / f"{i}.png")
    files, labels, names = scan_image_folder(tmp_path)
    assert len(files) == 3 and labels is None and names == []
    with pytest.raises(ValueError, match="no sub-folders with images"):
        scan_image_folder(tmp_path, class_labels=True)


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no images found in .*empty"):
        load_image_folder(tmp_path / "empty", resolution=8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope", resolution=8)
    with pytest.raises(NotADirectoryError):
        load_image_folder(tmp_path / "empty" / "readme.md", resolution=8)


def test_mixed_sizes_need_a_resize(tmp_path):
    write(tmp_path / "a.png", size=(8, 8))
    write(tmp_path / "b.png", size=(16, 12))
    with pytest.raises(ValueError, match=r"different sizes \(8x8, 12x16\).*resize='crop' or 'stretch'"):
        load_image_folder(tmp_path, resize="none")
    assert load_image_folder(tmp_path, resolution=8).images.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="needs a resolution"):
        load_image_folder(tmp_path)


def test_resize_none_checks_resolution(tmp_path):
    write(tmp_path / "a.png", size=(8, 8))
    assert load_image_folder(tmp_path, resolution=8, resize="none").images.shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="are 8x8, not 16x16"):
        load_image_folder(tmp_path, resolution=16, resize="none")


def test_unreadable_files_are_skipped_with_a_count(tmp_path):
    write(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image file\(s\) of 3"):
        folder = load_image_folder(tmp_path, resolution=8)
    assert len(folder.images) == 1 and len(folder.skipped) == 2
    (tmp_path / "good.png").unlink()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the 2 image files"):
        load_image_folder(tmp_path, resolution=8)


def test_top_level_images_beside_class_folders(classes):
    write(classes / "stray.png")
    with pytest.raises(ValueError, match="mixes 1 images at the top level"):
        load_image_folder(classes, resolution=4)
    assert len(load_image_folder(classes, resolution=4, class_labels=False).images) == 4


def test_center_crop_and_stretch(tmp_path):
    pixels = np.zeros((8, 24, 3), dtype=np.uint8)  # 24 wide, 8 high: left third red, middle green, right blue
    pixels[:, :8, 0], pixels[:, 8:16, 1], pixels[:, 16:, 2] = 255, 255, 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    crop = load_image_folder(tmp_path, resolution=8, resize="crop").images[0]
    assert crop.shape == (3, 8, 8)
    assert crop[1].float().mean() > 250 and crop[0].float().mean() < 5  # only the green middle survives
    stretch = load_image_folder(tmp_path, resolution=8, resize="stretch").images[0]
    assert stretch[0, :, 0].float().mean() > 200 and stretch[2, :, -1].float().mean() > 200  # all three remain


def test_grayscale_and_rgba(tmp_path):
    write(tmp_path / "rgba.png", color=(10, 20, 30, 128), mode="RGBA")
    write(tmp_path / "gray.png", color=200, mode="L")
    gray = load_image_folder(tmp_path, resolution=4, channels=1)
    assert gray.images.shape == (2, 1, 4, 4)
    rgb = load_image_folder(tmp_path, resolution=4)
    assert rgb.images.shape == (2, 3, 4, 4)
    assert rgb.images[0, :, 0, 0].tolist() == [200, 200, 200]


def test_build_dataset_folder(classes):
    src = build_dataset("folder", path=str(classes), resolution=4, flip=True)
    assert isinstance(src, IndexedImageSource)  # streamed: decoded when a batch needs it
    assert src.sample_shape == (3, 4, 4) and src.num_classes == 2 and src.class_names == ["cat", "dog"]
    x, y = src.batch(0, 0, 6)
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1 and y.dtype == torch.long
    with pytest.raises(ValueError, match="needs a path"):
        build_dataset("folder", resolution=4)
    with pytest.raises(ValueError, match="unknown toy"):
        build_dataset("toy", toy="spiral")
    with pytest.raises(ValueError, match="data kind must be"):
        build_dataset("imagenet")


def test_build_dataset_digits():
    src = build_dataset("digits", resolution=16)
    assert src.sample_shape == (1, 16, 16) and src.num_classes == 10 and len(src) == 1437
    assert build_dataset("digits", class_labels=False).num_classes == 0


def test_options_that_do_not_apply_are_errors():
    with pytest.raises(ValueError, match="digits are grayscale"):
        build_dataset("digits", channels=3)
    with pytest.raises(ValueError, match="resolution, channels, flip and class labels do not apply"):
        build_dataset("toy", toy="moons", resolution=32)
