"""Atomic writes: a crash keeps the old file; normal permissions."""

import pytest
from cmkit.io.atomic import atomic_path, atomic_write_text


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_uses_normal_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        target = tmp_path / "g.txt"
        atomic_write_text(target, "x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    finally:
        os.umask(umask)
