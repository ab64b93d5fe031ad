"""The generate() recipe: parity with diffusers' pipelines, guidance, cancelling, reproducibility, bad input."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch
from PIL import Image

from core.errors import LatentDeskError
from core.generate import Cancelled, generate
from core.loading.checkpoint import load_model
from core.request import GenerationRequest
from core.sampling.guidance import GuidanceScale
from tests.tiny_models import write_diffusers_folder

TOLERANCE = 1e-4
PROMPT = "a small green triangle at the bottom on a white background"


def relative(ours, ref) -> float:
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    folder = write_diffusers_folder("sd1", tmp_path_factory.mktemp("gen-sd1") / "model", seed=21)
    return folder, load_model(folder)


def request(**changes) -> GenerationRequest:
    return replace(GenerationRequest(prompt=PROMPT, negative_prompt="blurry", steps=6, guidance=5.0,
                                     sampler="Euler", seed=42, width=64, height=64), **changes)


def reference_pipeline(folder, kind: str, sampler: str = "Euler"):
    import diffusers
    cls = {"txt2img": diffusers.StableDiffusionPipeline, "img2img": diffusers.StableDiffusionImg2ImgPipeline,
           "sdxl": diffusers.StableDiffusionXLPipeline}[kind]
    pipe = cls.from_pretrained(folder, local_files_only=True)
    scheduler = {"Euler": diffusers.EulerDiscreteScheduler, "DDIM": diffusers.DDIMScheduler,
                 "DPM++ 2M": diffusers.DPMSolverMultistepScheduler}[sampler]
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_txt2img(pipe, req: GenerationRequest) -> torch.Tensor:
    """diffusers' final latents for the same request (its generator draws the same initial noise as ours)."""
    with torch.no_grad():
        return pipe(req.prompt, negative_prompt=req.negative_prompt, num_inference_steps=req.steps,
                    guidance_scale=req.guidance, height=req.height, width=req.width,
                    generator=torch.Generator().manual_seed(req.seed), output_type="latent").images


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M"])
def test_txt2img_matches_diffusers_pipeline(sd1, sampler):
    folder, model = sd1
    req = request(sampler=sampler)
    ours = generate(req, model).latents
    pipe = reference_pipeline(folder, "txt2img", sampler)
    ref = reference_txt2img(pipe, req)
    diff = relative(ours, ref)
    print(f"\n[parity] txt2img {sampler}: {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_img2img_matches_diffusers_pipeline(sd1, tmp_path, strength):
    folder, model = sd1
    init = Image.fromarray(torch.randint(0, 256, (64, 64, 3), generator=torch.Generator().manual_seed(0),
                                         dtype=torch.uint8).numpy())
    init.save(tmp_path / "init.png")
    req = request(init_image=str(tmp_path / "init.png"), strength=strength, steps=10)
    steps_seen = []
    ours = generate(req, model, on_step=lambda s: steps_seen.append(s.i)).latents
    pipe = reference_pipeline(folder, "img2img")
    with torch.no_grad():
        ref = pipe(req.prompt, image=init, strength=strength, negative_prompt=req.negative_prompt,
                   num_inference_steps=req.steps, guidance_scale=req.guidance,
                   generator=torch.Generator().manual_seed(req.seed), output_type="latent").images
    expected_steps = min(int(req.steps * strength), req.steps)  # diffusers' get_timesteps
    assert steps_seen == list(range(expected_steps))
    diff = relative(ours, ref)
    print(f"\n[parity] img2img strength {strength}: {diff:.2e}")
    assert diff <= TOLERANCE


def test_v_prediction_txt2img_matches_diffusers(tmp_path):
    folder = write_diffusers_folder("sd2", tmp_path / "v-model", seed=8, prediction="v_prediction")
    model = load_model(folder)
    assert model.prediction == "v"
    req = request()
    pipe = reference_pipeline(folder, "txt2img")
    ref = reference_txt2img(pipe, req)
    diff = relative(generate(req, model).latents, ref)
    print(f"\n[parity] v-prediction txt2img: {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M"])
def test_zero_terminal_snr_v_model_matches_diffusers(tmp_path, sampler):
    """A v-model on the schedule that ends in pure noise (the built-in model's), from sigma 4096."""
    folder = write_diffusers_folder("sd2", tmp_path / "ztsnr", seed=8, prediction="v_prediction")
    model = load_model(folder)
    model = model.replace(family=replace(model.family, zero_terminal_snr=True))
    req = request(sampler=sampler)
    pipe = reference_pipeline(folder, "txt2img", sampler)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, rescale_betas_zero_snr=True)
    steps = []
    ours = generate(req, model, on_step=lambda s: steps.append(s.sigma)).latents
    diff = relative(ours, reference_txt2img(pipe, req))
    print(f"\n[parity] zero-terminal-SNR v-model txt2img {sampler}: {diff:.2e}")
    assert steps[0] == pytest.approx(4096, rel=1e-3)
    assert diff <= TOLERANCE


def test_sdxl_txt2img_matches_diffusers(tmp_path):
    folder = write_diffusers_folder("sdxl", tmp_path / "xl", seed=9)
    model = load_model(folder)
    req = request(guidance=4.0)
    pipe = reference_pipeline(folder, "sdxl")
    ref = reference_txt2img(pipe, req)
    diff = relative(generate(req, model).latents, ref)
    print(f"\n[parity] SDXL txt2img: {diff:.2e}")
    assert diff <= TOLERANCE


class CountingUNet(torch.nn.Module):
    """The model's UNet, counting calls and the batch of each."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.config, self.batches = unet, unet.config, []

    def forward(self, x, t, context, y=None, **extra):
        self.batches.append(x.shape[0])
        return self.unet(x, t, context, y, **extra)


def test_guidance_one_makes_one_unet_call_per_step(sd1):
    _, model = sd1
    counting = CountingUNet(model.unet)
    generate(request(guidance=1.0, steps=5), model.replace(unet=counting))
    assert counting.batches == [1] * 5
    counting.batches.clear()
    generate(request(guidance=3.0, steps=5, batch=2), model.replace(unet=counting))
    assert counting.batches == [4] * 5  # cond and uncond for two images, in one call


def test_guidance_changed_mid_run_applies_from_the_next_step(sd1):
    _, model = sd1
    scale = GuidanceScale(7.0)
    used = []

    def on_step(step):
        used.append(step.guidance)
        if step.i == 2:
            scale.value = 2.5  # the app's slider, moved while step 2 is shown

    generate(request(steps=6), model, on_step=on_step, guidance=scale)
    assert used == [7.0, 7.0, 7.0, 2.5, 2.5, 2.5]


def test_cancel_from_callback_or_flag_stops_within_a_step(sd1):
    _, model = sd1
    seen = []

    def stop_at_3(step):
        seen.append(step.i)
        if step.i == 3:
            raise Cancelled

    result = generate(request(steps=10), model, on_step=stop_at_3)
    assert result.cancelled and seen == [0, 1, 2, 3] and result.steps_done == 4
    assert result.images == [] and result.latents.shape == (1, 4, 32, 32)  # the partial x0 prediction

    flag = threading.Event()
    steps = []
    result = generate(request(steps=10), model, on_step=lambda s: (steps.append(s.i), s.i == 1 and flag.set()),
                      cancel=flag)
    assert result.cancelled and steps == [0, 1]


def test_same_request_same_image_bit_for_bit(sd1):
    _, model = sd1
    req = request(sampler="Euler a", batch=2)
    first, second = generate(req, model), generate(req, model)
    assert torch.equal(first.latents, second.latents)
    assert [im.tobytes() for im in first.images] == [im.tobytes() for im in second.images]
    assert first.seeds == [42, 43]
    other = generate(replace(req, seed=43, batch=1), model)  # image 1 of the batch starts from seed 43
    assert relative(other.latents[0], first.latents[1]) < 1e-4
    assert relative(first.latents[0], first.latents[1]) > 0.1


@pytest.mark.parametrize("changes,words", [
    ({"width": 100}, "multiple of 8"),
    ({"steps": 0}, "steps"),
    ({"sampler": "Euler b"}, "Unknown sampler"),
    ({"init_image": "x.png", "strength": 0.0}, "strength"),
    ({"init_image": "x.png", "strength": 1.5}, "strength"),
    ({"batch": 0}, "batch"),
    ({"seed": -1}, "seed"),
    ({"width": 8192, "height": 8192}, "GiB"),
    ({"init_image": "/nonexistent/picture.png"}, "picture.png"),
])
def test_bad_requests_are_refused_clearly(sd1, changes, words):
    _, model = sd1
    with pytest.raises(LatentDeskError, match=words):
        generate(request(**changes), model)


def test_empty_prompt_is_allowed(sd1):
    _, model = sd1
    result = generate(request(prompt="", negative_prompt="", steps=2), model)
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
