"""Image records from a zip archive in the format of EDM's ``dataset_tool.py`` (Karras et al. 2022, NVlabs/edm).

Format facts (from EDM's ``dataset_tool.py`` and ``training/dataset.py``): the archive holds the images
(``dataset_tool.py`` writes uncompressed PNGs named ``00000/img00000000.png``; any image file counts) and an
optional ``dataset.json`` at its root, ``{"labels": [[file name, class id], ...]}`` or ``{"labels": null}``. The
images are the archive's image files in sorted name order; a label is looked up by the file name with ``\\``
written as ``/``. EDM also allows label vectors (rows of floats); cmkit trains on class ids only.

The archive's directory is read once with :mod:`zipfile` and kept as NumPy arrays (name, offset, sizes,
compression, CRC per member); each process then opens the file itself and reads a member by its offset, so
loader workers neither share a file position nor hold a ``ZipInfo`` object per image.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

import numpy as np

from .folder import UnreadableImageError, is_image_name

if TYPE_CHECKING:
    from PIL import Image

#: the labels file of EDM's dataset format.
LABELS_FILE = "dataset.json"
#: largest uncompressed image member read (a damaged or hostile directory may claim any size).
MAX_MEMBER_BYTES = 1 << 30
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
_STORED, _DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED


class ZipRecords:
    """The images of an EDM-style zip archive as random-access records (:class:`~cmkit.data.indexed.ImageRecords`).

    ``class_labels``: None uses the labels of ``dataset.json`` when it has any, False ignores them, True
    requires them. Class ``k`` is named ``"k"``.
    """

    def __init__(self, path: str | os.PathLike, class_labels: Optional[bool] = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"zip archive {self.path} does not exist (pass the .zip file dataset_tool.py wrote)")
        try:
            with zipfile.ZipFile(self.path) as zf:
                infos = sorted((i for i in zf.infolist() if not i.is_dir() and is_image_name(os.path.basename(i.filename))),
                               key=lambda i: i.filename)
                raw_labels = _read_labels(zf, self.path) if class_labels is not False else None
        except zipfile.BadZipFile as err:
            raise ValueError(f"{self.path} is not a readable zip archive ({err}); pass an archive made by EDM's "
                             "dataset_tool.py or a zip of images") from err
        if not infos:
            raise ValueError(f"no images found in {self.path}; pass an archive of images (e.g. made by EDM's dataset_tool.py)")
        self.names = np.array([i.filename.encode("utf-8") for i in infos], dtype=np.bytes_)
        self.offsets = np.array([i.header_offset for i in infos], dtype=np.int64)
        self.sizes = np.array([[i.compress_size, i.file_size] for i in infos], dtype=np.int64)
        self.methods = np.array([i.compress_type | (i.flag_bits & 1) << 16 for i in infos], dtype=np.int64)
        self.crcs = np.array([i.CRC for i in infos], dtype=np.uint32)
        del infos
        self.labels: Optional[np.ndarray] = None
        self.class_names: list[str] = []
        if raw_labels is not None:
            self.labels = _labels_for(self.names, raw_labels, self.path)
            self.class_names = [str(k) for k in range(int(self.labels.max()) + 1)]
        elif class_labels:
            raise ValueError(f"class labels were requested but {self.path} has no {LABELS_FILE} with labels")
        self._file: Optional[BinaryIO] = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ZipRecords({str(self.path)!r}, {len(self)} images)"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": -1}  # each process opens the archive itself

    def name(self, index: int) -> str:
        """The member name of record ``index``."""
        return self.names[index].decode("utf-8")

    def _handle(self) -> BinaryIO:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open(self.path, "rb"), os.getpid()  # noqa: SIM115 - kept open for the process
        return self._file

    def _member_bytes(self, index: int) -> bytes:
        method = int(self.methods[index])
        if method >> 16:
            raise ValueError("the member is encrypted; cmkit reads unencrypted archives")
        compressed_size, size = (int(v) for v in self.sizes[index])
        if size > MAX_MEMBER_BYTES:
            raise ValueError(f"the member claims {size:,} bytes; an image member over {MAX_MEMBER_BYTES:,} is refused")
        fh = self._handle()
        fh.seek(int(self.offsets[index]))
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
        if signature != b"PK\x03\x04":
            raise ValueError("the member's local header is damaged")
        fh.seek(name_len + extra_len, os.SEEK_CUR)
        data = fh.read(compressed_size)
        if len(data) != compressed_size:
            raise ValueError("the archive is truncated")
        if method == _DEFLATED:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, size)
        elif method != _STORED:
            raise ValueError(f"compression method {method} is not supported; repack the archive stored or deflated")
        if len(data) != size or zlib.crc32(data) != int(self.crcs[index]):
            raise ValueError("the member's CRC or size does not match: the archive is damaged")
        return data

    def read(self, index: int) -> tuple["Image.Image", Optional[int]]:
        """The decoded image of record ``index`` and its class id; :class:`UnreadableImageError` naming a bad member."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self._member_bytes(index))) as img:
                img.load()
        except Exception as err:  # noqa: BLE001 - any failure means "unreadable"
            raise UnreadableImageError(f"cannot read {self.name(index)} in {self.path} ({type(err).__name__}: {err})") from err
        return img, (int(self.labels[index]) if self.labels is not None else None)


def _read_labels(zf: zipfile.ZipFile, path: Path) -> Optional[list]:
    """The ``labels`` list of ``dataset.json`` (None when the file is absent or says null)."""
    try:
        info = zf.getinfo(LABELS_FILE)
    except KeyError:
        return None
    if info.file_size > 1 << 30:
        raise ValueError(f"{path}: {LABELS_FILE} claims {info.file_size:,} bytes; it is not a dataset_tool.py label file")
    try:
        labels = json.loads(zf.read(info))["labels"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: {LABELS_FILE} is not {{\"labels\": [[file name, class id], ...]}} ({err})") from err
    if labels is not None and not isinstance(labels, list):
        raise ValueError(f"{path}: {LABELS_FILE} 'labels' must be a list of [file name, class id] pairs or null")
    return labels


def _labels_for(names: np.ndarray, pairs: list, path: Path) -> np.ndarray:
    """The class id of each image name from ``[[name, id], ...]`` (names with ``\\`` matched as ``/``)."""
    by_name: dict[str, int] = {}
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError(f"{path}: {LABELS_FILE} holds {pair!r}; each label must be [file name, class id]")
        name, label = pair
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise ValueError(
                f"{path}: the label of {name} is {label!r}; cmkit trains on class ids (integers >= 0), not label "
                "vectors: train without class labels, or relabel the archive"
            )
        by_name[name.replace("\\", "/")] = label
    out = np.empty(len(names), dtype=np.int64)
    for k, raw in enumerate(names):
        name = raw.decode("utf-8").replace("\\", "/")
        if name not in by_name:
            raise ValueError(f"{path}: {LABELS_FILE} has no label for {name}; label every image, or train without labels")
        out[k] = by_name[name]
    return out
