"""The papers' FID protocol: disjoint seed ranges, per-seed samples, uint8 quantisation (PNG-equivalent), labels,
min of three, the small-N warning."""

import numpy as np
import pytest
import torch
from cmkit.metrics.fid import quantize_uint8
from cmkit.metrics.fid_protocol import (
    generated_stats,
    labels_for_seeds,
    paper_fid,
    seed_generators,
    seed_ranges,
)
from cmkit.metrics.frechet import frechet_distance
from cmkit.metrics.generate import sample_batch
from builders import fake_extractor, fake_feature_extractor, tiny_pipeline_dir  # noqa: F401 - a fixture


@pytest.fixture
def pipe(tmp_path):
    from cmkit.pipeline import ConsistencyModelPipeline

    p = ConsistencyModelPipeline.from_pretrained(tiny_pipeline_dir(tmp_path / "p", (1, 8, 8), 10))
    p.set_progress_bar_config(disable=True)
    return p


def test_seed_ranges_are_edms_disjoint_ranges():
    assert seed_ranges(50_000) == [range(0, 50_000), range(50_000, 100_000), range(100_000, 150_000)]
    assert seed_ranges(4, runs=2, first_seed=10) == [range(10, 14), range(14, 18)]
    with pytest.raises(ValueError, match="at least 2 samples"):
        seed_ranges(1)


def test_quantisation_is_edms_png_rounding():
    x = torch.linspace(-1.2, 1.2, 10_001, dtype=torch.float64)
    edm = np.clip(x.numpy() * 127.5 + 128, 0, 255).astype(np.uint8)  # EDM generate.py
    np.testing.assert_array_equal(quantize_uint8(x).numpy(), edm)
    assert quantize_uint8(torch.tensor([-1.0, 1.0, 0.0, -0.5, 3.0])).tolist() == [0, 255, 128, 64, 255]
    assert quantize_uint8(torch.tensor([0.0]).to(torch.bfloat16)).dtype == torch.uint8


def test_each_sample_depends_on_its_seed_alone(pipe):
    seeds = [7, 3, 11]
    together = sample_batch(pipe, 3, seed_generators(seeds), num_inference_steps=2)
    alone = sample_batch(pipe, 1, seed_generators([3]), num_inference_steps=2)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-6)
    again = sample_batch(pipe, 3, seed_generators(seeds), num_inference_steps=2)
    assert torch.equal(together, again)


def test_labels_per_seed(pipe):
    assert labels_for_seeds([0, 9, 10, 23], 10, "balanced").tolist() == [0, 9, 0, 3]
    assert labels_for_seeds([0, 1], 10, "random") is None and labels_for_seeds([0], None, "balanced") is None
    with pytest.raises(ValueError, match="'random', 'balanced'"):
        labels_for_seeds([0], 10, "uniform")
    # random labels come from each seed's own generator, after its noise (as EDM draws them)
    drawn = []
    handle = pipe.unet.register_forward_hook(
        lambda module, args, kwargs, out: drawn.append(kwargs["class_labels"].tolist()), with_kwargs=True
    )
    sample_batch(pipe, 2, seed_generators([5, 6]))
    handle.remove()
    expected = []
    for seed in (5, 6):
        g = torch.Generator().manual_seed(seed)
        torch.randn(1, 1, 8, 8, generator=g)
        expected.append(int(torch.randint(0, 10, (1,), generator=g)))
    assert drawn == [expected]


def test_features_see_the_saved_png_pixels_and_do_not_depend_on_batch_size(pipe, tmp_path, fake_extractor):
    from cmkit.metrics.fid_stats import reference_stats

    extractor = fake_feature_extractor(None, "cpu")
    seeds = range(20, 33)
    a = generated_stats(pipe, seeds, extractor, "fake", batch_size=5, feature_batch_size=3,
                        save_images=tmp_path / "png", sampler={"num_inference_steps": 1})
    b = generated_stats(pipe, seeds, extractor, "fake", batch_size=13, sampler={"num_inference_steps": 1})
    np.testing.assert_allclose(a.mu, b.mu, rtol=1e-6)
    assert sorted(p.name for p in (tmp_path / "png" / "000000").iterdir())[:2] == ["000020.png", "000021.png"]
    from_pngs = reference_stats(tmp_path / "png", extractor, "fake")
    np.testing.assert_allclose(from_pngs.mu, a.mu, rtol=1e-12)  # the uint8 pixels measured are the PNGs' pixels
    np.testing.assert_allclose(from_pngs.sigma, a.sigma, rtol=1e-9, atol=1e-14)
    assert a.num_images == 13


def test_paper_fid_reports_the_minimum_of_three_disjoint_runs(pipe, fake_extractor):
    extractor = fake_feature_extractor(None, "cpu")
    reference = generated_stats(pipe, range(1000, 1040), extractor, "fake", sampler={"num_inference_steps": 2})
    options = dict(sampler={"num_inference_steps": 1}, labels="balanced", batch_size=16)
    with pytest.warns(UserWarning, match="not comparable to published numbers"):
        result = paper_fid(pipe, reference, extractor, "fake", num_samples=24, first_seed=4, **options)
    assert [(r.first_seed, r.last_seed) for r in result.runs] == [(4, 27), (28, 51), (52, 75)]
    for run, seeds in zip(result.runs, seed_ranges(24, 3, 4)):  # each run is FID of exactly its own seeds
        own = generated_stats(pipe, seeds, extractor, "fake", **options)
        assert run.fid == pytest.approx(frechet_distance(own.mu, own.sigma, reference.mu, reference.sigma), rel=1e-9)
    values = [r.fid for r in result.runs]
    assert len(set(values)) == 3 and result.fid == min(values)
    assert result.as_dict()["fid_min"] == min(values) and len(result.as_dict()["runs"]) == 3
    with pytest.raises(ValueError, match="feature network"):
        paper_fid(pipe, reference, extractor, "inception-v3", num_samples=4)


def test_teacher_pipelines_are_sampled_by_heun_per_seed(tmp_path, fake_extractor):
    from cmkit.pipeline import ConsistencyModelPipeline

    teacher = ConsistencyModelPipeline.from_pretrained(tiny_pipeline_dir(tmp_path / "t", (1, 8, 8), 10, "edm"))
    extractor = fake_feature_extractor(None, "cpu")
    one = generated_stats(teacher, range(6), extractor, "fake", sampler={"heun_steps": 2}, batch_size=4)
    two = generated_stats(teacher, range(6), extractor, "fake", sampler={"heun_steps": 2}, batch_size=6)
    np.testing.assert_allclose(one.mu, two.mu, rtol=1e-6)
