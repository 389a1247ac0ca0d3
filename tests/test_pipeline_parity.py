"""cmkit's ConsistencyModelPipeline against diffusers 0.42's, on tiny random UNets sharing their weights.

Every call runs in both libraries with fresh generators of the same seed; images must agree within 1e-5
("pt"/"np"; "pil" within one 8-bit level). Also: diffusers' documented examples, save/load in both
directions, the same ValueErrors, and the documented improvements (bfloat16 "np", generator class labels).
"""

import warnings

import numpy as np
import pytest
import torch
from diffusers import CMStochasticIterativeScheduler as DiffusersScheduler
from diffusers import ConsistencyModelPipeline as DiffusersPipeline
from diffusers import UNet2DModel as DiffusersUNet

from cmkit import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

TOL = 1e-5

# class-conditional ImageNet-64 layout in miniature (1000 classes so label 145 exists)
COND = dict(
    sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
    down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
    norm_num_groups=4, attn_norm_num_groups=4, attention_head_dim=4, resnet_time_scale_shift="scale_shift",
    downsample_type="resnet", upsample_type="resnet", num_class_embeds=1000,
)
# unconditional LSUN-256 layout in miniature ("default" time conditioning, attention only at the bottom)
UNCOND = dict(
    sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 8, 16),
    down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
    norm_num_groups=4, attn_norm_num_groups=4, attention_head_dim=4, resnet_time_scale_shift="default",
    downsample_type="resnet", upsample_type="resnet",
)
GRAY = dict(UNCOND, in_channels=1, out_channels=1, block_out_channels=(8, 8, 8))


def build_pair(unet_config, seed=0, **scheduler_config):
    """(diffusers pipeline, cmkit pipeline) with the same random UNet weights and scheduler config."""
    torch.manual_seed(seed)
    theirs = DiffusersUNet(**unet_config).eval()
    ours = UNet2DModel(**unet_config).eval()
    ours.load_state_dict(theirs.state_dict())
    d = DiffusersPipeline(theirs, DiffusersScheduler(**scheduler_config))
    c = ConsistencyModelPipeline(ours, CMStochasticIterativeScheduler(**scheduler_config))
    d.set_progress_bar_config(disable=True)
    c.set_progress_bar_config(disable=True)
    return d, c


@pytest.fixture(scope="module")
def cond():
    return build_pair(COND, num_train_timesteps=40)


@pytest.fixture(scope="module")
def uncond():
    return build_pair(UNCOND, seed=1, num_train_timesteps=151)


def seeded(generator_seed):
    if isinstance(generator_seed, list):
        return [torch.Generator().manual_seed(s) for s in generator_seed]
    return torch.Generator().manual_seed(generator_seed)


def assert_same(a, b, output_type):
    """Equal outputs: tensors/arrays within TOL, PIL within one 8-bit level."""
    if output_type == "pil":
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.mode == y.mode and x.size == y.size
            diff = np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16))
            assert diff.max() <= 1
        return 0.0
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    err = float(np.abs(a - b).max())
    assert err <= TOL, err
    return err


def run_both(pair, seed=0, **kwargs):
    d, c = pair
    a = d(generator=seeded(seed), **kwargs)
    b = c(generator=seeded(seed), **kwargs)
    return a, b


CASES = [
    dict(num_inference_steps=1, class_labels=145),
    dict(num_inference_steps=None, timesteps=[22, 0], class_labels=145),
    dict(num_inference_steps=None, timesteps=[17, 0], class_labels=[3]),
    dict(num_inference_steps=1, class_labels=torch.tensor(145)),  # a 0-d tensor
    dict(num_inference_steps=None, timesteps=[18, 0], class_labels=torch.tensor([999, 0]), batch_size=2),
    dict(num_inference_steps=2, class_labels=[7, 8, 9], batch_size=3),
    dict(num_inference_steps=5, class_labels=[1] * 2, batch_size=2),
    dict(num_inference_steps=None, timesteps=[39, 30, 20, 10, 0], class_labels=[5]),
    dict(num_inference_steps=8, class_labels=[12]),
    dict(num_inference_steps=None, timesteps=[22, 0], class_labels=[145], batch_size=3),  # one label, broadcast
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items() if k != "class_labels"))
@pytest.mark.parametrize("seed", [0, 1])
def test_class_conditional_parity(cond, case, seed):
    a, b = run_both(cond, seed=seed, output_type="pt", **case)
    assert_same(a.images, b.images, "pt")


@pytest.mark.parametrize("output_type", ["pt", "np", "pil"])
def test_output_types_parity(cond, output_type):
    a, b = run_both(cond, seed=3, output_type=output_type, batch_size=2, class_labels=[1, 2], num_inference_steps=2)
    assert type(a.images) is type(b.images)
    assert_same(a.images, b.images, output_type)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_inference_steps=1),
        dict(num_inference_steps=None, timesteps=[67, 0]),
        dict(num_inference_steps=None, timesteps=[62, 0], batch_size=2),
        dict(num_inference_steps=3, batch_size=2),
    ],
)
def test_unconditional_parity_ct_lsun_grid(uncond, kwargs):
    a, b = run_both(uncond, seed=4, output_type="np", **kwargs)
    assert_same(a.images, b.images, "np")


def test_ct_imagenet_grid_and_scheduler_options():
    pair = build_pair(COND, seed=2, num_train_timesteps=201, clip_denoised=False, s_noise=0.9, sigma_max=40.0)
    a, b = run_both(pair, seed=5, output_type="np", num_inference_steps=None, timesteps=[106, 0], class_labels=[3, 4], batch_size=2)
    assert_same(a.images, b.images, "np")


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_inference_steps=1), dict(num_inference_steps=4, batch_size=2), dict(num_inference_steps=None, timesteps=[999, 759, 499, 259])],
)
def test_tcd_scheduler_in_the_pipeline_parity(kwargs):
    from diffusers import TCDScheduler as DiffusersTCD

    from cmkit import TCDScheduler

    d, c = build_pair(UNCOND, seed=5, num_train_timesteps=40)
    d.scheduler, c.scheduler = DiffusersTCD(), TCDScheduler()
    a, b = run_both((d, c), seed=7, output_type="np", **kwargs)
    assert_same(a.images, b.images, "np")


def test_grayscale_pil_parity():
    pair = build_pair(GRAY, seed=3, num_train_timesteps=40)
    a, b = run_both(pair, seed=6, output_type="pil", num_inference_steps=2, batch_size=2)
    assert a.images[0].mode == "L"
    assert_same(a.images, b.images, "pil")


def test_generator_lists_and_user_latents(cond):
    d, c = cond
    gens = [3, 4, 5]
    kw = dict(batch_size=3, class_labels=[1, 2, 3], num_inference_steps=None, timesteps=[22, 0], output_type="pt")
    assert_same(d(generator=seeded(gens), **kw).images, c(generator=seeded(gens), **kw).images, "pt")
    latents = torch.randn(3, 3, 8, 8, generator=seeded(9))
    a = d(generator=seeded(gens), latents=latents.clone(), **kw).images
    b = c(generator=seeded(gens), latents=latents.clone(), **kw).images
    assert_same(a, b, "pt")
    # one generator list entry per sample: sample 1 of the batch equals a batch of one from generator 4
    single = c(generator=seeded([4]), batch_size=1, class_labels=[2], num_inference_steps=None, timesteps=[22, 0], output_type="pt").images
    fresh = c(generator=seeded(gens), **kw).images
    torch.testing.assert_close(single[0], fresh[1], rtol=0, atol=TOL)


def test_return_dict_false_and_callbacks(cond):
    d, c = cond
    calls = {"d": [], "c": []}
    kw = dict(batch_size=1, class_labels=[11], num_inference_steps=4, output_type="np", return_dict=False, callback_steps=2)
    a = d(generator=seeded(0), callback=lambda i, t, x: calls["d"].append((i, float(t), x.clone())), **kw)
    b = c(generator=seeded(0), callback=lambda i, t, x: calls["c"].append((i, float(t), x.clone())), **kw)
    assert isinstance(a, tuple) and isinstance(b, tuple) and len(b) == 1
    assert_same(a[0], b[0], "np")
    assert [x[:2] for x in calls["d"]] == [x[:2] for x in calls["c"]] and [x[0] for x in calls["c"]] == [0, 2]
    for (_, _, xd), (_, _, xc) in zip(calls["d"], calls["c"]):
        assert_same(xd, xc, "pt")


def test_diffusers_documented_examples(cond):
    """The three calls of diffusers' ConsistencyModelPipeline docs, on a small local model."""
    d, c = cond
    # one-step sampling: class labels are random (from the generator in cmkit, the global RNG in diffusers)
    image = c(num_inference_steps=1, generator=seeded(0)).images[0]
    assert image.size == (8, 8) and image.mode == "RGB"
    for call in (dict(num_inference_steps=1, class_labels=145), dict(num_inference_steps=None, timesteps=[22, 0], class_labels=145)):
        a, b = d(generator=seeded(0), **call).images[0], c(generator=seeded(0), **call).images[0]
        assert_same([a], [b], "pil")


def test_class_labels_ignored_for_unconditional_model(uncond):
    d, c = uncond
    a = d(generator=seeded(1), class_labels=3, output_type="np").images
    with pytest.warns(UserWarning, match="not class-conditional"):
        b = c(generator=seeded(1), class_labels=3, output_type="np").images
    assert_same(a, b, "np")


def test_missing_class_labels_drawn_from_generator(cond):
    _, c = cond
    torch.manual_seed(0)
    a = c(batch_size=4, num_inference_steps=2, generator=seeded(8), output_type="pt").images
    torch.manual_seed(1)
    b = c(batch_size=4, num_inference_steps=2, generator=seeded(8), output_type="pt").images
    assert torch.equal(a, b)
    # diffusers, by contrast, changes with the global seed (its documented TODO)
    d, _ = cond
    torch.manual_seed(0)
    x = d(batch_size=4, num_inference_steps=2, generator=seeded(8), output_type="pt").images
    torch.manual_seed(1)
    y = d(batch_size=4, num_inference_steps=2, generator=seeded(8), output_type="pt").images
    assert not torch.equal(x, y)


# ----- the same errors as diffusers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(output_type="jpeg"),
        dict(num_inference_steps=None, timesteps=None),
        dict(callback_steps=0),
        dict(callback_steps=None),
        dict(latents=torch.zeros(1, 3, 4, 4)),
        dict(batch_size=2, class_labels=[1, 2], generator=[torch.Generator()]),
        dict(num_inference_steps=None, timesteps=[0, 22], class_labels=1),
        dict(num_inference_steps=None, timesteps=[40, 0], class_labels=1),
        dict(num_inference_steps=41, class_labels=1),
    ],
)
def test_same_value_errors_as_diffusers(cond, kwargs):
    d, c = cond
    for pipe in (d, c):
        with pytest.raises(ValueError):
            pipe(**kwargs)


def test_int_label_with_batch_above_one(cond):
    d, c = cond
    with pytest.raises(AssertionError):  # diffusers asserts
        d(batch_size=2, class_labels=3)
    with pytest.raises(ValueError, match="int class label needs batch_size=1"):
        c(batch_size=2, class_labels=3)


def test_both_steps_and_timesteps_uses_timesteps_like_diffusers(cond):
    with pytest.warns(UserWarning, match="timesteps are used"):
        a, b = run_both(cond, seed=2, output_type="pt", num_inference_steps=3, timesteps=[22, 0], class_labels=[4])
    assert_same(a.images, b.images, "pt")


# ----- dtypes --------------------------------------------------------------------------------------------------------
def test_bfloat16_np_output_works_where_diffusers_crashes():
    d, c = build_pair(COND, num_train_timesteps=40)
    d.to(torch.bfloat16)
    c.to(torch.bfloat16)
    kw = dict(class_labels=[5], num_inference_steps=2)
    with pytest.raises(TypeError):  # numpy has no bfloat16
        d(generator=seeded(0), output_type="np", **kw)
    out = c(generator=seeded(0), output_type="np", **kw).images
    assert out.dtype == np.float32 and out.shape == (1, 8, 8, 3)
    pt_theirs = d(generator=seeded(0), output_type="pt", **kw).images
    pt_ours = c(generator=seeded(0), output_type="pt", **kw).images
    assert pt_ours.dtype == torch.bfloat16 == pt_theirs.dtype
    np.testing.assert_array_equal(out, pt_ours.float().permute(0, 2, 3, 1).numpy())
    assert float((pt_ours.float() - pt_theirs.float()).abs().max()) <= 2 ** -6  # a few bf16 ulps near 1


def test_float16_on_cpu_warns_and_still_matches():
    d, c = build_pair(COND, num_train_timesteps=40)
    d.to(torch.float16)
    c.to(torch.float16)
    kw = dict(class_labels=[5], num_inference_steps=1, output_type="pt")
    with pytest.warns(UserWarning, match="bfloat16"):
        b = c(generator=seeded(0), **kw).images
    a = d(generator=seeded(0), **kw).images
    assert b.dtype == torch.float16
    assert float((a.float() - b.float()).abs().max()) <= 2 ** -9


# ----- saving and loading in both directions --------------------------------------------------------------------------
def test_cmkit_saves_what_diffusers_loads(cond, tmp_path):
    _, c = cond
    c.save_pretrained(tmp_path / "ours")
    theirs = DiffusersPipeline.from_pretrained(tmp_path / "ours")
    theirs.set_progress_bar_config(disable=True)
    assert type(theirs.unet).__module__.startswith("diffusers")
    kw = dict(class_labels=[145, 2], batch_size=2, num_inference_steps=None, timesteps=[22, 0], output_type="np")
    assert_same(theirs(generator=seeded(1), **kw).images, c(generator=seeded(1), **kw).images, "np")


@pytest.mark.parametrize("safe", [True, False])
def test_diffusers_saves_what_cmkit_loads(uncond, tmp_path, safe):
    d, _ = uncond
    d.save_pretrained(tmp_path / "theirs", safe_serialization=safe)
    ours = ConsistencyModelPipeline.from_pretrained(tmp_path / "theirs")
    ours.set_progress_bar_config(disable=True)
    assert isinstance(ours.unet, UNet2DModel) and isinstance(ours.scheduler, CMStochasticIterativeScheduler)
    kw = dict(batch_size=2, num_inference_steps=None, timesteps=[67, 0], output_type="np")
    assert_same(d(generator=seeded(2), **kw).images, ours(generator=seeded(2), **kw).images, "np")
    again = ConsistencyModelPipeline.from_pretrained(tmp_path / "theirs", torch_dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16


def test_default_timesteps_key_does_not_stop_diffusers(cond, tmp_path):
    _, c = cond
    saved = ConsistencyModelPipeline(**c.components)
    saved.set_default_timesteps(2, [22, 0])
    saved.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DiffusersPipeline.from_pretrained(tmp_path)
    theirs.set_progress_bar_config(disable=True)
    ours = ConsistencyModelPipeline.from_pretrained(tmp_path)
    ours.set_progress_bar_config(disable=True)
    kw = dict(class_labels=[1], output_type="np")
    tuned = ours(generator=seeded(0), num_inference_steps=2, **kw).images
    assert_same(theirs(generator=seeded(0), num_inference_steps=None, timesteps=[22, 0], **kw).images, tuned, "np")


# ----- torch.compile ------------------------------------------------------------------------------------------------
#: one level of the ImageNet-64 layout (attention, scale-shift time conditioning, class embedding, mid block).
#: Inductor's CPU compile time grows with the number of distinct kernels: a second level (the resampling blocks)
#: doubles it. Dynamo traces the two-level layout (fullgraph=True) in test_unet.py::test_compiles_without_graph_breaks.
COMPILE_UNET = dict(
    COND, block_out_channels=(4,), down_block_types=("AttnDownBlock2D",), up_block_types=("AttnUpBlock2D",),
    norm_num_groups=2, attn_norm_num_groups=2,
)


@pytest.mark.slow
def test_torch_compile_reduce_overhead_fullgraph(tmp_path):
    """diffusers' documented speed-up: ``pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)``."""
    from torch._dynamo.utils import counters

    _, c = build_pair(COMPILE_UNET, num_train_timesteps=40)
    kw = dict(class_labels=[145], num_inference_steps=None, timesteps=[22, 0], output_type="pt")
    eager = c(generator=seeded(0), **kw).images
    c.unet = torch.compile(c.unet, mode="reduce-overhead", fullgraph=True)
    assert c.sample_shape == (3, 8, 8) and c.num_classes == 1000 and c.dtype == torch.float32
    counters.clear()
    compiled = c(generator=seeded(0), **kw).images
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    # one graph for both steps: no graph break (fullgraph=True would raise) and no recompilation per timestep
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    c.save_pretrained(tmp_path)  # saves the module inside the compile wrapper
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path)
    assert loaded.unet.state_dict().keys() == c.unet._orig_mod.state_dict().keys()


# ----- half-precision accuracy ---------------------------------------------------------------------------------------
def _half_errors(steps, seeds=(0, 1, 2)):
    """Max |bf16 - fp32| image error of cmkit's and diffusers' pipelines, same weights, latents and seeds."""
    d, c = build_pair(COND, num_train_timesteps=40)
    kw = dict(class_labels=[5, 145], batch_size=2, num_inference_steps=None, timesteps=[22, 0][-steps:], output_type="pt")
    ours, theirs = [], []
    for seed in seeds:
        latents = torch.randn(2, 3, 8, 8, generator=seeded(100 + seed))
        full = c(generator=seeded(seed), latents=latents, **kw).images
        c.to(torch.bfloat16)
        d.to(torch.bfloat16)
        ours.append(float((c(generator=seeded(seed), latents=latents, **kw).images.float() - full).abs().max()))
        theirs.append(float((d(generator=seeded(seed), latents=latents, **kw).images.float() - full).abs().max()))
        c.to(torch.float32)
        d.to(torch.float32)
    return max(ours), max(theirs)


def test_bfloat16_one_step_error_no_worse_than_diffusers():
    ours, theirs = _half_errors(steps=1)
    assert ours <= 1.25 * theirs and ours <= 2**-5


def test_bfloat16_two_steps_error_no_worse_than_diffusers():
    ours, theirs = _half_errors(steps=2)
    assert ours <= 1.25 * theirs and ours <= 2**-5


def test_bfloat16_pipeline_keeps_float32_noise_and_state():
    # with F == 0 the consistency function is c_skip(sigma) x: the sampler's state no longer depends on the network,
    # so a bfloat16 network must leave every intermediate sample equal to float32's, bit for bit
    _, c = build_pair(COND, num_train_timesteps=40)
    torch.nn.init.zeros_(c.unet.conv_out.weight)
    torch.nn.init.zeros_(c.unet.conv_out.bias)
    kw = dict(class_labels=[5, 7], batch_size=2, num_inference_steps=None, timesteps=[22, 10, 0], output_type="pt")

    def run():
        states = []
        images = c(generator=seeded(3), callback=lambda i, t, x: states.append(x.clone()), **kw).images
        return states, images

    full_states, full = run()
    c.to(torch.bfloat16)
    half_states, half = run()
    assert len(half_states) == 3 and all(x.dtype == torch.float32 for x in half_states)
    for a, b in zip(half_states, full_states):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert half.dtype == torch.bfloat16
    assert float((half.float() - full).abs().max()) <= 2**-7  # the image is rounded to bfloat16 once, at the end
