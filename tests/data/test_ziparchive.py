"""EDM dataset archives (``zip:PATH``): images in name order, labels from dataset.json, damaged members replaced."""

import json
import pickle
import zipfile

import numpy as np
import pytest
import torch

from builders import edm_archive
from cmkit.data import build_dataset
from cmkit.data.indexed import ImageRecords
from cmkit.data.ziparchive import ZipRecords


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_images_and_labels_of_an_edm_archive(tmp_path, compression):
    pixels = edm_archive(tmp_path / "d.zip", compression=compression)
    records = ZipRecords(tmp_path / "d.zip")
    assert isinstance(records, ImageRecords) and len(records) == 6 and records.class_names == ["0", "1", "2"]
    for i in range(6):
        image, label = records.read(i)
        assert np.array_equal(np.asarray(image), pixels[i]) and label == i % 3
    src = build_dataset("zip", path=str(tmp_path / "d.zip"), resize="none")
    assert src.sample_shape == (3, 8, 8) and src.num_classes == 3
    x, y = src.batch(0, 0, 6)
    order = src._order.indices(0, 0, 6)
    assert torch.equal(x, torch.from_numpy(pixels[order.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.equal(y, order % 3)
    with src.loader(0, 0, 1, 6, workers=2) as batches:  # each worker opens the archive itself
        assert torch.equal(next(batches)[0], x)
    copy = pickle.loads(pickle.dumps(src))  # as spawned workers (macOS) get it: no open file inside
    assert copy.records._file is None and torch.equal(copy.batch(0, 0, 6)[0], x)


def test_unlabelled_archives_and_label_errors(tmp_path):
    edm_archive(tmp_path / "u.zip", labels=False)
    assert ZipRecords(tmp_path / "u.zip").class_names == [] and ZipRecords(tmp_path / "u.zip").read(0)[1] is None
    with pytest.raises(ValueError, match="class labels were requested but .* has no dataset.json with labels"):
        ZipRecords(tmp_path / "u.zip", class_labels=True)
    edm_archive(tmp_path / "l.zip")
    assert ZipRecords(tmp_path / "l.zip", class_labels=False).class_names == []
    with zipfile.ZipFile(tmp_path / "v.zip", "w") as zf:
        zf.writestr("a.png", b"")
        zf.writestr("dataset.json", json.dumps({"labels": [["a.png", [0.5, 0.5]]]}))
    with pytest.raises(ValueError, match="cmkit trains on class ids .*not label vectors"):
        ZipRecords(tmp_path / "v.zip")
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as zf:
        zf.writestr("a.png", b"")
        zf.writestr("b.png", b"")
        zf.writestr("dataset.json", json.dumps({"labels": [["a.png", 0]]}))
    with pytest.raises(ValueError, match="has no label for b.png"):
        ZipRecords(tmp_path / "m.zip")
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(ValueError, match="is not a readable zip archive"):
        ZipRecords(tmp_path / "bad.zip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ZipRecords(tmp_path / "none.zip")


def test_a_damaged_member_is_an_unreadable_record(tmp_path):
    edm_archive(tmp_path / "d.zip", labels=False)
    data = bytearray((tmp_path / "d.zip").read_bytes())
    with zipfile.ZipFile(tmp_path / "d.zip") as zf:
        info = zf.getinfo("00000/img00000002.png")
    data[info.header_offset + 30 + len(info.filename) + 60] ^= 0xFF  # one flipped byte inside the stored PNG
    (tmp_path / "d.zip").write_bytes(bytes(data))
    records = ZipRecords(tmp_path / "d.zip")
    with pytest.raises(OSError, match=r"cannot read 00000/img00000002.png in .*CRC"):
        records.read(2)
    src = build_dataset("zip", path=str(tmp_path / "d.zip"), resize="none")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 6 in zip:.*img00000002.png"):
        src.batch(0, 0, 6)
    assert src.num_unreadable == 1
