"""Inpainting through generate(): parity with diffusers' inpaint pipelines (9-channel inpainting models and the
4-channel blend), pixels outside the mask kept exactly, outpainting, and bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from core.errors import LatentDeskError
from core.families import FAMILIES
from core.generate import generate
from core.loading.checkpoint import load_model
from core.request import GenerationRequest
from tests.test_generate import relative
from tests.tiny_models import UNET, VAE, diffusers_components, randomize

TOLERANCE = 1e-4


def write_inpainting_folder(family: str, folder, seed: int):
    """A tiny random inpainting model (UNet of 2·4 + 1 input channels), saved by diffusers' own pipeline."""
    from diffusers import (
        AutoencoderKL,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    components = diffusers_components(family, seed)
    components["unet"] = randomize(UNet2DConditionModel(sample_size=16, in_channels=9, **UNET[family]), seed)
    # 8 groups of 4 channels: with the tiny VAE's default 32 groups of 1 channel, a flat picture (the grey
    # of txt2img) gives GroupNorm a variance of 0, which turns rounding noise into output (a 1e-7 change of
    # the input moved the latent by 8e-3); real VAEs have 128+ channels a group.
    components["vae"] = randomize(AutoencoderKL(scaling_factor=FAMILIES[family].latent_scale, norm_num_groups=8,
                                                **VAE), seed + 1)
    if family == "sdxl":
        pipe = StableDiffusionXLInpaintPipeline(**components)
    else:
        pipe = StableDiffusionInpaintPipeline(**components, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inpaint-pictures")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 8, 48, 40))
    mask.save(folder / "mask.png")
    return folder / "init.png", folder / "mask.png"


@pytest.fixture(scope="module")
def nine(tmp_path_factory):
    folder = write_inpainting_folder("sd1", tmp_path_factory.mktemp("inpaint-sd1") / "model", seed=41)
    return folder, load_model(folder)


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    from tests.tiny_models import write_diffusers_folder
    folder = write_diffusers_folder("sd1", tmp_path_factory.mktemp("inpaint-sd1-4ch") / "model", seed=42)
    return folder, load_model(folder)


def request(pictures, **changes) -> GenerationRequest:
    init, mask = pictures
    return replace(GenerationRequest(prompt="a small green triangle", negative_prompt="blurry", steps=6, guidance=5.0,
                                     sampler="Euler", seed=42, width=64, height=64, init_image=str(init),
                                     mask=str(mask), mask_blur=0, strength=1.0), **changes)


def diffusers_inpaint(folder, req: GenerationRequest, sdxl: bool = False, scheduler: str = "EulerDiscreteScheduler"):
    import diffusers
    cls = diffusers.StableDiffusionXLInpaintPipeline if sdxl else diffusers.StableDiffusionInpaintPipeline
    pipe = cls.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    extra = {"denoising_start": None} if sdxl else {}
    with torch.no_grad():
        return pipe(req.prompt, negative_prompt=req.negative_prompt, image=Image.open(req.init_image).convert("RGB"),
                    mask_image=Image.open(req.mask), num_inference_steps=req.steps, guidance_scale=req.guidance,
                    strength=req.strength, height=req.height, width=req.width, output_type="latent",
                    generator=torch.Generator().manual_seed(req.seed), **extra).images


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_inpainting_model_matches_diffusers(nine, pictures, strength):
    folder, model = nine
    req = request(pictures, strength=strength)
    diff = relative(generate(req, model).latents, diffusers_inpaint(folder, req))
    print(f"\n[parity] 9-channel inpainting, strength {strength}: {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("sampler, scheduler, strength", [
    ("Euler", "EulerDiscreteScheduler", 1.0),
    ("Euler", "EulerDiscreteScheduler", 0.6),
    ("Euler a", "EulerAncestralDiscreteScheduler", 0.8),     # stochastic: the draws must come in diffusers' order
])
def test_ordinary_model_blend_matches_diffusers(four, pictures, sampler, scheduler, strength):
    folder, model = four
    req = request(pictures, sampler=sampler, strength=strength)
    diff = relative(generate(req, model).latents, diffusers_inpaint(folder, req, scheduler=scheduler))
    print(f"\n[parity] 4-channel inpainting blend, {sampler}, strength {strength}: {diff:.2e}")
    assert diff <= TOLERANCE


def test_inpainting_model_txt2img_is_an_all_white_mask_on_grey(nine, tmp_path):
    """Without a picture, an inpainting model draws as if everything were masked on a grey picture."""
    folder, model = nine
    Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "grey.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "all.png")
    plain = GenerationRequest(prompt="a red circle", steps=4, guidance=3.0, sampler="Euler", seed=5, width=64,
                              height=64)
    ours = generate(plain, model).latents
    reference = diffusers_inpaint(folder, replace(plain, init_image=str(tmp_path / "grey.png"),
                                                  mask=str(tmp_path / "all.png"), strength=1.0))
    diff = relative(ours, reference)
    print(f"\n[parity] inpainting model, txt2img: {diff:.2e}")
    assert diff <= TOLERANCE


def test_sdxl_inpainting_model_matches_diffusers(tmp_path, pictures):
    folder = write_inpainting_folder("sdxl", tmp_path / "xl", seed=43)
    req = request(pictures, guidance=4.0, strength=1.0)
    diff = relative(generate(req, load_model(folder)).latents, diffusers_inpaint(folder, req, sdxl=True))
    print(f"\n[parity] SDXL 9-channel inpainting: {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("area", ["whole", "masked"])
def test_pixels_outside_the_feathered_mask_are_the_init_pictures(four, pictures, area):
    _, model = four
    init, mask = pictures
    result = generate(request(pictures, mask_blur=3, inpaint_area=area, inpaint_padding=4, strength=0.9), model)
    out = np.asarray(result.images[0]).astype(int)
    feathered = np.asarray(Image.open(mask).convert("L").filter(ImageFilter.GaussianBlur(3)))
    outside = feathered == 0
    assert outside.sum() > 1000
    assert np.array_equal(out[outside], np.asarray(Image.open(init).convert("RGB")).astype(int)[outside])
    inside = np.asarray(Image.open(mask)) == 255
    assert not np.array_equal(out[inside], np.asarray(Image.open(init).convert("RGB")).astype(int)[inside])


def test_outpainting_enlarges_the_picture_and_keeps_the_old_part(four, pictures):
    _, model = four
    init, _ = pictures
    req = request(pictures, mask=None, outpaint=(16, 0, 16, 0), width=96, height=64, strength=1.0, mask_blur=0)
    image = generate(req, model).images[0]
    assert image.size == (96, 64)
    assert np.array_equal(np.asarray(image)[:, 16:80], np.asarray(Image.open(init).convert("RGB")))


@pytest.mark.parametrize("changes, words", [
    ({"mask": "missing.png"}, "no such file"),
    ({"init_image": None}, "needs a picture"),
    ({"masked_content": "paint"}, "masked content"),
    ({"inpaint_area": "some"}, "inpaint area"),
])
def test_bad_inpainting_requests_are_refused_in_words(four, pictures, changes, words):
    _, model = four
    with pytest.raises(LatentDeskError, match=words):
        generate(request(pictures, **changes), model)


def test_an_empty_mask_is_refused(four, pictures, tmp_path):
    _, model = four
    Image.new("L", (64, 64), 0).save(tmp_path / "black.png")
    with pytest.raises(LatentDeskError, match="mask is empty"):
        generate(request(pictures, mask=str(tmp_path / "black.png")), model)
