"""Data sets: the embedded 8x8 digits, 2-D toy distributions, and a user's images (a folder, an EDM zip archive,
data made by ``cmkit data prepare``, a Hugging Face data set saved locally, webdataset shards), streamed from disk."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from .source import DataSource, SamplerSource, TensorSource

if TYPE_CHECKING:
    from .indexed import ImageRecords

DataKind = Literal["digits", "toy", "folder", "zip", "prepared", "hf", "wds"]
#: the kinds read from files at a path (``KIND:PATH``).
PATH_KINDS = ("folder", "zip", "prepared", "hf", "wds")


def open_records(
    kind: str, path: str, class_labels: Optional[bool] = None, **hf_options: Optional[str]
) -> "ImageRecords":
    """The image records at ``path`` (decoded on demand): a ``folder``, an EDM ``zip`` archive, a Hugging Face
    data set saved locally (``hf``: a ``save_to_disk`` folder or parquet files; ``hf_options``: ``image_column``,
    ``label_column``, ``split``) or webdataset tar shards (``wds``)."""
    if kind != "hf" and any(v is not None for v in hf_options.values()):
        raise ValueError(f"{', '.join(sorted(hf_options))} apply to hf: data only, not {kind}:")
    if kind == "folder":
        from .folder import FolderRecords

        return FolderRecords(path, class_labels)
    if kind == "zip":
        from .ziparchive import ZipRecords

        return ZipRecords(path, class_labels)
    if kind == "hf":
        from .hf import build_hf_records

        return build_hf_records(path, class_labels=class_labels, **hf_options)
    if kind == "wds":
        from .wds import build_wds_records

        return build_wds_records(path, class_labels=class_labels)
    raise ValueError(f"{kind!r} data are not image records; use folder:PATH, zip:PATH, hf:PATH or wds:PATTERN")


def build_dataset(
    kind: DataKind,
    *,
    toy: Optional[str] = None,
    path: Optional[str] = None,
    resolution: Optional[int] = None,
    resize: Literal["crop", "stretch", "none"] = "crop",
    flip: bool = False,
    channels: Optional[Literal[1, 3]] = None,
    class_labels: Optional[bool] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    split: Optional[str] = None,
) -> DataSource:
    """A training :class:`DataSource`: ``digits`` (8x8, upsampled to ``resolution``), a 2-D ``toy``, or images read
    from ``path`` as they are needed: a ``folder``, an EDM ``zip`` archive, or ``prepared`` data.

    ``channels`` (1 or 3) applies to images (default 3); the digits are grayscale and the toys are points.
    """
    if kind == "digits":
        from ..limits import require_memory
        from .digits import NUM_CLASSES, NUM_IMAGES, load_digits

        if channels not in (None, 1):
            raise ValueError(f"the digits are grayscale (1 channel); drop channels={channels}")

        if resolution is not None:
            require_memory(2 * 4 * NUM_IMAGES * resolution**2, f"the digits at resolution {resolution}",
                           "use a smaller resolution (a multiple of 8, e.g. 32)")
        x, y = load_digits("train", resolution or 8)
        labels = None if class_labels is False else y
        names = [str(c) for c in range(NUM_CLASSES)] if labels is not None else []
        return TensorSource(x, labels, flip=flip, class_names=names)
    if kind == "toy":
        from .toys import TOY_NAMES, sample_toy

        if toy not in TOY_NAMES:
            raise ValueError(f"unknown toy data set {toy!r}; choose one of {', '.join(TOY_NAMES)}")
        if flip or class_labels or resolution is not None or channels is not None:
            raise ValueError("toy data are unlabelled 2-D points: resolution, channels, flip and class labels do not apply")
        return SamplerSource(lambda n, g: sample_toy(toy, n, generator=g), sample_shape=(2,))
    if kind in PATH_KINDS:
        if not path:
            raise ValueError(f"{kind} data needs a path (e.g. {kind}:/data/images)")
        if kind == "prepared":
            from .prepared import PreparedSource

            return PreparedSource(path, flip=flip, class_labels=class_labels, resolution=resolution, channels=channels)
        from .indexed import IndexedImageSource

        hf_options = {"image_column": image_column, "label_column": label_column, "split": split} if kind == "hf" else {}
        records = open_records(kind, path, class_labels, **hf_options)
        return IndexedImageSource(records, resolution, resize, channels or 3, flip, class_labels, name=f"{kind}:{path}")
    raise ValueError(f"data kind must be 'digits', 'toy', 'folder', 'zip', 'prepared', 'hf' or 'wds', got {kind!r}")
