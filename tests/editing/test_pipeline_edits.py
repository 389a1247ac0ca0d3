"""Editing methods on ConsistencyModelPipeline and the `cmkit edit` CLI, with tiny random UNets."""

import numpy as np
import pytest
import torch
from PIL import Image

from cmkit.cli import main
from cmkit.models.unet import UNet2DModel
from cmkit.pipeline import ConsistencyModelPipeline, ImagePipelineOutput
from cmkit.schedulers.cm import CMStochasticIterativeScheduler


def tiny_pipeline(channels=1, res=8, classes=None, sigma_max=80.0):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=res, in_channels=channels, out_channels=channels, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8, num_class_embeds=classes,
    )
    return ConsistencyModelPipeline(unet.eval(), CMStochasticIterativeScheduler(sigma_max=sigma_max))


@pytest.fixture(scope="module")
def gray_pipe():
    return tiny_pipeline(1)


@pytest.fixture(scope="module")
def rgb_pipe():
    return tiny_pipeline(3, classes=10)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_inpaint_keeps_known_pixels_and_is_reproducible(gray_pipe):
    image = torch.rand(2, 1, 8, 8)
    mask = torch.zeros(8, 8)
    mask[2:6, 2:6] = 1
    a = gray_pipe.inpaint(image, mask, num_inference_steps=3, generator=gen(1), output_type="pt").images
    b = gray_pipe.inpaint(image, mask, num_inference_steps=3, generator=gen(1), output_type="pt").images
    c = gray_pipe.inpaint(image, mask, num_inference_steps=3, generator=gen(2), output_type="pt").images
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    keep = (mask == 0).expand_as(a)
    assert torch.allclose(a[keep], image[keep], atol=1e-6)
    assert (a - image)[~keep].abs().max() > 0.01


def test_editing_functions_run_on_any_editable_pipeline_with_one_options_object(gray_pipe):
    from cmkit.editing import pipeline_edits as edits
    from cmkit.editing.pipeline_edits import EditablePipeline, EditOptions

    class Host:
        """Not a ConsistencyModelPipeline: only the members the EditablePipeline protocol names."""

        def __init__(self, pipe):
            self.unet, self.scheduler, self.device, self.dtype = pipe.unet, pipe.scheduler, pipe.device, pipe.dtype
            self.sample_shape, self.num_classes = pipe.sample_shape, pipe.num_classes
            self.require_consistency_model = pipe.require_consistency_model
            self.require_batch_fits, self.prepare_class_labels = pipe.require_batch_fits, pipe.prepare_class_labels

    assert isinstance(gray_pipe, EditablePipeline) and isinstance(Host(gray_pipe), EditablePipeline)
    image, mask = torch.rand(1, 1, 8, 8), torch.eye(8)
    options = EditOptions(num_inference_steps=2, generator=gen(3), output_type="pt")
    direct = edits.inpaint(Host(gray_pipe), image, mask, options).images
    method = gray_pipe.inpaint(image, mask, num_inference_steps=2, generator=gen(3), output_type="pt").images
    assert torch.equal(direct, method)
    (tup,) = edits.denoise_latents(Host(gray_pipe), image, 0.5, EditOptions(output_type="np", return_dict=False))
    assert isinstance(tup, np.ndarray) and tup.shape == (1, 8, 8, 1)
    with pytest.raises(TypeError, match="num_steps"):  # a misspelt option is an error, not ignored
        gray_pipe.inpaint(image, mask, num_steps=2)


def test_each_preset_returns_the_pipeline_output_types(gray_pipe, rgb_pipe):
    g8 = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    out = rgb_pipe.colorize(Image.fromarray(g8, mode="L"), num_inference_steps=2, generator=gen(), class_labels=3)
    assert isinstance(out, ImagePipelineOutput) and out.images[0].mode == "RGB" and out.images[0].size == (8, 8)
    rgb = np.asarray(out.images[0], dtype=np.float32)
    luma = rgb @ np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)
    inside = ((rgb > 0) & (rgb < 255)).all(axis=-1)  # where no channel was clipped to the pixel range
    assert inside.sum() > 10 and np.abs(luma - g8)[inside].max() <= 1.0  # the grey levels survive colorization

    (sr,) = gray_pipe.super_resolve(torch.rand(1, 4, 4), 2, num_inference_steps=2, generator=gen(), output_type="np",
                                    return_dict=False)
    assert isinstance(sr, np.ndarray) and sr.shape == (1, 8, 8, 1)
    dn = gray_pipe.denoise(torch.rand(3, 1, 8, 8), 0.5, generator=gen(), output_type="pt").images
    assert dn.shape == (3, 1, 8, 8) and 0 <= dn.min() and dn.max() <= 1
    st = rgb_pipe.stroke_edit(np.zeros((8, 8, 3), dtype=np.uint8), 1.0, generator=gen(), output_type="pt",
                              class_labels=[1]).images
    assert st.shape == (1, 3, 8, 8)
    line = gray_pipe.interpolate(num_images=4, num_inference_steps=2, generator=gen()).images
    assert len(line) == 4 and line[0].mode == "L"
    pair = rgb_pipe.interpolate(torch.rand(3, 8, 8), torch.rand(3, 8, 8), num_images=3, sigma=2.0, generator=gen(),
                                output_type="pt", class_labels=2).images
    assert pair.shape == (3, 3, 8, 8)


def test_interpolation_uses_one_class_for_the_path(rgb_pipe):
    seen = []
    hook = rgb_pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["class_labels"]), with_kwargs=True)
    try:
        rgb_pipe.interpolate(num_images=5, num_inference_steps=2, generator=gen(4), output_type="pt")
    finally:
        hook.remove()
    assert len(seen) == 2 and all(len(c) == 5 and len(set(c.tolist())) == 1 for c in seen)


def test_explicit_sigmas_and_denoise_start(gray_pipe):
    noisy = torch.randn(1, 1, 8, 8) * 0.3
    one = gray_pipe.denoise_latents(noisy, 0.3, output_type="pt", generator=gen()).images
    same = gray_pipe.denoise_latents(noisy, 0.3, sigmas=[0.3], output_type="pt", generator=gen()).images
    assert torch.equal(one, same)
    with pytest.raises(ValueError, match="must begin there"):
        gray_pipe.denoise_latents(noisy, 0.3, sigmas=[1.0, 0.3], generator=gen())


def test_bad_inputs_get_clear_errors(gray_pipe, rgb_pipe):
    img = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="they must be the same size"):
        gray_pipe.inpaint(img, torch.ones(4, 4))
    with pytest.raises(ValueError, match="must be 8x8 for this model"):
        gray_pipe.inpaint(torch.rand(1, 1, 16, 16), torch.ones(16, 16))
    with pytest.raises(ValueError, match="got 2 masks for 1 images"):
        gray_pipe.inpaint(img, torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="needs a model trained on 3-channel RGB"):
        gray_pipe.colorize(img)
    with pytest.raises(ValueError, match="convert the image to grayscale"):
        gray_pipe.inpaint(torch.rand(1, 3, 8, 8), torch.ones(8, 8))
    with pytest.raises(ValueError, match="factor 3 does not divide the model resolution 8x8"):
        gray_pipe.super_resolve(img, 3)
    with pytest.raises(ValueError, match="must be 4x4"):
        gray_pipe.super_resolve(img, 2)  # expects the low-resolution image
    with pytest.raises(ValueError, match=r"model's range \[0.002, 80\]"):
        gray_pipe.denoise(img, 100.0)
    with pytest.raises(ValueError, match=r"model's range \[0.002, 80\]"):
        gray_pipe.stroke_edit(img, 0.0001)
    with pytest.raises(ValueError, match="outside the model's range"):
        gray_pipe.inpaint(img, torch.ones(8, 8), sigmas=[120.0, 1.0])
    small = tiny_pipeline(1, sigma_max=10.0)
    with pytest.raises(ValueError, match=r"\[0.002, 10\]"):
        small.interpolate(torch.rand(1, 8, 8), torch.rand(1, 8, 8), sigma=20.0)
    with pytest.raises(ValueError, match="class labels must lie in"):
        rgb_pipe.colorize(torch.rand(1, 8, 8), class_labels=12)
    with pytest.raises(ValueError, match="output_type"):
        gray_pipe.denoise(img, 0.5, output_type="jpeg")
    with pytest.raises(ValueError, match="pass both images"):
        gray_pipe.interpolate(img)


def test_non_finite_inputs_and_seed_generators_are_errors(gray_pipe):
    noisy = torch.zeros(1, 1, 8, 8)
    noisy[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="noisy contains NaN or infinite values"):
        gray_pipe.denoise_latents(noisy, 0.5)
    with pytest.raises(ValueError, match="image contains NaN"):
        gray_pipe.inpaint(torch.full((1, 1, 8, 8), float("inf")), torch.eye(8))
    with pytest.raises(TypeError, match=r"torch.Generator\(\).manual_seed\(42\)"):
        gray_pipe.inpaint(torch.rand(1, 1, 8, 8), torch.eye(8), generator=42)
    with pytest.raises(TypeError, match="manual_seed"):
        gray_pipe.interpolate(generator=42)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit_cli")
    tiny_pipeline(1).save_pretrained(root / "pipe")
    tiny_pipeline(3).save_pretrained(root / "rgb")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(root / "in.png")
    Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8), mode="L").save(root / "low.png")
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask, mode="L").save(root / "mask.png")
    return root


@pytest.mark.parametrize(
    "task, extra, size",
    [
        ("inpaint", ["--image", "in.png", "--mask", "mask.png", "--steps", "2"], (8, 8)),
        ("super-resolve", ["--image", "low.png", "--factor", "2", "--steps", "2"], (8, 8)),
        ("colorize", ["--image", "in.png", "--steps", "2"], (8, 8)),
        ("denoise", ["--image", "in.png", "--sigma", "0.4"], (8, 8)),
        ("stroke-edit", ["--image", "in.png", "--sigma", "1.5", "--sigmas", "1.5,0.5"], (8, 8)),
        ("interpolate", ["--num-images", "3"], (24, 8)),
        ("interpolate", ["--first", "in.png", "--second", "in.png", "--sigma", "2", "--num-images", "2"], (16, 8)),
    ],
)
def test_cli_each_task(saved, task, extra, size, capsys):
    out = saved / f"{task}.png"
    model = saved / ("rgb" if task == "colorize" else "pipe")
    args = ["edit", task, "--model", str(model), "--out", str(out), "--seed", "3"]
    args += [str(saved / a) if a.endswith(".png") else a for a in extra]
    assert main(args) == 0
    assert Image.open(out).size == size
    assert Image.open(out).mode == ("RGB" if task == "colorize" else "L")
    if task == "inpaint":
        kept = np.asarray(Image.open(out))[:, :4]
        assert np.array_equal(kept, np.asarray(Image.open(saved / "in.png"))[:, :4])


def test_cli_errors_and_help(saved, capsys):
    code = main(["edit", "super-resolve", "--model", str(saved / "pipe"), "--image", str(saved / "low.png"),
                 "--factor", "3", "--out", str(saved / "x.png")])
    assert code == 1 and "does not divide" in capsys.readouterr().err
    code = main(["edit", "inpaint", "--model", str(saved / "pipe"), "--image", str(saved / "in.png"),
                 "--mask", str(saved / "low.png"), "--out", str(saved / "x.png")])
    assert code == 1 and "same size" in capsys.readouterr().err
    code = main(["edit", "colorize", "--model", str(saved / "pipe"), "--image", str(saved / "in.png"),
                 "--out", str(saved / "x.png")])
    assert code == 1 and "3-channel RGB" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["edit", "inpaint", "--help"])
    assert "cmkit edit colorize" in capsys.readouterr().out


def test_bfloat16_model_and_batched_class_labels():
    pipe = tiny_pipeline(1, classes=10).to(torch.bfloat16)
    image = torch.rand(3, 1, 8, 8)
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1
    out = pipe.inpaint(image, mask, num_inference_steps=2, class_labels=[1, 2, 3], generator=gen(), output_type="np")
    assert out.images.dtype == np.float32 and out.images.shape == (3, 8, 8, 1)
    assert np.allclose(out.images[:, :, 4:, 0], image[:, 0, :, 4:].numpy(), atol=1e-6)  # float32 state: exact keep
    with pytest.raises(ValueError, match="one label or one per sample"):
        pipe.inpaint(image, mask, class_labels=[1, 2], generator=gen())
