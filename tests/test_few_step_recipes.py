"""The few-step models' recipes (issue 22): each catalogue preset, run by generate() on a tiny random model,
lands where diffusers' own pipeline for that model family lands with the same noise.

The settings come from resources/catalogue.json, so the catalogue cannot drift from what is tested here:
- SD-Turbo / SDXL-Turbo: Euler a, SGM Uniform, guidance off. diffusers' model cards run them with
  EulerAncestralDiscreteScheduler(timestep_spacing="trailing") and guidance_scale=0.0.
- LCM-LoRA: the LCM sampler. diffusers' LCM-LoRA docs use LCMScheduler on the usual pipeline.
- SDXL-Lightning (no catalogue entry: its UNet files are not single checkpoints): Euler, SGM Uniform,
  guidance off; ByteDance's model card uses EulerDiscreteScheduler(timestep_spacing="trailing").
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.fetch.catalogue import load_catalogue
from core.generate import generate
from core.loading.checkpoint import load_model
from core.presets import preset_for
from core.request import GenerationRequest
from core.sampling.schedules import SD_SCHEDULE
from tests.test_generate import CountingUNet, reference_txt2img, relative
from tests.tiny_models import write_diffusers_folder, write_lcm_folder

TOLERANCE = 1e-4
PROMPT = "a small green triangle"


def preset(name: str) -> dict:
    entry = next(e for e in load_catalogue() if e.name == name)
    return dict(entry.settings)


def request_for(settings: dict, **changes) -> GenerationRequest:
    chosen = {k: settings[k] for k in ("sampler", "steps", "guidance") if k in settings}
    return GenerationRequest(prompt=PROMPT, negative_prompt="", seed=7, width=64, height=64,
                             schedule=settings.get("schedule", "Automatic"), **{**chosen, **changes})


def diffusers_pipeline(folder, kind: str, scheduler: str, **scheduler_config):
    import diffusers
    cls = diffusers.StableDiffusionXLPipeline if kind == "sdxl" else diffusers.StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = getattr(diffusers, scheduler).from_config({**pipe.scheduler.config, **scheduler_config})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    folder = write_diffusers_folder("sd1", tmp_path_factory.mktemp("recipes-sd1") / "model", seed=31)
    return folder, load_model(folder)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    folder = write_diffusers_folder("sdxl", tmp_path_factory.mktemp("recipes-sdxl") / "model", seed=32)
    return folder, load_model(folder)


def compare(folder, model, kind, req, scheduler, **scheduler_config) -> float:
    ours = generate(req, model).latents
    pipe = diffusers_pipeline(folder, kind, scheduler, **scheduler_config)
    # guidance 1 is unguided on both sides: diffusers guides only above 1 (the model cards' 0.0 is the same).
    reference = reference_txt2img(pipe, req)
    return relative(ours, reference)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sd_turbo_recipe_matches_diffusers(sd1, steps):
    settings = preset("sd-turbo")
    assert (settings["sampler"], settings["schedule"], settings["guidance"]) == ("Euler a", "SGM Uniform", 1.0)
    folder, model = sd1
    diff = compare(folder, model, "sd1", request_for(settings, steps=steps),
                   "EulerAncestralDiscreteScheduler", timestep_spacing="trailing")
    print(f"\n[parity] SD-Turbo recipe, {steps} step(s): {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("steps", [1, 4])
def test_sdxl_turbo_recipe_matches_diffusers(sdxl, steps):
    settings = preset("sdxl-turbo")
    folder, model = sdxl
    diff = compare(folder, model, "sdxl", request_for(settings, steps=steps),
                   "EulerAncestralDiscreteScheduler", timestep_spacing="trailing")
    print(f"\n[parity] SDXL-Turbo recipe, {steps} step(s): {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("guidance", [1.0, 1.8])
def test_lcm_lora_recipe_matches_diffusers(sd1, guidance):
    settings = preset("lcm-lora-sd15")
    assert settings["sampler"] == "LCM" and 4 <= settings["steps"] <= 8
    folder, model = sd1
    diff = compare(folder, model, "sd1", request_for(settings, guidance=guidance), "LCMScheduler")
    print(f"\n[parity] LCM recipe, {settings['steps']} steps, guidance {guidance}: {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.fixture(scope="module")
def lcm(tmp_path_factory):
    folder = write_lcm_folder(tmp_path_factory.mktemp("recipes-lcm") / "LCM_tiny", seed=33)
    return folder, load_model(folder)


@pytest.mark.parametrize("guidance", [1.0, 8.0])
def test_an_lcm_model_guided_by_its_embedding_matches_diffusers(lcm, guidance):
    """An LCM-distilled model (time_cond_proj_dim): one call a step on the prompt alone, the scale embedded;
    diffusers' LatentConsistencyModelPipeline on the same folder lands at the same latents."""
    from diffusers import LatentConsistencyModelPipeline

    folder, model = lcm
    settings = preset_for(folder)
    assert (settings.sampler, settings.steps, settings.guidance) == ("LCM", 4, 8.0)
    req = request_for({"sampler": settings.sampler, "steps": settings.steps}, guidance=guidance)
    counting = CountingUNet(model.unet)
    ours = generate(req, model.replace(unet=counting)).latents
    assert counting.batches == [1] * settings.steps
    pipe = LatentConsistencyModelPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        reference = pipe(PROMPT, num_inference_steps=req.steps, guidance_scale=guidance, height=req.height,
                         width=req.width, generator=torch.Generator().manual_seed(req.seed),
                         output_type="latent").images
    diff = relative(ours, reference)
    print(f"\n[parity] LCM model, guidance {guidance} embedded: {diff:.2e}")
    assert diff <= TOLERANCE
    # The scale reaches the network, by more than the tolerance resolves (so a scale left out or embedded
    # wrong fails the comparison above); no negative prompt is read.
    other = generate(replace(req, guidance=guidance + 2), model).latents
    assert relative(other, ours) > 5 * TOLERANCE
    torch.testing.assert_close(generate(replace(req, negative_prompt="blurry"), model).latents, ours)


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_lightning_recipe_matches_diffusers(sdxl, steps):
    folder, model = sdxl
    req = request_for({"sampler": "Euler", "schedule": "SGM Uniform", "guidance": 1.0}, steps=steps)
    diff = compare(folder, model, "sdxl", req, "EulerDiscreteScheduler", timestep_spacing="trailing")
    print(f"\n[parity] Lightning recipe, {steps} steps: {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("name", ["sd-turbo", "sdxl-turbo"])
def test_turbo_presets_make_one_unet_call_of_batch_one_a_step(sd1, name):
    _, model = sd1
    counting = CountingUNet(model.unet)
    settings = preset(name)
    generate(request_for(settings), model.replace(unet=counting))
    assert counting.batches == [1] * settings["steps"]


def test_one_turbo_step_denoises_from_pure_noise(sd1):
    """1 step of the old fixed spacing landed on t = 0 and left noise; SGM Uniform starts at t = 999 and
    the single step ends at σ = 0: the result is the model's x0 prediction from pure noise."""
    _, model = sd1
    seen = []
    result = generate(request_for(preset("sd-turbo")), model, on_step=seen.append)
    assert len(seen) == 1
    assert seen[0].sigma == pytest.approx(float(SD_SCHEDULE.sigma_max), rel=1e-4)
    torch.testing.assert_close(result.latents.float(), seen[0].denoised.float(), rtol=1e-5, atol=1e-5)
