"""wds:PATTERN records: shard patterns, the tar index and its cache, labels, bad samples, damaged shards, workers."""

import gzip
import io
import json
import os
import pickle
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cmkit.data import wds
from cmkit.data.wds import WdsImageRecords, build_wds_records, expand_braces, scan_shard, shard_paths
from builders import FirstPixelReads


def png(value, size=(4, 3)):
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, 7)).save(buffer, "PNG")
    return buffer.getvalue()


def write_shard(path, samples):
    """A tar of ``samples``: (key, {extension: bytes}) in order; a ``dir`` extension adds a directory member."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                if ext == "dir":
                    info.name, info.type = key, tarfile.DIRTYPE
                    tar.addfile(info)
                    continue
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def labelled_shards(root, n_shards=2, per_shard=5):
    """Sample i (global): red value 10 * i, class i % 3, its label in a cls, txt or json member in turn."""
    for s in range(n_shards):
        samples = []
        for j in range(per_shard):
            i = s * per_shard + j
            label = [("cls", str(i % 3).encode()), ("txt", f" {i % 3}\n".encode()),
                     ("json", json.dumps({"label": i % 3, "caption": "x"}).encode())][i % 3]
            samples.append((f"part/{i:04d}", {"png": png(10 * i), label[0]: label[1]}))
        write_shard(root / f"shard-{s:02d}.tar", samples)
    return root


def reads(records):
    return [(r.getpixel((0, 0))[0], y) for r, y in (records.read(i) for i in range(len(records)))]


def test_expand_braces():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}{8..10}") == ["a8", "a9", "a10", "b8", "b9", "b10"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("x{y}z.tar") == ["x{y}z.tar"]  # neither a range nor a list: literal
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_patterns_brace_glob_and_list_file_name_the_same_shards(tmp_path, monkeypatch):
    labelled_shards(tmp_path / "d", n_shards=3, per_shard=2)
    (tmp_path / "d" / "notes.md").write_text("x")
    expected = [tmp_path / "d" / f"shard-{s:02d}.tar" for s in range(3)]
    assert shard_paths(str(tmp_path / "d" / "shard-{00..02}.tar")) == expected
    assert shard_paths(str(tmp_path / "d" / "*.tar")) == expected
    (tmp_path / "d" / "list.txt").write_text("# train shards\nshard-00.tar\n\nshard-{01..02}.tar\n")
    monkeypatch.chdir(tmp_path)  # list entries are relative to the list file, not to the working folder
    assert shard_paths("d/list.txt") == [tmp_path / "d" / f"shard-{s:02d}.tar" for s in range(3)]
    cache = tmp_path / "cache"
    listed, globbed = WdsImageRecords("d/list.txt", index_cache=cache), WdsImageRecords("d/*.tar", index_cache=cache)
    assert reads(listed) == reads(globbed) == [(10 * i, i % 3) for i in range(6)]
    with pytest.raises(FileNotFoundError, match=r"1 shard\(s\) of .* do not exist \(first: .*shard-03.tar\)"):
        shard_paths(str(tmp_path / "d" / "shard-{00..03}.tar"))
    with pytest.raises(FileNotFoundError, match="do not exist"):
        shard_paths(str(tmp_path / "d" / "*.tgz"))
    with pytest.raises(IsADirectoryError, match=r"is a folder; name its shards, e.g. wds:.*/\*.tar"):
        shard_paths(str(tmp_path / "d"))
    with pytest.raises(ValueError, match="local shards only"):
        shard_paths("https://example.com/shards-{0..9}.tar")
    with pytest.raises(ValueError, match="names .*shard-00.tar twice"):
        shard_paths(str(tmp_path / "d" / "shard-{00,01,00}.tar"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no shards"):
        shard_paths(str(tmp_path / "empty.txt"))


def test_records_read_images_and_labels_in_shard_order(tmp_path):
    labelled_shards(tmp_path)
    records = build_wds_records(str(tmp_path / "shard-{00..01}.tar"), index_cache=False)
    assert len(records) == 10 and records.class_names == ["0", "1", "2"]
    assert reads(records) == [(10 * i, i % 3) for i in range(10)]
    image, _ = records.read(np.int64(4))
    assert isinstance(image, Image.Image) and image.size == (4, 3)
    with pytest.raises(IndexError, match="sample 10 is out of range"):
        records.read(10)
    unlabelled = WdsImageRecords(str(tmp_path / "*.tar"), class_labels=False, index_cache=False)
    assert unlabelled.class_names == [] and unlabelled.read(2)[1] is None


def test_captions_are_no_labels(tmp_path):
    write_shard(tmp_path / "a.tar", [(f"k{i}", {"jpg": png(i), "txt": b"a photo of a cat"}) for i in range(3)])
    records = WdsImageRecords(str(tmp_path / "a.tar"), index_cache=False)
    assert len(records) == 3 and records.class_names == [] and records.read(0)[1] is None
    with pytest.raises(ValueError, match="class labels were requested but no sample .* has a cls, txt or json label"):
        WdsImageRecords(str(tmp_path / "a.tar"), class_labels=True, index_cache=False)


def test_bad_samples_are_left_out_and_counted(tmp_path):
    samples = [
        ("a", {"png": png(1), "cls": b"1"}),
        ("b", {"cls": b"0"}),  # no image
        ("c", {"png": png(3)}),  # no label
        ("d", {"png": b"not an image", "cls": b"2"}),  # undecodable: read raises, the source counts it
        ("e", {"dir": b""}),  # a directory member: ignored
        ("f", {"webp.json": b"{}", "png": png(6), "jpg": png(5), "cls": b"x", "json": b'{"cls": 4}'}),
        ("._g", {"png": b"macOS resource fork"}),  # hidden: no key, ignored
    ]
    write_shard(tmp_path / "s.tar", samples)
    counts = r"left out 1 sample\(s\) with no image and 1 sample\(s\) with no label; kept 3"
    with pytest.warns(UserWarning, match=counts):
        records = WdsImageRecords(str(tmp_path / "s.tar"), index_cache=False)
    assert records.skipped == {"no image": 1, "no label": 1}
    assert records.read(0)[1] == 1 and records.class_names == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError, match=r"sample 1 \(the image at byte .* of .*s.tar\) cannot be decoded"):
        records.read(1)
    image, label = records.read(2)  # jpg is preferred to png; an unparseable cls gives way to the json
    assert label == 4 and image.format == "PNG" and image.getpixel((0, 0))[0] == 5
    with pytest.warns(UserWarning, match=r"left out 1 sample\(s\) with no image; kept 4"):
        unlabelled = WdsImageRecords(str(tmp_path / "s.tar"), class_labels=False, index_cache=False)
    assert len(unlabelled) == 4 and unlabelled.skipped == {"no image": 1, "no label": 0}


def test_damaged_shards_keep_their_readable_samples(tmp_path):
    path = write_shard(tmp_path / "cut.tar", [(f"k{i}", {"png": png(i) + bytes(2000), "cls": b"0"}) for i in range(4)])
    data = path.read_bytes()
    third_image = scan_shard(path).offsets[2]
    path.write_bytes(data[: third_image + 100])  # cut inside the third image
    with pytest.warns(UserWarning, match=r"1 shard\(s\) are damaged .*cut.tar: member k2.png ends at byte"):
        records = WdsImageRecords(str(path), index_cache=False)
    assert len(records) == 2 and reads(records) == [(0, 0), (1, 0)]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    path.write_bytes(data[: members[2].offset + 100])  # cut inside the header of k1.png: tarfile stops there
    index = scan_shard(path)
    assert len(index.offsets) == 1 and "no end-of-archive marker after byte" in index.damage
    data_end = members[-1].offset_data + -(-members[-1].size // 512) * 512
    path.write_bytes(data[:data_end])  # every member whole, the end-of-archive marker gone
    index = scan_shard(path)
    assert len(index.offsets) == 4 and "no end-of-archive marker" in index.damage


def test_compressed_or_non_tar_files_are_refused(tmp_path):
    plain = write_shard(tmp_path / "a.tar", [("k", {"png": png(0)})])
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(ValueError, match="gzip-compressed; .* decompress the shards"):
        WdsImageRecords(str(tmp_path / "a.tar.gz"), index_cache=False)
    (tmp_path / "b.tar").write_text("hello" * 200)
    with pytest.raises(ValueError, match="b.tar is not a tar file"):
        WdsImageRecords(str(tmp_path / "b.tar"), index_cache=False)
    write_shard(tmp_path / "c.tar", [("k", {"cls": b"1"})])
    with pytest.raises(ValueError, match=r"holds no sample with an image \(jpg, .*\) in its 1 shard"):
        WdsImageRecords(str(tmp_path / "c.tar"), index_cache=False)


def test_the_index_is_cached_per_shard_and_rebuilt_when_a_shard_changes(tmp_path, monkeypatch):
    labelled_shards(tmp_path / "d")
    cache, pattern = tmp_path / "cache", str(tmp_path / "d" / "*.tar")
    first = reads(WdsImageRecords(pattern, index_cache=cache))
    assert len(list(cache.glob("*.npz"))) == 2
    scanned = []
    real_scan = wds.scan_shard
    monkeypatch.setattr(wds, "scan_shard", lambda path: scanned.append(path) or real_scan(path))
    assert reads(WdsImageRecords(pattern, index_cache=cache)) == first and scanned == []
    shard = tmp_path / "d" / "shard-01.tar"
    write_shard(shard, [("z", {"png": png(200), "cls": b"2"})])
    os.utime(shard, ns=(1, 1))  # a different size and modification time: a different cache key
    assert reads(WdsImageRecords(pattern, index_cache=cache))[5:] == [(200, 2)] and scanned == [shard]
    for file in cache.glob("*.npz"):
        file.write_bytes(b"garbage")  # a damaged cache file is rebuilt, never trusted
    assert len(WdsImageRecords(pattern, index_cache=cache)) == 6 and len(scanned) == 3
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="could not cache the index"):
        assert len(WdsImageRecords(pattern, index_cache=blocker)) == 6


def test_default_index_cache_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    labelled_shards(tmp_path / "d", n_shards=1)
    WdsImageRecords(str(tmp_path / "d" / "*.tar"))
    assert len(list((tmp_path / "xdg" / "cmkit" / "wds-index").glob("*.npz"))) == 1


def test_ranks_and_workers_read_every_sample_once(tmp_path):
    labelled_shards(tmp_path, n_shards=3, per_shard=4)
    records = pickle.loads(pickle.dumps(WdsImageRecords(str(tmp_path / "*.tar"), index_cache=False)))
    seen = []
    for rank in range(2):  # each rank reads its indices in 2 DataLoader worker processes
        loader = torch.utils.data.DataLoader(FirstPixelReads(records), batch_size=None, num_workers=2,
                                             sampler=list(range(rank, len(records), 2)))
        seen.extend((i, red, label) for i, red, label in loader)
    assert sorted(seen) == [(i, 10 * i, i % 3) for i in range(12)]


def test_no_warning_for_clean_shards(tmp_path):
    labelled_shards(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WdsImageRecords(str(tmp_path / "*.tar"), index_cache=False)


def test_wds_spec_streams_training_batches(tmp_path):
    """``wds:PATTERN`` parses, builds an IndexedImageSource, and its batches are those of the records read directly."""
    from cmkit.data import build_dataset
    from cmkit.data.indexed import IndexedImageSource
    from cmkit.training.config import DataConfig

    labelled_shards(tmp_path)
    config = DataConfig.parse(f"wds:{tmp_path}/shard-{{00..01}}.tar", resolution=4, resize="stretch")
    assert config.spec() == f"wds:{tmp_path}/shard-{{00..01}}.tar"
    source = build_dataset(**{k: v for k, v in vars(config).items() if k != "workers"})
    assert isinstance(source, IndexedImageSource) and source.num_classes == 3
    direct = IndexedImageSource(build_wds_records(f"{tmp_path}/shard-{{00..01}}.tar"), 4, "stretch", 3)
    for step in range(3):
        (x, y), (x_ref, y_ref) = source.batch(0, step, 4), direct.batch(0, step, 4)
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert x.shape == (4, 3, 4, 4) and x.abs().max() <= 1
