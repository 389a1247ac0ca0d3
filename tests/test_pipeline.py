"""ConsistencyModelPipeline behaviour that needs no diffusers oracle: non-UNet models, loading and saving,
dtype and device handling, tuned default timesteps, the registry, post-processing and the ``sample`` CLI."""

import io
import json
import socket
import warnings

import numpy as np
import pytest
import torch

from cmkit import CMStochasticIterativeScheduler, ConsistencyModelPipeline
from cmkit.pipeline import ImagePipelineOutput
from cmkit.rng import randint, randn
from builders import make_mlp_pipe


class ToyNet(torch.nn.Module):
    """A minimal non-UNet model: anything with ``sample_shape`` and the UNet call signature works."""

    def __init__(self, sample_shape=(1, 4, 4)):
        super().__init__()
        self.sample_shape = tuple(sample_shape)
        n = int(np.prod(sample_shape))
        self.lin = torch.nn.Linear(n, n)

    def forward(self, sample, timestep, class_labels=None, return_dict=False):
        t = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device)
        out = self.lin(sample.flatten(1)).reshape(sample.shape) * torch.tanh(t / 1000)
        return (out,)


def make_toy_pipe(sample_shape=(1, 4, 4)):
    torch.manual_seed(0)
    pipe = ConsistencyModelPipeline(ToyNet(sample_shape), CMStochasticIterativeScheduler(num_train_timesteps=40))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----- non-UNet models (sample_shape) ---------------------------------------------------------------------------
def test_mlp_latents_have_model_sample_shape():
    pipe = make_mlp_pipe((2,))
    out = pipe(batch_size=5, num_inference_steps=2, generator=gen(), output_type="np").images
    assert isinstance(out, np.ndarray) and out.shape == (5, 2) and out.dtype == np.float32
    pt = pipe(batch_size=5, num_inference_steps=2, generator=gen(), output_type="pt").images
    assert pt.shape == (5, 2)
    np.testing.assert_array_equal(out, pt.numpy())


def test_mlp_samples_are_not_clamped_like_images():
    pipe = make_mlp_pipe((2,))
    raw = pipe(batch_size=64, generator=gen(), output_type="pt").images
    # with clip_denoised=False and no image post-processing, 2-D points keep their sign and scale
    assert raw.min() < 0


def test_mlp_pil_output_is_a_clear_error_before_sampling():
    pipe = make_mlp_pipe((2,))
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=r"output_type='pil' needs image samples.*shape \(2,\).*'np' or 'pt'"):
        pipe(batch_size=2)
    assert not calls


def test_mlp_image_shaped_sample_gives_grayscale_pil():
    pipe = make_mlp_pipe((1, 8, 8))
    images = pipe(batch_size=3, generator=gen()).images
    assert len(images) == 3 and images[0].mode == "L" and images[0].size == (8, 8)
    arr = pipe(batch_size=3, generator=gen(), output_type="np").images
    assert arr.shape == (3, 8, 8, 1) and 0 <= arr.min() and arr.max() <= 1


def test_mlp_user_latents_checked_against_sample_shape():
    pipe = make_mlp_pipe((2,))
    with pytest.raises(ValueError, match=r"expected to be \(3, 2\)"):
        pipe(batch_size=3, latents=torch.zeros(3, 4), output_type="np")
    lat = randn((3, 2), gen(1))
    a = pipe(batch_size=3, latents=lat, generator=gen(2), num_inference_steps=2, output_type="pt").images
    b = pipe(batch_size=3, latents=lat.clone(), generator=gen(2), num_inference_steps=2, output_type="pt").images
    assert torch.equal(a, b)


def test_non_finite_latents_are_an_error_not_a_nan_image():
    pipe = make_mlp_pipe((1, 2, 2))
    for bad in (float("nan"), float("inf")):
        latents = torch.zeros(2, 1, 2, 2)
        latents[1, 0, 1, 1] = bad
        with pytest.raises(ValueError, match="latents contain NaN or infinite values"):
            pipe(batch_size=2, latents=latents, output_type="np")
    with pytest.raises(ValueError, match="must be floating point"):
        pipe(batch_size=2, latents=torch.zeros(2, 1, 2, 2, dtype=torch.long), output_type="np")


def test_numpy_latents_are_converted_and_other_types_are_type_errors():
    pipe = make_mlp_pipe((2,))
    lat = randn((3, 2), gen(1))
    a = pipe(batch_size=3, latents=lat, generator=gen(2), num_inference_steps=2, output_type="pt").images
    b = pipe(batch_size=3, latents=lat.numpy(), generator=gen(2), num_inference_steps=2, output_type="pt").images
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match=r"latents must be a torch.Tensor \(or a NumPy array\) of shape \(3, 2\)"):
        pipe(batch_size=3, latents=lat.tolist(), output_type="np")


@pytest.mark.parametrize("generator", [42, "42", [gen(0), 7]])
def test_a_seed_as_generator_is_a_type_error_naming_the_fix(generator):
    pipe = make_mlp_pipe((2,))
    with pytest.raises(TypeError, match=r"pass generator=torch.Generator\(\).manual_seed\("):
        pipe(batch_size=2, generator=generator, output_type="np")
    with pytest.raises(TypeError, match="manual_seed"):
        randn((2, 2), generator)
    with pytest.raises(TypeError, match="manual_seed"):
        randint(3, 2, generator)


def test_a_batch_that_cannot_fit_memory_is_refused_before_drawing(monkeypatch):
    import cmkit.limits

    pipe = make_mlp_pipe((1, 8, 8))
    monkeypatch.setattr(cmkit.limits, "available_memory", lambda device=None: 1 << 20)  # 1 MiB
    with pytest.raises(ValueError, match=r"a batch of 100,000 samples of shape \(1, 8, 8\) would take at least "
                                         r".* MiB.*only 1.0 MiB.*lower the batch size"):
        pipe(batch_size=100_000, output_type="np")
    assert pipe(batch_size=4, generator=gen(), output_type="np").images.shape == (4, 8, 8, 1)


def test_mlp_pipeline_matches_manual_algorithm_1():
    """The loop is Algorithm 1: x = sigma_max z; f via scheduler; re-noise with the step's draw."""
    pipe = make_mlp_pipe((2,))
    sched = CMStochasticIterativeScheduler(num_train_timesteps=40, clip_denoised=False)
    sched.set_timesteps(timesteps=[22, 0])
    g = gen(4)
    x = randn((4, 2), g) * sched.init_noise_sigma
    for t in sched.timesteps:
        out = pipe.unet(sched.scale_model_input(x, t), t, return_dict=False)[0]
        x = sched.step(out, t, x, generator=g).prev_sample
    got = pipe(batch_size=4, num_inference_steps=None, timesteps=[22, 0], generator=gen(4), output_type="pt").images
    assert torch.equal(got, x)


def test_pipeline_makes_one_network_evaluation_per_step():
    pipe = make_mlp_pipe((2,))
    timesteps = []
    pipe.unet.register_forward_hook(lambda module, args, out: timesteps.append(float(args[1].flatten()[0])))
    for kwargs, steps in (
        ({"num_inference_steps": 1}, 1),
        ({"num_inference_steps": None, "timesteps": [22, 0]}, 2),
        ({"num_inference_steps": 4}, 4),
    ):
        timesteps.clear()
        pipe(batch_size=3, generator=gen(), output_type="pt", **kwargs)
        assert len(timesteps) == steps == len(set(timesteps))  # one call per step, each at its own noise level


def test_mlp_save_load_round_trip_records_cmkit_class(tmp_path):
    pipe = make_mlp_pipe((2,), num_class_embeds=3)
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["unet"] == ["cmkit", "MLPNet"]
    assert index["scheduler"] == ["diffusers", "CMStochasticIterativeScheduler"]
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    kw = dict(batch_size=3, class_labels=[0, 2, 1], num_inference_steps=2, output_type="pt")
    assert torch.equal(pipe(generator=gen(5), **kw).images, loaded(generator=gen(5), **kw).images)
    assert loaded.num_classes == 3 and loaded.sample_shape == (2,)


# ----- class labels drawn from the generator (improvement over diffusers) ---------------------------------------
def test_missing_class_labels_come_from_generator_not_global_rng():
    pipe = make_mlp_pipe((2,), num_class_embeds=10)
    seen = []
    pipe.unet.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["class_labels"].clone()), with_kwargs=True)
    torch.manual_seed(1)
    a = pipe(batch_size=6, num_inference_steps=2, generator=gen(9), output_type="pt").images
    torch.manual_seed(2)
    b = pipe(batch_size=6, num_inference_steps=2, generator=gen(9), output_type="pt").images
    assert torch.equal(a, b)
    assert torch.equal(seen[0], seen[2])
    g = gen(9)
    randn((6, 2), g)  # latents are drawn first, then the labels
    assert torch.equal(seen[0].long(), randint(10, 6, g).long())
    c = pipe(batch_size=6, num_inference_steps=2, generator=gen(10), output_type="pt").images
    assert not torch.equal(a, c)


def test_missing_class_labels_with_generator_list_are_per_sample():
    pipe = make_mlp_pipe((2,), num_class_embeds=50)
    batch = pipe(batch_size=3, num_inference_steps=2, generator=[gen(s) for s in (1, 2, 3)], output_type="pt").images
    for i, s in enumerate((1, 2, 3)):
        single = pipe(batch_size=1, num_inference_steps=2, generator=[gen(s)], output_type="pt").images
        torch.testing.assert_close(single[0], batch[i], rtol=1e-5, atol=1e-6)


# ----- argument validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(output_type="jpg"), "output_type='jpg' is not supported"),
        (dict(num_inference_steps=None), "Exactly one of `num_inference_steps` or `timesteps`"),
        (dict(callback_steps=0), "callback_steps"),
        (dict(callback_steps=None), "callback_steps"),
        (dict(callback_steps=1.5), "callback_steps"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(batch_size=2, generator=[torch.Generator()]), "list of 1 generators for batch_size=2"),
        (dict(batch_size=2, class_labels=3), r"int class label needs batch_size=1.*\[3\] \* 2"),
        (dict(batch_size=2, class_labels=[1, 2, 3]), "one label or one per sample"),
        (dict(class_labels=[10]), r"class labels must lie in \[0, 9\]"),
        (dict(class_labels=[-1]), r"class labels must lie in \[0, 9\]"),
        (dict(class_labels=torch.tensor([1.0])), "must be integers"),
        (dict(class_labels="cat"), "class_labels must be an int"),
        (dict(num_inference_steps=None, timesteps=[0, 22]), "descending"),
        (dict(num_inference_steps=None, timesteps=[40, 0]), "timesteps"),
        (dict(num_inference_steps=41), "num_inference_steps"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    pipe = make_mlp_pipe((2,), num_class_embeds=10)
    with pytest.raises(ValueError, match=match):
        pipe(**{"output_type": "np", **kwargs})


def test_both_steps_and_timesteps_warns_and_uses_timesteps():
    pipe = make_mlp_pipe((2,))
    with pytest.warns(UserWarning, match="timesteps are used"):
        a = pipe(num_inference_steps=3, timesteps=[22, 0], generator=gen(), output_type="pt").images
    b = pipe(num_inference_steps=None, timesteps=[22, 0], generator=gen(), output_type="pt").images
    assert torch.equal(a, b)


def test_class_label_spellings_agree():
    pipe = make_mlp_pipe((2,), num_class_embeds=10)
    outs = [
        pipe(class_labels=labels, generator=gen(), output_type="pt").images
        for labels in (7, np.int64(7), [7], (7,), torch.tensor(7), torch.tensor([7]), np.array([7]))
    ]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_class_labels_on_unconditional_model_warn_and_are_ignored():
    pipe = make_mlp_pipe((2,))
    with pytest.warns(UserWarning, match="not class-conditional"):
        a = pipe(class_labels=3, generator=gen(), output_type="pt").images
    assert torch.equal(a, pipe(generator=gen(), output_type="pt").images)


def test_model_without_sample_shape_or_config_is_a_clear_error():
    pipe = ConsistencyModelPipeline(torch.nn.Linear(2, 2), CMStochasticIterativeScheduler())
    with pytest.raises(ValueError, match="sample_shape"):
        pipe(output_type="np")


# ----- outputs, callback, progress bar ---------------------------------------------------------------------------
def test_return_dict_false_and_output_indexing():
    pipe = make_mlp_pipe((2,))
    tup = pipe(generator=gen(), output_type="pt", return_dict=False)
    out = pipe(generator=gen(), output_type="pt")
    assert isinstance(tup, tuple) and len(tup) == 1 and isinstance(out, ImagePipelineOutput)
    assert torch.equal(tup[0], out.images) and out[0] is out.images and out["images"] is out.images


def test_callback_every_callback_steps():
    pipe = make_mlp_pipe((2,))
    calls = []
    pipe(num_inference_steps=5, generator=gen(), output_type="pt", callback=lambda i, t, x: calls.append((i, float(t), x.shape)), callback_steps=2)
    assert [c[0] for c in calls] == [0, 2, 4]
    pipe.scheduler.set_timesteps(5)
    assert [c[1] for c in calls] == [float(pipe.scheduler.timesteps[i]) for i in (0, 2, 4)]


def test_progress_bar_config_is_used():
    pipe = make_mlp_pipe((2,))
    buf = io.StringIO()
    pipe.set_progress_bar_config(file=buf, desc="sampling", ascii=True)
    pipe(num_inference_steps=3, generator=gen(), output_type="np")
    assert "sampling" in buf.getvalue() and "3/3" in buf.getvalue()
    pipe.set_progress_bar_config(disable=True, file=buf)
    before = buf.getvalue()
    pipe(num_inference_steps=3, generator=gen(), output_type="np")
    assert buf.getvalue() == before


def test_components_rebuild_the_pipeline():
    pipe = make_mlp_pipe((2,))
    again = ConsistencyModelPipeline(**pipe.components)
    assert again.unet is pipe.unet and again.scheduler is pipe.scheduler


# ----- device and dtype ------------------------------------------------------------------------------------------
def test_to_accepts_diffusers_spellings():
    pipe = make_mlp_pipe((2,))
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    assert pipe.to(torch.bfloat16).dtype == torch.bfloat16
    assert pipe.to("cpu", torch.float64).dtype == torch.float64
    assert pipe.to(device="cpu", dtype=torch.float32).dtype == torch.float32
    assert pipe.to(dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="device first"):
        pipe.to(torch.float32, "cpu")
    with pytest.raises(ValueError, match="both positionally and as a keyword"):
        pipe.to(torch.float32, dtype=torch.float32)
    with pytest.raises(ValueError, match="floating point"):
        pipe.to(torch.int64)
    with pytest.raises(TypeError, match="silence"):
        pipe.to(silence=True)


def test_bfloat16_np_output_is_float32():
    pipe = make_toy_pipe((1, 4, 4)).to(torch.bfloat16)
    out = pipe(batch_size=2, generator=gen(), output_type="np").images
    assert out.dtype == np.float32 and out.shape == (2, 4, 4, 1)
    pt = pipe(batch_size=2, generator=gen(), output_type="pt").images
    assert pt.dtype == torch.bfloat16
    np.testing.assert_array_equal(out, pt.float().permute(0, 2, 3, 1).numpy())


def test_float16_on_cpu_warns_and_suggests_bfloat16():
    pipe = make_toy_pipe((2,)).to(torch.float16)
    with pytest.warns(UserWarning, match="bfloat16"):
        pipe(generator=gen(), output_type="np")
    for quiet in (lambda p: p.to(torch.bfloat16), lambda p: p.to(torch.float16, silence_dtype_warnings=True)):
        quiet(pipe)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pipe(generator=gen(), output_type="np")


def test_from_pretrained_dtype_spellings(tmp_path):
    make_mlp_pipe((2,)).save_pretrained(tmp_path)
    assert ConsistencyModelPipeline.from_pretrained(tmp_path).dtype == torch.float32
    assert ConsistencyModelPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert ConsistencyModelPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert ConsistencyModelPipeline.from_pretrained(tmp_path, torch_dtype="bfloat16", dtype=torch.bfloat16).dtype == torch.bfloat16
    assert ConsistencyModelPipeline.from_pretrained(tmp_path, dtype="float16", device="cpu").dtype == torch.float16
    with pytest.raises(ValueError, match="disagree"):
        ConsistencyModelPipeline.from_pretrained(tmp_path, torch_dtype=torch.float16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        ConsistencyModelPipeline.from_pretrained(tmp_path, dtype="int7")


# ----- loading errors and the hub --------------------------------------------------------------------------------
def test_missing_model_index_is_a_clear_error(tmp_path):
    pipe = make_mlp_pipe((2,))
    pipe.unet.save_pretrained(tmp_path / "just_a_model")
    with pytest.raises(FileNotFoundError, match="model_index.json is missing.*single model"):
        ConsistencyModelPipeline.from_pretrained(tmp_path / "just_a_model")


def test_unknown_component_class_is_a_clear_error(tmp_path):
    make_mlp_pipe((2,)).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"'scheduler'.*'EulerDiscreteScheduler'.*cannot load.*register_component_class"):
        ConsistencyModelPipeline.from_pretrained(tmp_path)


def test_malformed_model_index_entries(tmp_path):
    make_mlp_pipe((2,)).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    bad = dict(index, unet=None)
    (tmp_path / "model_index.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="must name the 'unet' component"):
        ConsistencyModelPipeline.from_pretrained(tmp_path)
    bad = dict(index, cmkit_default_timesteps={"2": [22]})
    (tmp_path / "model_index.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="cmkit_default_timesteps"):
        ConsistencyModelPipeline.from_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ConsistencyModelPipeline.from_pretrained(tmp_path)


def test_hub_id_offline_names_the_id_and_local_directory(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(OSError, match=r"openai/diffusers-cd_imagenet64_l2.*pass DIR to from_pretrained"):
        ConsistencyModelPipeline.from_pretrained("openai/diffusers-cd_imagenet64_l2", torch_dtype=torch.float16)


def test_nonexistent_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing directory nor a hub id"):
        ConsistencyModelPipeline.from_pretrained(str(tmp_path / "a" / "b" / "c"))


# ----- tuned default timesteps (the `cmkit tune-timesteps` hook) ---------------------------------------------------
def test_default_timesteps_are_used_saved_and_loaded(tmp_path):
    pipe = make_mlp_pipe((2,))
    plain = pipe(num_inference_steps=2, generator=gen(), output_type="pt").images
    pipe.set_default_timesteps(2, [30, 5])
    tuned = pipe(num_inference_steps=2, generator=gen(), output_type="pt").images
    explicit = pipe(num_inference_steps=None, timesteps=[30, 5], generator=gen(), output_type="pt").images
    assert torch.equal(tuned, explicit) and not torch.equal(tuned, plain)
    # explicit timesteps and other step counts are not affected
    assert torch.equal(pipe(num_inference_steps=None, timesteps=[20, 0], generator=gen(), output_type="pt").images,
                       make_mlp_pipe((2,))(num_inference_steps=None, timesteps=[20, 0], generator=gen(), output_type="pt").images)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["cmkit_default_timesteps"] == {"2": [30, 5]}
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.default_timesteps == {"2": [30, 5]}
    assert torch.equal(loaded(num_inference_steps=2, generator=gen(), output_type="pt").images, tuned)
    pipe.set_default_timesteps(2, None)
    assert torch.equal(pipe(num_inference_steps=2, generator=gen(), output_type="pt").images, plain)
    with pytest.raises(ValueError, match="that many timesteps"):
        pipe.set_default_timesteps(2, [5])


# ----- registry ----------------------------------------------------------------------------------------------------


def test_tcd_scheduler_runs_in_the_pipeline():
    from cmkit import TCDScheduler

    pipe = make_mlp_pipe((2,))
    pipe.scheduler = TCDScheduler()
    out = pipe(batch_size=3, num_inference_steps=4, generator=gen(), output_type="np").images
    again = pipe(batch_size=3, num_inference_steps=4, generator=gen(), output_type="np").images
    assert out.shape == (3, 2) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, again)


# ----- post-processing ------------------------------------------------------------------------------------------------


# ----- CLI --------------------------------------------------------------------------------------------------------------


# ----- EDM teachers are saved in the same layout but must not be sampled as consistency models ---------------------
def test_edm_teacher_round_trips_and_refuses_consistency_sampling(tmp_path):
    pipe = make_mlp_pipe((2,))
    pipe.parameterization = "edm"
    pipe.save_pretrained(tmp_path / "teacher")
    index = json.loads((tmp_path / "teacher" / "model_index.json").read_text())
    assert index["cmkit_parameterization"] == "edm"
    loaded = ConsistencyModelPipeline.from_pretrained(tmp_path / "teacher")
    assert loaded.parameterization == "edm"
    with pytest.raises(ValueError, match="EDM diffusion teacher.*Heun"):
        loaded(batch_size=2, output_type="np")
    with pytest.raises(ValueError, match="EDM diffusion teacher"):
        loaded.consistency_function()
    # a consistency pipeline does not write the key at all, so diffusers sees a plain layout
    make_mlp_pipe((2,)).save_pretrained(tmp_path / "cm")
    assert "cmkit_parameterization" not in json.loads((tmp_path / "cm" / "model_index.json").read_text())


