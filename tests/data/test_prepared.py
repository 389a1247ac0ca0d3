"""Prepared data: the source's batches from a memory-mapped file, written atomically, checked when read."""

import json
import pickle

import numpy as np
import pytest
import torch

from builders import write_image_folder
from cmkit.data import build_dataset, open_records
from cmkit.data import prepared as prepared_module
from cmkit.data.prepared import PreparedSource, prepare_images


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "imgs", per_class=6)


def test_prepared_data_give_the_folder_batches(folder, tmp_path):
    manifest = prepare_images(open_records("folder", str(folder)), tmp_path / "p", resolution=8, source="folder:x")
    assert manifest["shape"] == [12, 3, 8, 8] and manifest["class_names"] == ["a", "b"] and manifest["skipped"] == []
    prepared = build_dataset("prepared", path=str(tmp_path / "p"), flip=True)
    streamed = build_dataset("folder", path=str(folder), resolution=8, flip=True)
    assert isinstance(prepared, PreparedSource) and isinstance(prepared.images(), np.memmap)
    assert prepared.sample_shape == (3, 8, 8) and prepared.num_classes == 2 and len(prepared) == 12
    for step in range(4):
        x, y = prepared.batch(2, step, 5)
        ref_x, ref_y = streamed.batch(2, step, 5)
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    with prepared.loader(2, 1, 4, 5, 1, 4, workers=2) as batches:
        for step, (x, y) in zip(range(1, 4), batches):
            assert torch.equal(x, streamed.batch(2, step, 5, 1, 4)[0])
    assert build_dataset("prepared", path=str(tmp_path / "p"), class_labels=False).batch(0, 0, 2)[1] is None
    copy = pickle.loads(pickle.dumps(prepared))  # as spawned workers (macOS) get it: the mapping is not pickled
    assert copy._images is None and torch.equal(copy.batch(2, 3, 5)[0], prepared.batch(2, 3, 5)[0])


def test_unreadable_files_are_listed_and_left_out(folder, tmp_path):
    (folder / "a" / "zz.png").write_bytes(b"not a png")
    manifest = prepare_images(open_records("folder", str(folder)), tmp_path / "p", resolution=4, channels=1, resize="stretch")
    assert manifest["shape"] == [12, 1, 4, 4] and manifest["source_records"] == 13
    assert manifest["skipped"][0]["record"] == 6 and "zz.png" in manifest["skipped"][0]["reason"]
    labels = np.load(tmp_path / "p" / "labels.npy")
    assert labels.tolist() == [0] * 6 + [1] * 6  # the ids of the images kept


def test_pool_workers_write_the_same_bytes(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(prepared_module, "CHUNK", 5)  # several chunks, decoded out of order by two processes
    records = open_records("folder", str(folder))
    prepare_images(records, tmp_path / "one", resolution=8)
    prepare_images(records, tmp_path / "two", resolution=8, workers=2)
    assert (tmp_path / "one" / "images.u8").read_bytes() == (tmp_path / "two" / "images.u8").read_bytes()


def test_an_interrupted_prepare_leaves_nothing_that_looks_prepared(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(prepared_module, "CHUNK", 4)
    decode = prepared_module._ChunkDecoder.__call__

    def crash_on_the_second_chunk(self, indices):
        if indices.start >= 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C halfway
        return decode(self, indices)

    monkeypatch.setattr(prepared_module._ChunkDecoder, "__call__", crash_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        prepare_images(open_records("folder", str(folder)), tmp_path / "p", resolution=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # no p, no temporary directory
    with pytest.raises(FileNotFoundError, match="make it with `cmkit data prepare"):
        build_dataset("prepared", path=str(tmp_path / "p"))


def test_damaged_prepared_data_are_clear_errors(folder, tmp_path):
    out = tmp_path / "p"
    prepare_images(open_records("folder", str(folder)), out, resolution=8)
    with pytest.raises(FileExistsError, match="already exists"):
        prepare_images(open_records("folder", str(folder)), out, resolution=8)
    with pytest.raises(ValueError, match="prepared at resolution 8, not 16"):
        PreparedSource(out, resolution=16)
    with pytest.raises(ValueError, match=r"with 3 channel\(s\), not 1"):
        PreparedSource(out, channels=1)
    images = out / "images.u8"
    images.write_bytes(images.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"has 2,297 bytes, but the manifest says 12 x 3 x 8 x 8 = 2,304: .*truncated"):
        PreparedSource(out)
    images.write_bytes(b"\0" * 2304)
    np.save(out / "labels.npy", np.arange(5))
    with pytest.raises(ValueError, match=r"labels.npy holds int64 \(5,\), not int64 \(12,\)"):
        PreparedSource(out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "shape": [12, 3, 8]}))
    with pytest.raises(ValueError, match="is damaged"):
        PreparedSource(out)
    (out / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ValueError, match="version 99; this cmkit reads version 1"):
        PreparedSource(out)
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match="not a prepared data directory"):
        PreparedSource(out)
    with pytest.raises(ValueError, match="one size"):
        prepare_images(open_records("folder", str(folder)), tmp_path / "q", resolution=8, resize="none")
