"""The recipe: a GenerationRequest and a model in, images out.

    generate(request, model, on_step=None, guidance=None, cancel=None) -> GenerationResult

Reproducibility: image i of a batch starts from noise drawn on the CPU, in float32,
by `torch.Generator("cpu").manual_seed(request.seed + i)` with shape (1, 4, H/8, W/8)
(diffusers' `randn_tensor` draws the same for a batch of one),
then moved to the model's device, so CPU and CUDA runs start from the same noise and
image i does not depend on the batch size. For img2img the same generator first
samples the VAE posterior, then the noise (diffusers' order). Stochastic samplers draw
their per-step noise from the same per-image generators.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from PIL import Image

from core.errors import LatentDeskError
from core.images import fit_image, image_to_tensor, load_image, tensor_to_images
from core.memory import check_fits
from core.model import DiffusionModel
from core.nets.unet import sdxl_added_condition
from core.precision import sampling_dtype
from core.request import GenerationRequest, check_request
from core.sampling.deep_cache import DeepCacheUNet
from core.sampling.denoiser import Conditioning, Denoiser
from core.sampling.guidance import CFGDenoiser, GuidanceScale
from core.sampling.sampler_names import resolve_schedule
from core.sampling.samplers import Step, get_sampler
from core.sampling.schedule_types import schedule_sigmas
from core.sampling.schedules import img2img_start, schedule_for
from core.sampling.speedups import steps_part
from core.text.prompts import PromptEmbedding, encode_pair


class StepInfo(NamedTuple):
    """What the caller hears after each step (the app's preview, the CLI's progress bar)."""

    i: int                 # 0-based step index
    total: int             # steps this run takes (fewer than request.steps for img2img)
    x: torch.Tensor        # the current noisy latents (B, 4, h, w)
    denoised: torch.Tensor  # the predicted clean latents x0 (B, 4, h, w)
    sigma: float
    guidance: float        # the guidance scale this step used


class Cancelled(Exception):
    """Raise from `on_step` (or set the `cancel` event) to stop; generate() returns the partial result."""


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list[Image.Image]      # decoded images; empty when cancelled
    seeds: list[int]               # the seed each image was drawn from
    cancelled: bool = False
    latents: torch.Tensor | None = None  # final latents, or the last x0 prediction when cancelled
    steps_done: int = 0


def generate(request: GenerationRequest, model: DiffusionModel,
             on_step: Callable[[StepInfo], None] | None = None,
             guidance: GuidanceScale | None = None,
             cancel: threading.Event | None = None) -> GenerationResult:
    """Run one request. `guidance` may be changed by another thread while this runs."""
    # 1. Check the request before anything large is allocated.
    sampler_name, schedule_type = resolve_schedule(request.sampler, request.schedule)
    sampler = get_sampler(sampler_name)
    check_request(request)
    if model.unet.config.in_channels != model.vae.config.z_channels:
        raise LatentDeskError(f"{model.name} is an inpainting model ({model.unet.config.in_channels} input channels); "
                              "inpainting is not supported yet, use a regular model")
    guidance = guidance if guidance is not None else GuidanceScale(request.guidance)
    check_fits(model, request.width, request.height, request.batch, guided=guidance.value != 1)
    seeds = [request.seed + i for i in range(request.batch)]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    with torch.no_grad():
        # 2. Encode the prompt and the negative prompt (same chunk count, so CFG batches them).
        cond, uncond = encode_pair(model.text_encoder, request.prompt, request.negative_prompt, request.clip_skip)
        schedule = schedule_for(model.family.zero_terminal_snr)

        # 3. The noise levels to walk down, and the starting latent.
        sigmas = schedule_sigmas(schedule_type, request.steps, schedule, sampler, xl=model.family.name == "sdxl")
        if request.is_img2img:
            start = img2img_start(request.steps, request.strength)
            sigmas = sigmas[start:]
            init = init_latents(model, request, generators)
            x = init + draw(generators, init.shape[1:], model) * sigmas[0]
        else:
            factor = model.vae.config.downsample_factor
            shape = (model.vae.config.z_channels, request.height // factor, request.width // factor)
            x = draw(generators, shape, model) * sampler.init_noise_sigma(sigmas)
        x = x.to(sampling_dtype(model.dtype))

        # 4. The denoiser: UNet (or DeepCache's wrapper of it, core/sampling/deep_cache.py) → D(x, σ) → CFG.
        total = len(sigmas) - 1
        unet = model.unet
        if request.deep_cache_interval > 1:
            unet = DeepCacheUNet(model.unet, request.deep_cache_interval, request.deep_cache_blocks,
                                 full_first=steps_part(total, request.deep_cache_start))
        unguided_from = total - steps_part(total, request.guidance_cutoff)
        denoiser = CFGDenoiser(Denoiser(unet, model.prediction, schedule, quantize=sampler.quantize,
                                        network_dtype=model.dtype),
                               conditioning(model, cond, request), conditioning(model, uncond, request), guidance,
                               unguided_from=unguided_from if unguided_from < total else None)
        # The guidance slider's value is read afresh, and DeepCache's full-or-reuse decided, per step.
        step_ends = [denoiser.end_step] + ([unet.end_step] if isinstance(unet, DeepCacheUNet) else [])

        # 5. Sample, reporting every step; a cancel stops at the next step boundary.
        last = {"denoised": None, "steps": 0}

        def report(step: Step) -> None:
            last["denoised"], last["steps"] = step.denoised, step.i + 1
            if on_step is not None:
                on_step(StepInfo(step.i, total, step.x, step.denoised, float(step.sigma), denoiser.last_scale))
            for end_step in step_ends:
                end_step()
            if cancel is not None and cancel.is_set():
                raise Cancelled

        def noise(sigma, sigma_next):
            return draw(generators, x.shape[1:], model).to(x.dtype)

        try:
            latents = sampler(denoiser, x, sigmas.to(model.device), callback=report, noise=noise)
        except Cancelled:
            partial = last["denoised"]
            del x, denoiser
            gc.collect()
            return GenerationResult(request, [], seeds, cancelled=True, latents=partial, steps_done=last["steps"])

        # 6. Decode through the VAE, one image at a time to bound memory.
        images = [image for i in range(latents.shape[0]) for image in decode(model, latents[i:i + 1])]
    return GenerationResult(request, images, seeds, latents=latents, steps_done=total)


def conditioning(model: DiffusionModel, prompt: PromptEmbedding, request: GenerationRequest) -> Conditioning:
    y = None
    if model.family.pooled_text_y:
        y = prompt.pooled
    elif model.unet.config.adm_in_channels:
        # SDXL's micro-conditioning: original size = target size, no crop (what a user wants by default).
        h, w = request.height, request.width
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=prompt.pooled.device)
        y = sdxl_added_condition(prompt.pooled, time_ids)
    return Conditioning(prompt.context, y)


def draw(generators: list[torch.Generator], shape, model: DiffusionModel) -> torch.Tensor:
    """One standard-normal draw per image from its own CPU generator, then to the model's device."""
    return torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators]).to(model.device)


def init_latents(model: DiffusionModel, request: GenerationRequest, generators) -> torch.Tensor:
    """img2img's starting point: the init image, cropped to size, through the VAE encoder."""
    image = fit_image(load_image(request.init_image), request.width, request.height)
    pixels = image_to_tensor(image).to(model.device, model.vae.dtype)
    posterior = model.vae.encode(pixels)
    latents = [posterior.sample(g) for g in generators]
    return torch.cat(latents) * model.vae.config.scale_factor


def decode(model: DiffusionModel, latents: torch.Tensor) -> list[Image.Image]:
    return tensor_to_images(model.vae.decode_latents(latents).float().cpu())
