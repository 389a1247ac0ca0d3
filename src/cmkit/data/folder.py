"""A user's folder of images: the file index, its records for streaming, and an in-memory reader.

Layout: either images directly in ``root`` (unconditional), or one sub-folder per class
(``root/<class name>/**/<image>``); class ids are the sorted sub-folder names, 0, 1, 2, ...
Files whose extension is not an image extension are ignored, as are hidden files and folders. The index is
built with ``os.scandir`` (no ``stat`` per file) and kept as NumPy arrays of relative paths and class ids, so
a 1.28M-file folder costs a few tens of MB in every process, which loader workers share without copying.

:class:`FolderRecords` reads one file per call (:class:`~cmkit.data.indexed.ImageRecords`), for the streaming
``folder:`` data; :func:`load_image_folder` decodes the whole folder into one uint8 tensor (small data, tests).
Pixels are decoded by :mod:`cmkit.data.pixels` in both.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from torch import Tensor

from .pixels import Channels, ResizeMode, check_options, image_pixels

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "FolderRecords", "ImageFolder", "ResizeMode", "load_image_folder", "scan_image_folder"]

#: file extensions treated as images (case-insensitive).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension and is not hidden."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _entries(directory: str) -> tuple[list[str], list[str]]:
    """The sorted image file names and the sorted visible sub-folders (symbolic links to folders included)."""
    files, dirs = [], []
    with os.scandir(directory) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif is_image_name(entry.name) and entry.is_file():
                files.append(entry.name)
    return sorted(files), sorted(dirs)


def _images_under(root: str, prefix: str = "") -> list[np.ndarray]:
    """Paths (relative to ``root``, as bytes arrays) of the images under ``root/prefix``: the folder's own files
    first, then each sub-folder in sorted order (linked sub-folders below the top are not followed)."""
    directory = os.path.join(root, prefix) if prefix else root
    files, dirs = _entries(directory)
    found = [np.array([os.fsencode(os.path.join(prefix, f)) for f in files], dtype=np.bytes_)] if files else []
    for d in dirs:
        if not os.path.islink(os.path.join(directory, d)):
            found.extend(_images_under(root, os.path.join(prefix, d)))
    return found


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype="S1")


def scan_image_folder(
    root: str | os.PathLike, class_labels: Optional[bool] = None
) -> tuple[np.ndarray, Optional[np.ndarray], list[str]]:
    """The image files of ``root`` (relative paths as a NumPy bytes array), their class ids (int64 array, one
    sub-folder per class) and the sorted class names.

    ``class_labels=None`` uses sub-folders as classes when there are any, ``False`` ignores them (all images,
    unconditional), ``True`` requires them.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; pass the folder that holds the images")
    top, subdirs = _entries(str(root))
    class_files = [(d, _concat(_images_under(str(root), d))) for d in subdirs]
    class_files = [(d, files) for d, files in class_files if len(files)]
    if not top and not class_files:
        raise ValueError(
            f"no images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files, directly or in "
            "class sub-folders); point the data at a folder of images"
        )
    use_classes = bool(class_files) if class_labels is None else class_labels
    if not use_classes:
        top_files = [np.array([os.fsencode(f) for f in top], dtype=np.bytes_)] if top else []
        return _concat(top_files + [files for _, files in class_files]), None, []
    if not class_files:
        raise ValueError(f"class labels were requested but {root} has no sub-folders with images (one per class)")
    if top:
        raise ValueError(
            f"{root} mixes {len(top)} images at the top level (e.g. {top[0]}) with class sub-folders; move them "
            "into a class sub-folder, or train unconditionally (class labels off)"
        )
    labels = np.concatenate([np.full(len(files), i, dtype=np.int64) for i, (_, files) in enumerate(class_files)])
    return _concat([files for _, files in class_files]), labels, [d for d, _ in class_files]


class UnreadableImageError(OSError):
    """An image file that cannot be decoded (the message names the file)."""


class FolderRecords:
    """The images of a folder as random-access records (:class:`~cmkit.data.indexed.ImageRecords`)."""

    def __init__(self, root: str | os.PathLike, class_labels: Optional[bool] = None) -> None:
        self.root = Path(root).expanduser()
        self.files, self.labels, self.class_names = scan_image_folder(self.root, class_labels)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"FolderRecords({str(self.root)!r}, {len(self)} images)"

    def path(self, index: int) -> Path:
        """The file of record ``index``."""
        return self.root / os.fsdecode(self.files[index])

    def read(self, index: int) -> tuple["Image.Image", Optional[int]]:
        """The decoded image of record ``index`` and its class id; :class:`UnreadableImageError` naming a bad file."""
        from PIL import Image

        path = self.path(index)
        try:
            with Image.open(path) as img:
                img.load()
        except Exception as err:  # noqa: BLE001 - any decoding failure means "unreadable"
            raise UnreadableImageError(f"cannot read {path} ({type(err).__name__}: {err})") from err
        return img, (int(self.labels[index]) if self.labels is not None else None)


@dataclass
class ImageFolder:
    """Decoded images (uint8, ``[N, C, H, W]``), optional class ids, class names and the skipped files."""

    images: Tensor
    labels: Optional[Tensor]
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when the folder has no class sub-folders)."""
        return len(self.class_names)


def load_image_folder(
    root: str | os.PathLike,
    resolution: Optional[int] = None,
    resize: ResizeMode = "crop",
    channels: Channels = 3,
    class_labels: Optional[bool] = None,
) -> ImageFolder:
    """Decode every image under ``root`` into memory as ``channels`` x ``resolution`` x ``resolution`` uint8 pixels.

    Unreadable image files are skipped with one warning that counts them; it is an error when none can be read,
    when ``resize`` is ``"none"`` and the sizes differ (or differ from ``resolution``), or when a resize is asked
    for without a ``resolution``. Training streams folders instead (:class:`~cmkit.data.indexed.IndexedImageSource`).
    """
    check_options(resolution, resize, channels)
    records = FolderRecords(root, class_labels)
    if resolution is not None:
        from ..limits import require_memory

        require_memory(len(records) * channels * resolution**2, f"{len(records):,} images at resolution {resolution}",
                       "use a smaller resolution, or fewer images")
    arrays: list[np.ndarray] = []
    kept_labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    noted: dict[str, list[str]] = {}  # decoder note -> the files it applies to
    for i in range(len(records)):
        try:
            img, label = records.read(i)
            arr, notes = image_pixels(img, channels, None if resize == "none" else resolution, resize)
        except Exception as err:  # noqa: BLE001 - any decoding failure means "unreadable", never a crash
            skipped.append((str(records.path(i)), str(err)))
            continue
        for note in notes:
            noted.setdefault(note, []).append(str(records.path(i)))
        arrays.append(arr)
        if label is not None:
            kept_labels.append(label)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) of {len(records)} in {root} (first: {skipped[0][1]})",
            stacklevel=2,
        )
    for note, paths in noted.items():
        warnings.warn(f"{len(paths)} image(s) in {root} (first: {paths[0]}): each {note}", stacklevel=2)
    if not arrays:
        raise ValueError(f"none of the {len(records)} image files in {root} could be read ({skipped[0][1]})")
    sizes = sorted({a.shape[1:] for a in arrays})
    if len(sizes) > 1:
        raise ValueError(
            f"images in {root} have different sizes ({', '.join(f'{h}x{w}' for h, w in sizes[:4])}"
            f"{', ...' if len(sizes) > 4 else ''}); pass a resolution with resize='crop' or 'stretch'"
        )
    if resize == "none" and resolution is not None and sizes[0] != (resolution, resolution):
        h, w = sizes[0]
        raise ValueError(
            f"images in {root} are {h}x{w}, not {resolution}x{resolution}; pass resize='crop' or 'stretch' to resize them"
        )
    images = torch.from_numpy(np.stack(arrays))
    label_tensor = torch.tensor(kept_labels, dtype=torch.long) if records.labels is not None else None
    return ImageFolder(images=images, labels=label_tensor, class_names=records.class_names, skipped=skipped)
