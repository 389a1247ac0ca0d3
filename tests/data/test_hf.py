"""hf:PATH records: save_to_disk folders, parquet files/folders/globs, splits, columns, bad records, workers, memory."""

import io
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets")

from builders import FirstPixelReads  # noqa: E402
from cmkit.data.hf import HFImageRecords, build_hf_records  # noqa: E402

datasets.disable_progress_bars()
CLASSES = ["cat", "dog", "bird"]


def png(value, size=(4, 3)):
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, 7)).save(buffer, "PNG")
    return buffer.getvalue()


def labelled(n=6):
    """Record i: a 4x3 image whose red value is 10 * i, class i % 3, and a caption column that is not read."""
    features = datasets.Features(
        {"caption": datasets.Value("string"), "image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}
    )
    rows = {"caption": [f"c{i}" for i in range(n)], "image": [{"bytes": png(10 * i), "path": None} for i in range(n)],
            "label": [i % 3 for i in range(n)]}
    return datasets.Dataset.from_dict(rows, features=features)


def check_records(records, n=6):
    assert len(records) == n and records.class_names == CLASSES
    for i in range(n):
        image, label = records.read(i)
        assert isinstance(image, Image.Image) and image.size == (4, 3)
        assert image.convert("RGB").getpixel((0, 0)) == (10 * i, 255 - 10 * i, 7)
        assert label == i % 3


def test_save_to_disk_folder(tmp_path):
    labelled().save_to_disk(tmp_path / "ds")
    records = build_hf_records(tmp_path / "ds")
    assert (records.image_column, records.label_column) == ("image", "label")
    check_records(records)
    unlabelled = HFImageRecords(tmp_path / "ds", class_labels=False)
    assert unlabelled.class_names == [] and unlabelled.read(4)[1] is None


def test_parquet_file_folder_and_glob(tmp_path):
    ds = labelled()
    ds.select(range(4)).to_parquet(tmp_path / "pq" / "train-00000-of-00002.parquet")
    ds.select(range(4, 6)).to_parquet(tmp_path / "pq" / "train-00001-of-00002.parquet")
    for path in (tmp_path / "pq", str(tmp_path / "pq" / "train-*.parquet")):
        check_records(HFImageRecords(path, cache_dir=tmp_path / "cache"))
    one = HFImageRecords(tmp_path / "pq" / "train-00001-of-00002.parquet", cache_dir=tmp_path / "cache")
    assert len(one) == 2 and one.read(1)[1] == 5 % 3
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .parquet file"):
        HFImageRecords(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="names the files to read, so drop split"):
        HFImageRecords(str(tmp_path / "pq" / "train-*.parquet"), split="train")
    with pytest.raises(FileNotFoundError, match="no files match"):
        HFImageRecords(str(tmp_path / "pq" / "test-*.parquet"))


def test_splits_of_a_dataset_dict_and_a_parquet_folder(tmp_path):
    ds = labelled()
    datasets.DatasetDict(train=ds, test=ds.select(range(2))).save_to_disk(tmp_path / "dd")
    assert len(HFImageRecords(tmp_path / "dd")) == 6  # train by default
    assert len(HFImageRecords(tmp_path / "dd", split="test")) == 2
    with pytest.raises(ValueError, match="no split 'valid'.*train, test|no split 'valid'.*test, train"):
        HFImageRecords(tmp_path / "dd", split="valid")
    ds.to_parquet(tmp_path / "pq" / "train" / "0000.parquet")  # the Hub's refs/convert/parquet layout
    ds.select(range(3)).to_parquet(tmp_path / "pq" / "validation" / "0000.parquet")
    assert len(HFImageRecords(tmp_path / "pq", cache_dir=tmp_path / "cache")) == 6
    assert len(HFImageRecords(tmp_path / "pq", split="validation", cache_dir=tmp_path / "cache")) == 3
    ds.to_parquet(tmp_path / "pq" / "extra.parquet")
    with pytest.raises(ValueError, match="files of no split.*glob"):
        HFImageRecords(tmp_path / "pq")
    datasets.DatasetDict(a=ds, b=ds).save_to_disk(tmp_path / "ab")
    with pytest.raises(ValueError, match="none is 'train'; choose one with split"):
        HFImageRecords(tmp_path / "ab")


def test_columns_found_by_name_and_named_explicitly(tmp_path):
    rows = {"img": [png(i) for i in range(5)], "labels": [4, 0, 1, -1, 2], "other": [png(0)] * 5}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "plain")  # binary + int64: no Image/ClassLabel
    records = HFImageRecords(tmp_path / "plain")
    assert (records.image_column, records.label_column) == ("img", "labels")
    assert records.class_names == ["0", "1", "2", "3", "4"]  # an integer column: ids up to its maximum
    assert records.read(0)[1] == 4 and records.read(3)[1] is None  # -1: unlabelled
    assert HFImageRecords(tmp_path / "plain", image_column="other").read(1)[0].getpixel((0, 0)) == (0, 255, 7)
    with pytest.raises(ValueError, match="no column 'pixels'; its columns are img .*labels .*other"):
        HFImageRecords(tmp_path / "plain", image_column="pixels")
    with pytest.raises(ValueError, match="label column 'img' .* not class ids"):
        HFImageRecords(tmp_path / "plain", label_column="img")
    with pytest.raises(ValueError, match="labels but class labels are off"):
        HFImageRecords(tmp_path / "plain", label_column="labels", class_labels=False)


def test_no_image_or_label_column_names_the_columns(tmp_path):
    datasets.Dataset.from_dict({"pixels": [b"x"], "caption": ["a"]}).save_to_disk(tmp_path / "noimg")
    listing = r"its columns are pixels \(Value\), caption \(Value\)"
    with pytest.raises(ValueError, match=rf"no image column .* {listing}; name it with image_column"):
        HFImageRecords(tmp_path / "noimg")
    datasets.Dataset.from_dict({"image": [png(1)], "caption": ["a"]}).save_to_disk(tmp_path / "nolabel")
    assert HFImageRecords(tmp_path / "nolabel").class_names == []
    with pytest.raises(ValueError, match="class labels were requested .* its columns are image .*caption"):
        HFImageRecords(tmp_path / "nolabel", class_labels=True)
    two = datasets.Features({"a": datasets.Image(), "b": datasets.Image()})
    datasets.Dataset.from_dict({"a": [png(1)], "b": [png(2)]}, features=two).save_to_disk(tmp_path / "two")
    with pytest.raises(ValueError, match="several columns could be the image: a, b"):
        HFImageRecords(tmp_path / "two")
    assert HFImageRecords(tmp_path / "two", image_column="b").read(0)[0].getpixel((0, 0)) == (2, 253, 7)


def test_bad_records_raise_for_the_caller_to_count(tmp_path):
    # a plain {bytes, path} struct: datasets' Image feature would itself fetch the URL and embed the file on saving
    struct = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({"image": struct, "label": datasets.ClassLabel(names=CLASSES)})
    rows = {"image": [{"bytes": png(1), "path": None}, {"bytes": b"not an image", "path": None},
                      {"bytes": None, "path": "https://example.com/x.png"}, {"bytes": None, "path": "/nope/x.png"}],
            "label": [0, 1, -1, 2]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "bad")
    records = HFImageRecords(tmp_path / "bad")
    assert records.read(0)[1] == 0
    with pytest.raises(ValueError, match="record 1 of .* cannot be decoded"):
        records.read(1)
    with pytest.raises(ValueError, match="record 2 .* never downloads"):
        records.read(2)
    with pytest.raises(ValueError, match="record 3 .* does not exist"):
        records.read(3)
    with pytest.raises(IndexError, match="record 4 is out of range"):
        records.read(4)


def test_a_missing_path_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hint = r"(?s)hf:uoft-cs/cifar10 does not exist.*never downloads.*save_to_disk\('cifar10'\)"
    with pytest.raises(FileNotFoundError, match=hint):
        HFImageRecords("uoft-cs/cifar10")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a save_to_disk folder .* nor a folder of .parquet"):
        HFImageRecords(tmp_path / "empty")


def test_pickled_records_reopen_lazily(tmp_path):
    labelled().save_to_disk(tmp_path / "ds")
    records = HFImageRecords(tmp_path / "ds")
    blob = pickle.dumps(records)
    assert len(blob) < 4096  # paths and column names only, not the data
    copy = pickle.loads(blob)
    assert copy._rows is None  # nothing open until the first read
    check_records(copy)


def test_dataloader_workers_read_every_record_once(tmp_path):
    labelled(12).save_to_disk(tmp_path / "ds")
    records = HFImageRecords(tmp_path / "ds")
    loader = torch.utils.data.DataLoader(FirstPixelReads(records), batch_size=None, num_workers=2)
    seen = sorted((i, red, label) for i, red, label in loader)
    assert seen == [(i, 10 * i, i % 3) for i in range(12)]


#: run in a fresh process, whose allocator holds no freed memory that an in-memory copy could reuse unseen.
MEASURE_READS = """
import sys
import datasets, PIL.PngImagePlugin  # imported before the baseline: only the data may count
from cmkit.data.hf import HFImageRecords

def anon_kib():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon:"))

before = anon_kib()
records = HFImageRecords(sys.argv[1])
for i in range(len(records)):
    records.read(i)
print((anon_kib() - before) / 1024)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RssAnon is read from /proc")
def test_reading_every_record_keeps_the_data_memory_mapped(tmp_path):
    # 640 records of ~50 KiB each (a tiny PNG followed by padding PIL ignores): 32 MiB on disk.
    padding = os.urandom(50_000)
    rows = {"image": [png(i % 256) + padding for i in range(640)], "label": [i % 3 for i in range(640)]}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "big")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-c", MEASURE_READS, str(tmp_path / "big")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    grown_mib = float(run.stdout.split()[-1])
    assert grown_mib < 12, f"reading the records grew anonymous memory by {grown_mib:.1f} MiB (32 MiB of data)"


def test_hf_spec_trains_through_the_streaming_loader(tmp_path):
    """``cmkit train --data hf:PATH`` reads a saved data set through the prefetching loader, end to end."""
    from cmkit.cli import main

    labelled(8).save_to_disk(tmp_path / "ds")
    out = tmp_path / "run"
    code = main(["train", "--method", "edm", "--data", f"hf:{tmp_path / 'ds'}", "--resolution", "8", "--resize", "stretch",
                 "--model", "tiny", "--steps", "2", "--batch-size", "4", "--workers", "0", "--num-samples", "4",
                 "--image-column", "image", "--label-column", "label",
                 "--output", str(out), "--no-progress"])
    assert code == 0
    info = json.loads((out / "train_config.json").read_text())
    assert info["data"]["kind"] == "hf" and (out / "model_index.json").is_file()


def test_hf_column_options_are_refused_for_other_data():
    from cmkit.training.config import DataConfig

    with pytest.raises(ValueError, match="--image-column, --split apply to hf:PATH data only"):
        DataConfig.parse("folder:/x", image_column="img", split="test")
    assert DataConfig.parse("hf:/x", image_column="img", split="test").spec() == "hf:/x"
