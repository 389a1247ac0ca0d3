"""FID statistics: streamed moments equal the batch formula, files round trip (cmkit, EDM, torch-fidelity), safe
loading, and reference statistics from a folder or an .npz of images."""

import numpy as np
import pytest
import torch
from cmkit.metrics.fid_stats import (
    FeatureMoments,
    FidStats,
    check_compatible,
    is_stats_file,
    load_stats,
    reference_stats,
    save_stats,
    stats_of_images,
)
from cmkit.metrics.frechet import feature_statistics
from builders import fake_extractor, fake_feature_extractor  # noqa: F401 - fake_extractor is a fixture


def test_streamed_moments_equal_the_statistics_of_all_features():
    features = torch.randn(103, 6, generator=torch.Generator().manual_seed(0)) * 3 + 5
    moments = FeatureMoments()
    for chunk in features.split(10):
        moments.add(chunk)
    stats = moments.stats("fake")
    mu, sigma = feature_statistics(features)
    np.testing.assert_allclose(stats.mu, mu.numpy(), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, sigma.numpy(), rtol=1e-10, atol=1e-12)
    assert stats.num_images == 103 and stats.extractor == "fake"
    with pytest.raises(ValueError, match="changed dimension"):
        moments.add(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at least 2 images"):
        FeatureMoments().stats()


def test_stats_round_trip_and_foreign_formats(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    stats = FidStats(rng.normal(size=5), a @ a.T, 1234, "fake")
    path = save_stats(tmp_path / "ref.npz", stats)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz"]  # no temporary file left behind
    back = load_stats(path)
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert (back.num_images, back.extractor) == (1234, "fake")
    # EDM's fid-refs (and clean-fid's) hold only mu and sigma: Inception statistics, count unknown
    np.savez(tmp_path / "edm.npz", mu=stats.mu.astype(np.float32), sigma=stats.sigma)
    edm = load_stats(tmp_path / "edm.npz")
    assert edm.extractor == "inception-v3" and edm.num_images is None and edm.mu.dtype == np.float64
    # torch-fidelity caches a pickled dict of NumPy arrays
    torch.save({"mu": stats.mu, "sigma": stats.sigma}, tmp_path / "tf.pt")
    np.testing.assert_array_equal(load_stats(tmp_path / "tf.pt").sigma, stats.sigma)
    assert is_stats_file(tmp_path / "tf.pt") and is_stats_file(path)
    with pytest.raises(ValueError, match=r"\.npz"):
        save_stats(tmp_path / "ref.json", stats)
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    assert not is_stats_file(tmp_path / "images.npz")
    with pytest.raises(ValueError, match="no FID statistics"):
        load_stats(tmp_path / "images.npz")
    with pytest.raises(ValueError, match=r"mu \[D\] and sigma \[D, D\]"):
        FidStats(np.zeros(3), np.zeros((3, 2)))


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_torch_stats_file_that_would_run_code_is_refused(tmp_path, capsys):
    torch.save({"mu": np.zeros(2), "sigma": np.eye(2), "x": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="torch-fidelity statistics"):
        load_stats(tmp_path / "evil.pt")
    assert "must never run" not in capsys.readouterr().out


def test_reference_statistics_from_a_folder_and_from_an_npz(tmp_path, fake_extractor):
    from PIL import Image

    images = np.random.default_rng(2).integers(0, 256, size=(9, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "data").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "data" / f"{i}.png")
    np.savez(tmp_path / "data.npz", images=images)
    extractor = fake_feature_extractor(None, "cpu")
    direct = stats_of_images([torch.from_numpy(images).permute(0, 3, 1, 2)], extractor, "fake")
    saved = tmp_path / "refs" / "data-stats.npz"
    from_folder = reference_stats(tmp_path / "data", extractor, "fake", batch_size=4, save_to=saved)
    from_npz = reference_stats(tmp_path / "data.npz", extractor, "fake", batch_size=2)
    reused = reference_stats(saved, extractor, "fake")
    for stats in (from_folder, from_npz, reused):
        np.testing.assert_allclose(stats.mu, direct.mu, rtol=1e-12)
        np.testing.assert_allclose(stats.sigma, direct.sigma, rtol=1e-9, atol=1e-14)
        assert stats.num_images == 9 and stats.extractor == "fake"
    with pytest.raises(ValueError, match="feature network 'fake'.*'inception-v3'"):
        check_compatible(reused, "inception-v3")
