"""Images decoded on demand: the same batches as in memory, slices, resume, and unreadable records replaced."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from builders import write_image_folder
from cmkit.data import TensorSource, build_dataset
from cmkit.data.folder import FolderRecords, load_image_folder
from cmkit.data.indexed import ImageRecords, ImageSettingError, IndexedImageSource
from cmkit.data.source import EpochOrder


class NumberedRecords:
    """Record ``i`` is a 4x4 image whose every pixel is ``i``; the indices in ``bad`` raise."""

    def __init__(self, n, bad=(), classes=0):
        self.n, self.bad, self.class_names = n, set(bad), [str(k) for k in range(classes)]

    def __len__(self):
        return self.n

    def read(self, index):
        if index in self.bad:
            raise OSError(f"record {index} is damaged")
        label = index % len(self.class_names) if self.class_names else None
        return Image.new("L", (4, 4), index), label


@pytest.mark.parametrize("options", [dict(resize="crop", channels=3), dict(resize="stretch", channels=1)])
def test_the_same_batches_as_the_images_in_memory(tmp_path, options):
    root = write_image_folder(tmp_path / "imgs")
    folder = load_image_folder(root, resolution=8, **options)
    memory = TensorSource(folder.images, folder.labels, flip=True, class_names=folder.class_names)
    streamed = IndexedImageSource(FolderRecords(root), 8, flip=True, **options)
    assert streamed.sample_shape == memory.sample_shape and streamed.num_classes == 2 and len(streamed) == 10
    for step in range(5):  # batches of 4 over 10 images: crosses epochs
        x, y = streamed.batch(7, step, 4)
        ref_x, ref_y = memory.batch(7, step, 4)
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y) and x.dtype == torch.float32


def test_slices_of_two_processes_make_the_batch_of_one(tmp_path):
    src = build_dataset("folder", path=str(write_image_folder(tmp_path / "imgs")), resolution=8, flip=True)
    for step in (0, 3):
        whole = src.batch(1, step, 6)
        parts = [src.batch(1, step, 6, offset, 3) for offset in (0, 3)]
        assert torch.equal(whole[0], torch.cat([p[0] for p in parts]))
        assert torch.equal(whole[1], torch.cat([p[1] for p in parts]))


def test_records_protocol():
    assert isinstance(NumberedRecords(3), ImageRecords)
    src = IndexedImageSource(NumberedRecords(3), resize="none", channels=1)
    assert src.sample_shape == (1, 4, 4) and src.num_classes == 0  # the first image sets the size
    labelled = IndexedImageSource(NumberedRecords(6, classes=3), 4, channels=1)
    x, y = labelled.batch(0, 0, 6)
    assert torch.equal(y, ((x[:, 0, 0, 0] + 1) * 127.5).round().long() % 3)  # labels stay with their images
    assert IndexedImageSource(NumberedRecords(6, classes=3), 4, class_labels=False).batch(0, 0, 6)[1] is None
    with pytest.raises(ValueError, match="class labels were requested"):
        IndexedImageSource(NumberedRecords(3), 4, class_labels=True)
    with pytest.raises(ValueError, match="needs a resolution"):
        IndexedImageSource(NumberedRecords(3))


def pixel_ids(x):
    """The record index each image of a batch shows (NumberedRecords draws record i in grey level i)."""
    return ((x[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()


def test_unreadable_records_are_replaced_by_the_next_of_their_epoch():
    n, bad = 10, {2, 3, 7}
    src = IndexedImageSource(NumberedRecords(n, bad), 4, channels=1)
    order = EpochOrder(n)
    with pytest.warns(UserWarning, match=r"skipped \d unreadable image\(s\) of 10 .*\(first: record \d is damaged\)"):
        seen = [pixel_ids(src.batch(5, step, 5)[0]) for step in range(4)]  # two epochs
    for step, ids in enumerate(seen):
        for j, got in enumerate(ids):
            epoch, within = divmod(step * 5 + j, n)
            perm = order.permutation(5, epoch).tolist()
            expected = next(perm[(within + s) % n] for s in range(n) if perm[(within + s) % n] not in bad)
            assert got == expected
    assert src.num_unreadable == 3 and set(src.unreadable) == bad
    # the same replacements in a fresh source, from slices, and through loader workers
    again = IndexedImageSource(NumberedRecords(n, bad), 4, channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pixel_ids(torch.cat([again.batch(5, 3, 5, o, 1)[0] for o in range(5)])) == seen[3]
        with again.loader(5, 0, 4, 5, workers=2) as batches:
            assert [pixel_ids(x) for x, _ in batches] == seen
    assert again.num_unreadable == 3  # counted in this process from the workers' reports


def test_too_many_unreadable_records_stop_with_their_names():
    few_bad = IndexedImageSource(NumberedRecords(20, bad=range(5)), 4, channels=1)
    with pytest.warns(UserWarning, match="skipped"):
        [few_bad.batch(0, step, 16) for step in range(4)]  # a quarter of the images: replaced, never fatal
    src = IndexedImageSource(NumberedRecords(20, bad=range(19)), 4, channels=1)
    with pytest.raises(ValueError, match=r"9 different images .*could not be decoded \(record \d+ is damaged;.*damaged: check"):
        src.batch(0, 0, 16)
    nothing = IndexedImageSource(NumberedRecords(3, bad={0, 1, 2}), 4, channels=1)
    with pytest.raises(ValueError, match="could not be decoded"):
        nothing.batch(0, 0, 1)
    with pytest.raises(ValueError, match="none of the first 3 images"):
        IndexedImageSource(NumberedRecords(3, bad={0, 1, 2}), resize="none")


def test_settings_errors_are_not_unreadable_records(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (6, 8)).save(tmp_path / "b.png")
    src = IndexedImageSource(FolderRecords(tmp_path), resize="none")
    with pytest.raises(ImageSettingError, match=r"is 8x6, not 8x8 like the first one; pass a resolution with resize='crop'"):
        src.batch(0, 0, 2)
    class WrongLabels(NumberedRecords):
        def read(self, index):
            return super().read(index)[0], 2

    with pytest.raises(ImageSettingError, match="has class id 2, not one of 0..1"):
        IndexedImageSource(WrongLabels(4, classes=2), 4).batch(0, 0, 4)


def test_a_damaged_file_in_a_folder_is_replaced(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=())
    (root / "zz.png").write_bytes(b"\x89PNG truncated")
    src = build_dataset("folder", path=str(root), resolution=8)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 6 in folder:.*zz.png"):
        x = torch.cat([src.batch(0, step, 3)[0] for step in range(2)])
    assert x.shape == (6, 3, 8, 8) and src.unreadable.keys() == {5}
    assert len({tuple(img.flatten().tolist()) for img in x}) == 5  # the bad one became a readable one
