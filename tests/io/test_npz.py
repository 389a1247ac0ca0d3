"""Streaming .npz reads: headers without data, rows in chunks equal to numpy.load, refusals."""

import numpy as np
import pytest
from cmkit.io.npz import iter_npz_rows, npz_headers


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_rows_stream_equals_numpy_load(tmp_path, save):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 4, 5, 3), dtype=np.uint8)
    path = tmp_path / "set.npz"
    save(path, arr_0=images, mu=np.zeros(3))
    headers = npz_headers(path)
    assert headers["arr_0"].shape == (7, 4, 5, 3) and headers["arr_0"].dtype == np.uint8
    assert headers["mu"].shape == (3,) and headers["arr_0"].nbytes == images.nbytes
    chunks = list(iter_npz_rows(path, "arr_0", 3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), images)


def test_npz_refuses_what_it_cannot_stream(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, a=np.asfortranarray(np.zeros((3, 4))))
    with pytest.raises(ValueError, match="C-ordered"):
        next(iter_npz_rows(path, "a", 2))
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz"):
        npz_headers(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        npz_headers(tmp_path / "missing.npz")
