"""A Hugging Face ``datasets`` data set saved on this machine, as random-access image records (``hf:PATH``).

``PATH`` is one of

* a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``: one split is chosen, ``train``
  by default);
* a parquet file, a folder of parquet files (``train-00000-of-00004.parquet`` or ``<split>/*.parquet`` name the
  split, ``train`` by default), or a glob of parquet files. Parquet cannot be read one row at a time without
  decoding a whole row group, so on first use ``datasets`` converts the files once into its arrow cache
  (``cache_dir``, default ``HF_DATASETS_CACHE``): a copy the size of the files, reused on later runs.

Nothing is ever downloaded: a path that does not exist is an error that says how to save the data set on a
machine with internet. The arrow files are memory-mapped, so reading any record touches only that record's
pages; nothing is loaded into memory up front. Records hold no open files when pickled: each DataLoader worker
re-opens the arrow files on its first read.

Columns: the image column is the one with an ``Image`` feature (else one named ``image`` or ``img``); the label
column is the one with a ``ClassLabel`` feature (else an integer column named ``label`` or ``labels``), whose
names become the class names (an integer column gives ``"0" ... "K-1"``). A negative or missing label (``-1`` is
how ``datasets`` marks an unlabelled test image) reads as ``None``. Images are read from their stored bytes,
never through ``datasets``' decoder, which would fetch URLs.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from .._validate import require_int

#: column names tried, in order, when no column has an ``Image`` / ``ClassLabel`` feature.
IMAGE_COLUMN_NAMES = ("image", "img")
LABEL_COLUMN_NAMES = ("label", "labels")
DEFAULT_SPLIT = "train"
#: a label column holding larger ids is not a column of class ids.
MAX_CLASSES = 1_000_000

_GLOB_CHARS = re.compile(r"[*?\[]")
#: ``train-00000-of-00004.parquet`` (how ``datasets`` and the Hub name parquet shards) -> ``train``.
_SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z][A-Za-z0-9_]*)-\d+-of-\d+")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "hf: data needs the Hugging Face `datasets` package; install it with pip install 'cmkit[hf]'"
        ) from err
    return datasets


def _save_hint(path: str) -> str:
    name = Path(path).name or "my_dataset"
    return (
        "hf: reads only data saved on this machine and never downloads. On a machine with internet run\n"
        f"  python -c \"import datasets; datasets.load_dataset('{path}', split='train').save_to_disk('{name}')\"\n"
        f"copy the folder {name} here and pass hf:/path/to/{name} (a folder of the data set's parquet files works too)"
    )


def _choose_split(splits: list[str], split: Optional[str], where: str) -> str:
    if split is not None:
        if split not in splits:
            raise ValueError(f"{where} has no split {split!r}; its splits are {', '.join(splits)}")
        return split
    if DEFAULT_SPLIT in splits:
        return DEFAULT_SPLIT
    if len(splits) == 1:
        return splits[0]
    raise ValueError(f"{where} holds the splits {', '.join(splits)} and none is 'train'; choose one with split=NAME")


def _parquet_split(file: Path, root: Path) -> Optional[str]:
    """The split a parquet file of folder ``root`` belongs to: its ``<split>-NNNNN-of-NNNNN`` name, else its folder."""
    match = _SHARD_NAME.match(file.name)
    if match:
        return match.group("split")
    parent = file.parent.relative_to(root)
    return parent.name if parent.parts else None


def _parquet_in_folder(root: Path, split: Optional[str]) -> list[str]:
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"{root} is neither a save_to_disk folder (no dataset_info.json, state.json or dataset_dict.json) nor a "
            "folder of .parquet files; pass the folder written by Dataset.save_to_disk, or parquet files"
        )
    by_split: dict[Optional[str], list[str]] = {}
    for file in files:
        by_split.setdefault(_parquet_split(file, root), []).append(str(file))
    if len(by_split) == 1 and split is None:
        return next(iter(by_split.values()))
    named = sorted(s for s in by_split if s is not None)
    if None in by_split:
        raise ValueError(
            f"{root} mixes parquet files of the splits {', '.join(named)} with files of no split "
            f"(e.g. {by_split[None][0]}); pass a glob of the files to read, e.g. hf:{root}/train-*.parquet"
        )
    return by_split[_choose_split(named, split, str(root))]


def _open_dataset(path: str, split: Optional[str], cache_dir: Optional[str]) -> Any:
    """The ``datasets.Dataset`` at ``path`` (memory-mapped), converting parquet files into the arrow cache once."""
    local = Path(path).expanduser()
    parquet: Optional[list[str]] = None
    if _GLOB_CHARS.search(path) and not local.exists():
        parquet = sorted(glob.glob(str(local), recursive=True))
        if not parquet:
            raise FileNotFoundError(f"no files match {path}; check the pattern (e.g. /data/cifar10/train-*.parquet)")
        not_parquet = [f for f in parquet if not f.endswith(".parquet")]
        if not_parquet:
            raise ValueError(f"{path} matches files that are not .parquet (e.g. {not_parquet[0]}); narrow the pattern")
    elif not local.exists():
        raise FileNotFoundError(f"hf:{path} does not exist on this machine.\n{_save_hint(path)}")
    elif local.is_file():
        if local.suffix != ".parquet":
            raise ValueError(f"{local} is not a .parquet file; pass a save_to_disk folder or parquet files")
        parquet = [str(local)]
    if parquet is not None and split is not None:
        raise ValueError(f"split={split!r} picks files in a folder; hf:{path} names the files to read, so drop split")
    datasets = _datasets()
    if parquet is None and (local / "dataset_dict.json").exists():
        splits = json.loads((local / "dataset_dict.json").read_text()).get("splits", [])
        chosen = _choose_split(list(splits), split, str(local))
        return datasets.load_from_disk(str(local / chosen))
    if parquet is None and ((local / "state.json").exists() or (local / "dataset_info.json").exists()):
        if split is not None:
            raise ValueError(f"{local} holds one data set with no splits; drop split={split!r}")
        return datasets.load_from_disk(str(local))
    if parquet is None:
        parquet = _parquet_in_folder(local, split)
    return datasets.Dataset.from_parquet(parquet, cache_dir=cache_dir)


def _columns_listing(features: Any) -> str:
    return ", ".join(f"{name} ({type(feature).__name__})" for name, feature in features.items())


def _pick(candidates: list[str], preferred: tuple[str, ...], what: str, flag: str) -> Optional[str]:
    if len(candidates) == 1:
        return candidates[0]
    for name in preferred:
        if name in candidates:
            return name
    if candidates:
        raise ValueError(f"several columns could be the {what}: {', '.join(candidates)}; choose one with {flag}=NAME")
    return None


def _image_column(features: Any, image_column: Optional[str], where: str) -> str:
    datasets = _datasets()
    if image_column is not None:
        if image_column not in features:
            raise ValueError(f"{where} has no column {image_column!r}; its columns are {_columns_listing(features)}")
        return image_column
    typed = [name for name, f in features.items() if isinstance(f, datasets.Image)]
    named = [name for name in IMAGE_COLUMN_NAMES if name in features]
    found = _pick(typed, IMAGE_COLUMN_NAMES, "image", "image_column") or (named[0] if named else None)
    if found is None:
        raise ValueError(
            f"{where} has no image column (an Image feature, or a column named {' or '.join(IMAGE_COLUMN_NAMES)}); its "
            f"columns are {_columns_listing(features)}; name it with image_column=NAME"
        )
    return found


def _is_integer(feature: Any) -> bool:
    datasets = _datasets()
    return isinstance(feature, datasets.Value) and re.fullmatch(r"u?int(8|16|32|64)", feature.dtype) is not None


def _label_column(
    features: Any, label_column: Optional[str], class_labels: Optional[bool], where: str
) -> Optional[str]:
    datasets = _datasets()
    if class_labels is False:
        return None
    if label_column is not None:
        if label_column not in features:
            raise ValueError(f"{where} has no column {label_column!r}; its columns are {_columns_listing(features)}")
        found: Optional[str] = label_column
    else:
        typed = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
        named = [name for name in LABEL_COLUMN_NAMES if name in features and _is_integer(features[name])]
        found = _pick(typed, LABEL_COLUMN_NAMES, "class label", "label_column") or (named[0] if named else None)
    if found is None:
        if class_labels:
            raise ValueError(
                f"class labels were requested but {where} has no label column (a ClassLabel feature, or an integer "
                f"column named {' or '.join(LABEL_COLUMN_NAMES)}); its columns are {_columns_listing(features)}; "
                "name it with label_column=NAME, or train unconditionally"
            )
        return None
    feature = features[found]
    if not (isinstance(feature, datasets.ClassLabel) or _is_integer(feature)):
        raise ValueError(
            f"label column {found!r} of {where} holds {feature!r}, not class ids; pick an integer or ClassLabel column "
            "with label_column=NAME, or train unconditionally"
        )
    return found


def _class_names(dataset: Any, column: str, where: str) -> list[str]:
    """The ClassLabel names, or ``"0" ... "K-1"`` for an integer column whose largest id is ``K - 1``."""
    import pyarrow.compute as pc

    feature = dataset.features[column]
    if isinstance(feature, _datasets().ClassLabel):
        return list(feature.names)
    largest = pc.max(dataset.with_format("arrow", columns=[column])[:].column(column)).as_py()
    if largest is None or largest < 0:
        raise ValueError(f"label column {column!r} of {where} holds no class id; train unconditionally instead")
    if largest >= MAX_CLASSES:
        raise ValueError(
            f"label column {column!r} of {where} holds ids up to {largest:,}, not class ids 0..K-1; map the labels "
            "to 0..K-1 first, or name another column with label_column=NAME"
        )
    return [str(c) for c in range(largest + 1)]


class HFImageRecords:
    """The images (and class ids) of a locally saved Hugging Face data set, read one record at a time.

    Implements ``ImageRecords``: ``class_names``, ``len()``, ``read(index) -> (PIL image, class id or None)``.
    ``class_labels`` is ``None`` (use a label column when there is one), ``False`` (ignore labels) or ``True``
    (require one).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        *,
        class_labels: Optional[bool] = None,
        split: Optional[str] = None,
        cache_dir: Optional[str | os.PathLike] = None,
    ) -> None:
        self.path = os.fspath(path)
        if not self.path:
            raise ValueError("hf data needs a path (e.g. hf:/data/cifar10, written by Dataset.save_to_disk)")
        if label_column is not None and class_labels is False:
            raise ValueError(f"label_column={label_column!r} names labels but class labels are off; drop one of them")
        dataset = _open_dataset(self.path, split, None if cache_dir is None else os.fspath(cache_dir))
        where = f"hf:{self.path}"
        self.image_column = _image_column(dataset.features, image_column, where)
        self.label_column = _label_column(dataset.features, label_column, class_labels, where)
        if self.label_column == self.image_column:
            raise ValueError(f"column {self.image_column!r} cannot be both the image and the label; name another")
        self.class_names = _class_names(dataset, self.label_column, where) if self.label_column else []
        self._length = len(dataset)
        if self._length == 0:
            raise ValueError(f"{where} holds no records; point hf: at a data set with images")
        self._arrow_files = [entry["filename"] for entry in dataset.cache_files]
        if not self._arrow_files:
            raise ValueError(f"{where} is held in memory, not in arrow files; save it with save_to_disk first")
        self._rows: Any = self._columns(dataset)

    def _columns(self, dataset: Any) -> Any:
        columns = [self.image_column] + ([self.label_column] if self.label_column else [])
        return dataset.with_format("arrow", columns=columns)

    def _reopen(self) -> Any:
        datasets = _datasets()
        parts = [datasets.Dataset.from_file(name) for name in self._arrow_files]
        dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        if len(dataset) != self._length:
            raise RuntimeError(
                f"hf:{self.path} changed while in use ({self._length} records, now {len(dataset)}); restart the run"
            )
        return self._columns(dataset)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_rows"] = None  # re-opened (memory-mapped again) by each worker on its first read
        return state

    def __len__(self) -> int:
        return self._length

    def read(self, index: int) -> tuple[Image.Image, Optional[int]]:
        """Record ``index``: its decoded image and class id (``None`` if unlabelled); a bad record raises ValueError."""
        index = require_int("index", index, 0, allow_float=False)
        if index >= self._length:
            raise IndexError(f"record {index} is out of range: hf:{self.path} holds {self._length}")
        if self._rows is None:
            self._rows = self._reopen()
        row = self._rows[index]
        image = self._decode(row.column(self.image_column)[0].as_py(), index)
        if not self.label_column:
            return image, None
        label = row.column(self.label_column)[0].as_py()
        if label is None or label < 0:
            return image, None
        if label >= len(self.class_names):
            raise ValueError(
                f"record {index} of hf:{self.path} has label {label}, beyond its {len(self.class_names)} classes"
            )
        return image, int(label)

    def _decode(self, value: Any, index: int) -> Image.Image:
        where = f"record {index} of hf:{self.path}"
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, str):
            if "://" in value:
                raise ValueError(f"{where} points to {value}; hf: never downloads, embed the images in the data set")
            if not os.path.isfile(value):
                raise ValueError(
                    f"{where} names the image file {value}, which does not exist; keep the files there, or save the "
                    "data set again with a recent `datasets` (save_to_disk embeds the image bytes)"
                )
            with open(value, "rb") as fh:
                value = fh.read()
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"{where}: column {self.image_column!r} holds {type(value).__name__}, not an image")
        try:
            image = Image.open(io.BytesIO(value))
            image.load()
        except Exception as err:  # noqa: BLE001 - any decoding failure is a bad record, for the caller to count
            raise ValueError(f"{where}: the image cannot be decoded ({type(err).__name__}: {err})") from err
        return image


def build_hf_records(
    path: str | os.PathLike,
    *,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    class_labels: Optional[bool] = None,
    split: Optional[str] = None,
    cache_dir: Optional[str | os.PathLike] = None,
) -> HFImageRecords:
    """The records of ``hf:PATH`` (what ``build_dataset`` wraps in an ``IndexedImageSource``)."""
    return HFImageRecords(path, image_column, label_column, class_labels=class_labels, split=split, cache_dir=cache_dir)
