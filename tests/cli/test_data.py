"""``cmkit data prepare``: a folder or an EDM archive prepared once gives the batches of the original."""

import json

import torch

from builders import edm_archive, write_image_folder
from cmkit.cli import main
from cmkit.data import build_dataset


def same_batches(a, b, steps=3, batch=4):
    return all(all(torch.equal(u, v) for u, v in zip(a.batch(1, k, batch), b.batch(1, k, batch))) for k in range(steps))


def test_prepare_a_folder_and_an_archive(tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs")
    assert main(["data", "prepare", str(root), str(tmp_path / "p"), "--resolution", "8", "--workers", "0", "--no-progress"]) == 0
    assert "prepared 10 images (3x8x8, 0.0 MiB, 2 classes)" in capsys.readouterr().out
    folder = build_dataset("folder", path=str(root), resolution=8, flip=True)
    assert same_batches(build_dataset("prepared", path=str(tmp_path / "p"), flip=True), folder)

    edm_archive(tmp_path / "d.zip", size=12)
    (tmp_path / "imgs" / "a" / "zz.png").write_bytes(b"broken")
    assert main(["data", "prepare", f"zip:{tmp_path / 'd.zip'}", str(tmp_path / "z"), "--resolution", "8",
                 "--channels", "1", "--resize", "stretch", "--no-progress"]) == 0
    zipped = build_dataset("zip", path=str(tmp_path / "d.zip"), resolution=8, channels=1, resize="stretch")
    assert same_batches(build_dataset("prepared", path=str(tmp_path / "z")), zipped)
    assert json.loads((tmp_path / "z" / "manifest.json").read_text())["source"] == f"zip:{tmp_path / 'd.zip'}"
    capsys.readouterr()
    assert main(["data", "prepare", str(root), str(tmp_path / "q"), "--resolution", "8", "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image(s) (first: cannot read" in out and "zz.png" in out
    assert main(["data", "prepare", str(root), str(tmp_path / "q"), "--resolution", "8", "--no-progress"]) == 1
    assert "already exists; remove it or choose another output directory" in capsys.readouterr().err
