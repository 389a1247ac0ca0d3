"""cmkit's schedulers inside diffusers' own pipelines (issue 13): the one-line swap
``pipe.scheduler = cmkit.TCDScheduler.from_config(pipe.scheduler.config)`` must give the same images as diffusers'
``TCDScheduler`` in StableDiffusion (text-to-image, img2img) and SDXL pipelines, and cmkit's
``CMStochasticIterativeScheduler`` the same images as diffusers' in diffusers' ``ConsistencyModelPipeline``.

Every pipeline is built once from tiny random components (seeded); no tokenizer or text encoder: the prompt
embeddings are passed in directly. Each case runs twice with fresh generators of the same seed, once per
scheduler, and the outputs must be bitwise equal: both schedulers do the same float operations in the same order
and draw the same noise, and the shared UNet/VAE see identical inputs.
Latent outputs are compared where the VAE's clamp to [0, 1] could hide a difference; decoded images elsewhere.
"""

import pytest
import torch

pytest.importorskip("transformers")  # without it diffusers' SD/SDXL pipelines are dummy objects
diffusers = pytest.importorskip("diffusers")

import cmkit  # noqa: E402

# Custom timesteps off the distillation schedule and configs from other schedulers warn in both libraries.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(custom timesteps|ignores unknown config keys|distillation schedule).*"
)

EMBED_DIM = 16  # the UNets' cross-attention width = the prompt embeddings' feature size
TOKENS = 3  # prompt length in tokens
POOLED_DIM = 8  # SDXL's pooled text embedding
TIME_EMBED_DIM = 4  # SDXL's per-number "text_time" embedding (6 numbers: original size, crop, target size)


def tiny_unet_config(**extra):
    """A two-level conditional UNet on 4-channel 8x8 latents (a few thousand parameters)."""
    return dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4, cross_attention_dim=EMBED_DIM, attention_head_dim=2, **extra,
    )


def tiny_vae():
    """A two-level AutoencoderKL: 16x16 RGB images <-> 4x8x8 latents."""
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=16,
    )


def sd_scheduler_config():
    """The scheduler config SD checkpoints ship (a PNDM config), which users convert to TCD."""
    return diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, skip_prk_steps=True,
        set_alpha_to_one=False,
    ).config


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (100x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def embeddings(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sd():
    torch.manual_seed(0)
    pipe = diffusers.StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=None, tokenizer=None, unet=diffusers.UNet2DConditionModel(**tiny_unet_config()),
        scheduler=diffusers.TCDScheduler.from_config(sd_scheduler_config()), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd_img2img(sd):
    components = dict(sd.components, scheduler=diffusers.TCDScheduler.from_config(sd_scheduler_config()))
    pipe = diffusers.StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl():
    torch.manual_seed(1)
    unet = diffusers.UNet2DConditionModel(**tiny_unet_config(
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + POOLED_DIM,
    ))
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
        scheduler=diffusers.TCDScheduler.from_config(sd_scheduler_config()), add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_img2img(sdxl):
    components = dict(sdxl.components, scheduler=diffusers.TCDScheduler.from_config(sd_scheduler_config()))
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(**components, requires_aesthetics_score=False,
                                                      add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_prompt(batch=1):
    return dict(prompt_embeds=embeddings(10, batch, TOKENS, EMBED_DIM),
                negative_prompt_embeds=embeddings(11, batch, TOKENS, EMBED_DIM))


def sdxl_prompt(batch=1):
    return dict(sd_prompt(batch), pooled_prompt_embeds=embeddings(12, batch, POOLED_DIM),
                negative_pooled_prompt_embeds=embeddings(13, batch, POOLED_DIM))


def init_image(batch=1):
    """img2img input: an image batch in [0, 1] (the pipelines' image processor maps it to [-1, 1])."""
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(20))


def run_with(pipe, scheduler, seed=0, **kwargs):
    """``pipe(**kwargs)`` with ``scheduler`` swapped in and a fresh generator of ``seed``."""
    pipe.scheduler = scheduler
    with torch.no_grad():
        return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def assert_same_with_both_tcds(pipe, config=None, **kwargs):
    """cmkit's and diffusers' TCDScheduler, both from ``config`` (default: SD's), give equal outputs."""
    config = diffusers.TCDScheduler.from_config(sd_scheduler_config()).config if config is None else config
    theirs = run_with(pipe, diffusers.TCDScheduler.from_config(config), **kwargs)
    ours = run_with(pipe, cmkit.TCDScheduler.from_config(config), **kwargs)
    assert type(pipe.scheduler) is cmkit.TCDScheduler
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert torch.isfinite(torch.as_tensor(theirs)).all()
    assert torch.equal(torch.as_tensor(ours), torch.as_tensor(theirs)), kwargs
    return ours


def assert_not_saturated(images):
    """The decoded images are not clamped flat, so comparing them can detect a difference."""
    images = torch.as_tensor(images)
    assert ((images > 0) & (images < 1)).float().mean() > 0.5


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_sd_text_to_image(sd, steps, eta, guidance_scale):
    assert_same_with_both_tcds(
        sd, num_inference_steps=steps, eta=eta, guidance_scale=guidance_scale, height=16, width=16,
        output_type="latent", **sd_prompt(),
    )


def test_sd_text_to_image_decoded_batch_and_images_per_prompt(sd):
    images = assert_same_with_both_tcds(
        sd, num_inference_steps=3, eta=0.3, guidance_scale=2.0, height=16, width=16, output_type="np",
        num_images_per_prompt=2, **sd_prompt(batch=2),
    )
    assert images.shape == (4, 16, 16, 3)
    assert_not_saturated(images)


def test_sd_swap_from_the_checkpoint_scheduler_config(sd):
    """The documented swap starts from whatever config the checkpoint ships (SD 1.5: PNDM's, SDXL: Euler's,
    whose ``_use_default_values`` keys take TCD's defaults in both libraries)."""
    sdxl_euler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    for config in (sd_scheduler_config(), sdxl_euler.config):
        assert_same_with_both_tcds(sd, config, num_inference_steps=4, eta=0.3, guidance_scale=2.0, height=16,
                                   width=16, output_type="latent", **sd_prompt())


def test_swap_from_a_pipeline_holding_a_cmkit_scheduler(sd):
    """``X.from_config(pipe.scheduler.config)`` also works when the pipe holds a cmkit scheduler: diffusers'
    ``from_config`` takes only dicts (any other mapping is read as a hub id and fails to download)."""
    sd.scheduler = cmkit.TCDScheduler.from_config(sd_scheduler_config())
    cmkit_config = sd.scheduler.config
    euler = diffusers.EulerDiscreteScheduler.from_config(cmkit_config)
    assert (euler.config.beta_schedule, euler.config.steps_offset) == ("scaled_linear", 1)
    assert_same_with_both_tcds(sd, cmkit_config, num_inference_steps=4, eta=0.3, guidance_scale=2.0, height=16,
                               width=16, output_type="latent", **sd_prompt())


@pytest.mark.parametrize("timesteps", [[999, 759, 499, 259], [999, 500], [700, 300, 10]])
@pytest.mark.parametrize("strength", [None, 0.5])
def test_sd_custom_timesteps(sd, sd_img2img, timesteps, strength):
    kwargs = dict(timesteps=timesteps, eta=0.3, guidance_scale=2.0, output_type="latent", **sd_prompt())
    if strength is None:
        assert_same_with_both_tcds(sd, height=16, width=16, **kwargs)
    else:
        assert_same_with_both_tcds(sd_img2img, image=init_image(), strength=strength, **kwargs)


@pytest.mark.parametrize("strength", [0.5, 0.8, 1.0])
@pytest.mark.parametrize("steps, eta", [(2, 0.3), (4, 0.0), (4, 1.0), (8, 0.3)])
def test_sd_img2img(sd_img2img, strength, steps, eta):
    assert_same_with_both_tcds(sd_img2img, image=init_image(), strength=strength, num_inference_steps=steps, eta=eta,
                               guidance_scale=2.0, output_type="latent", **sd_prompt())


def test_sd_img2img_decoded(sd_img2img):
    images = assert_same_with_both_tcds(sd_img2img, image=init_image(2), strength=0.6, num_inference_steps=5, eta=0.3,
                                        guidance_scale=1.0, output_type="np", **sd_prompt(2))
    assert_not_saturated(images)


@pytest.mark.parametrize("steps, eta, guidance_scale", [(1, 0.3, 1.0), (4, 0.3, 3.0), (2, 1.0, 2.0), (3, 0.0, 1.0)])
def test_sdxl_text_to_image(sdxl, steps, eta, guidance_scale):
    assert_same_with_both_tcds(sdxl, num_inference_steps=steps, eta=eta, guidance_scale=guidance_scale, height=16,
                               width=16, output_type="latent", **sdxl_prompt())


def test_sdxl_denoising_end(sdxl):
    """``denoising_end`` cuts the timesteps the pipeline loops over; the scheduler's last step is never taken."""
    assert_same_with_both_tcds(sdxl, num_inference_steps=4, denoising_end=0.6, eta=0.3, guidance_scale=2.0,
                               height=16, width=16, output_type="latent", **sdxl_prompt())


def test_sdxl_decoded_and_custom_timesteps(sdxl):
    images = assert_same_with_both_tcds(sdxl, timesteps=[999, 499, 99], eta=0.3, guidance_scale=2.0, height=16,
                                        width=16, output_type="np", **sdxl_prompt())
    assert_not_saturated(images)


@pytest.mark.parametrize("kwargs", [{"strength": 0.5}, {"strength": 0.8}, {"strength": 0.3, "num_inference_steps": 8},
                                    {"denoising_start": 0.6}, {"strength": 0.8, "denoising_end": 0.5}])
def test_sdxl_img2img(sdxl_img2img, kwargs):
    """``denoising_start`` makes the pipeline count timesteps below a cutoff and set ``begin_index`` itself."""
    kwargs = {"num_inference_steps": 4, **kwargs}
    assert_same_with_both_tcds(sdxl_img2img, image=init_image(), eta=0.3, guidance_scale=2.0, output_type="latent",
                               **kwargs, **sdxl_prompt())


# ---- CMStochasticIterativeScheduler in diffusers' ConsistencyModelPipeline -------------------------------------


def tiny_pixel_unet(num_class_embeds):
    torch.manual_seed(2)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=4, num_class_embeds=num_class_embeds,
    )


def cm_scheduler_config():
    """The config of OpenAI's CD ImageNet-64 checkpoints (N = 40 Karras grid)."""
    return diffusers.CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0).config


@pytest.fixture(scope="module", params=[None, 10], ids=["unconditional", "class-conditional"])
def cm_pipe(request):
    scheduler = diffusers.CMStochasticIterativeScheduler.from_config(cm_scheduler_config())
    pipe = diffusers.ConsistencyModelPipeline(unet=tiny_pixel_unet(request.param), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CM_SCHEDULES = [
    {"num_inference_steps": 1},
    {"num_inference_steps": 2},
    {"num_inference_steps": None, "timesteps": [22, 0]},
    {"num_inference_steps": None, "timesteps": [35, 17, 3]},
]


@pytest.mark.parametrize("schedule", CM_SCHEDULES)
def test_cm_pipeline(cm_pipe, schedule):
    labels = {} if cm_pipe.unet.config.num_class_embeds is None else {"class_labels": [3, 7]}
    config = cm_scheduler_config()
    kwargs = dict(batch_size=2, output_type="pt", **labels, **schedule)
    theirs = run_with(cm_pipe, diffusers.CMStochasticIterativeScheduler.from_config(config), **kwargs)
    ours = run_with(cm_pipe, cmkit.CMStochasticIterativeScheduler.from_config(config), **kwargs)
    assert type(cm_pipe.scheduler) is cmkit.CMStochasticIterativeScheduler
    assert torch.equal(ours, theirs), schedule
    assert_not_saturated(theirs)
