"""A user's folder of images as training data, decoded once into a uint8 tensor at a fixed resolution.

Layout: either images directly in ``root`` (unconditional), or one sub-folder per class
(``root/<class name>/**/<image>``); class ids are the sorted sub-folder names, 0, 1, 2, ...
Files whose extension is not an image extension are ignored; image files that cannot be decoded are
skipped and counted in one warning, so a bad file never stops a run midway. Pixels are decoded by
:func:`cmkit.io.images.pil_to_unit` (16-bit images scaled by 65535, transparency composited over black; one
warning counts the images where such a choice was made) and stored as 8-bit.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor

#: file extensions treated as images (case-insensitive).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

#: ``crop``: scale the shorter side to ``resolution`` then centre-crop a square; ``stretch``: scale both sides to
#: ``resolution`` (aspect ratio changes); ``none``: keep the pixels as they are (all images must share one size).
ResizeMode = Literal["crop", "stretch", "none"]
Channels = Literal[1, 3]


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


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_under(directory: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / name for name in sorted(filenames))
    return [p for p in found if _is_image(p)]


def scan_image_folder(root: str | os.PathLike, class_labels: Optional[bool] = None) -> tuple[list[Path], Optional[list[int]], list[str]]:
    """List the image files of ``root`` with their class ids (sub-folder per class) and the sorted class names.

    ``class_labels=None`` uses sub-folders as classes when there are any, ``False`` ignores them (all images,
    unconditional), ``True`` requires them.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; pass the folder that holds the images")
    top = sorted(p for p in root.iterdir() if _is_image(p))
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_dirs = [(d, _images_under(d)) for d in subdirs]
    class_dirs = [(d, files) for d, files in class_dirs if files]
    if not top and not class_dirs:
        raise ValueError(
            f"no images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files, directly or in "
            "class sub-folders); point the data at a folder of images"
        )
    use_classes = bool(class_dirs) if class_labels is None else class_labels
    if not use_classes:
        return _images_under(root), None, []
    if not class_dirs:
        raise ValueError(f"class labels were requested but {root} has no sub-folders with images (one per class)")
    if top:
        raise ValueError(
            f"{root} mixes {len(top)} images at the top level (e.g. {top[0].name}) with class sub-folders; move them "
            "into a class sub-folder, or train unconditionally (class labels off)"
        )
    files, labels = [], []
    for class_id, (_, class_files) in enumerate(class_dirs):
        files.extend(class_files)
        labels.extend([class_id] * len(class_files))
    return files, labels, [d.name for d, _ in class_dirs]


def _decode(path: Path, channels: Channels):
    """The image at ``path`` as an 8-bit PIL image with ``channels`` channels, and the decoder's notes."""
    from PIL import Image, ImageOps

    from ..io.images import pil_to_unit, unit_to_uint8

    with Image.open(path) as img:
        decoded = pil_to_unit(ImageOps.exif_transpose(img))
    pixels = unit_to_uint8(decoded.pixels)
    image = Image.fromarray(pixels[..., 0], mode="L") if decoded.channels == 1 else Image.fromarray(pixels, mode="RGB")
    return image.convert("RGB" if channels == 3 else "L"), decoded.notes


def _resize(img, resolution: int, resize: ResizeMode):
    from PIL import Image

    if resize == "stretch":
        return img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def load_image_folder(
    root: str | os.PathLike,
    resolution: Optional[int] = None,
    resize: ResizeMode = "crop",
    channels: Channels = 3,
    class_labels: Optional[bool] = None,
) -> ImageFolder:
    """Decode every image under ``root`` to ``channels`` x ``resolution`` x ``resolution`` uint8 pixels.

    Unreadable image files are skipped with one warning that counts them; it is an error when none can be read,
    when ``resize`` is ``"none"`` and the sizes differ (or differ from ``resolution``), or when a resize is asked
    for without a ``resolution``.
    """
    if resize not in ("crop", "stretch", "none"):
        raise ValueError(f"resize must be 'crop', 'stretch' or 'none', got {resize!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if resize != "none" and resolution is None:
        raise ValueError(f"resize={resize!r} needs a resolution; pass one (e.g. 32), or resize='none' to keep sizes")
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    files, labels, class_names = scan_image_folder(root, class_labels)
    if resolution is not None:
        from ..limits import require_memory

        require_memory(len(files) * channels * resolution**2, f"{len(files):,} images at resolution {resolution}",
                       "use a smaller resolution, or fewer images")
    arrays: list[np.ndarray] = []
    kept_labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    noted: dict[str, list[str]] = {}  # decoder note -> the files it applies to
    for i, path in enumerate(files):
        try:
            img, notes = _decode(path, channels)
        except Exception as err:  # noqa: BLE001 - any decoding failure means "unreadable", never a crash
            skipped.append((str(path), f"{type(err).__name__}: {err}"))
            continue
        for note in notes:
            noted.setdefault(note, []).append(str(path))
        if resize != "none":
            img = _resize(img, int(resolution), resize)
        arr = np.asarray(img, dtype=np.uint8)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        if labels is not None:
            kept_labels.append(labels[i])
    if skipped:
        first_path, first_reason = skipped[0]
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) of {len(files)} in {root} "
            f"(first: {first_path}: {first_reason})",
            stacklevel=2,
        )
    for note, paths in noted.items():
        warnings.warn(f"{len(paths)} image(s) in {root} (first: {paths[0]}): each {note}", stacklevel=2)
    if not arrays:
        raise ValueError(f"none of the {len(files)} image files in {root} could be read ({skipped[0][1]})")
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
    label_tensor = torch.tensor(kept_labels, dtype=torch.long) if labels is not None else None
    return ImageFolder(images=images, labels=label_tensor, class_names=class_names, skipped=skipped)
