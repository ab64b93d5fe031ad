"""The recipe: a GenerationRequest and a model in, images out.

    generate(request, model, on_step=None, guidance=None, cancel=None, addons=None) -> GenerationResult

LoRAs (request.loras, then the prompt's A1111 tags `<lora:name:0.8>`) and embeddings (their names written
in the prompt or the negative prompt) are found by name in `addons` (core/fetch/addons.py; a LoRA given as
a path needs none) and put on the model for this run (core/loading/lora_session.py): its weights patched
in place, W0 restored bit for bit by the next run without them, nothing reloaded.

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
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch
from PIL import Image

from core.attention_maps import AttentionMaps, AttentionSettings, attention_maps, placed_in
from core.errors import LatentDeskError
from core.fetch.addons import AddOns, addon_name, embeddings_in, lora_path
from core.images import fit_image, image_to_tensor, load_image, load_mask, tensor_to_images
from core.inpaint import InpaintSettings, LatentBlend, extend_canvas, plan_inpaint
from core.inpaint_latents import inpaint_start, is_inpainting_model
from core.loading.lora_session import embeddings_in_use, use_embeddings, use_loras
from core.memory import check_fits
from core.metadata.hashing import embedding_hash, lora_hash
from core.model import DiffusionModel
from core.nets.taesd import taesd_file_for
from core.nets.unet import sdxl_added_condition
from core.precision import sampling_dtype
from core.request import GenerationRequest, check_loras, check_request
from core.sampling.attention_probe import CrossAttentionProbe, probing
from core.sampling.deep_cache import DeepCacheUNet
from core.sampling.denoiser import Conditioning, Denoiser
from core.sampling.guidance import CFGDenoiser, EmbeddedGuidance, GuidanceScale
from core.sampling.sampler_names import resolve_schedule
from core.sampling.samplers import Step, get_sampler
from core.sampling.schedule_types import schedule_sigmas
from core.sampling.schedules import img2img_start, schedule_for
from core.sampling.speedups import steps_part
from core.text.lora_tags import split_lora_tags
from core.text.prompt_words import prompt_words
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
    loras: tuple[tuple[str, str], ...] = ()       # (name, A1111 short hash) of each LoRA applied: "Lora hashes"
    embeddings: tuple[tuple[str, str], ...] = ()  # (name, A1111 short hash) of each embedding used: "TI hashes"
    mask: Image.Image | None = None     # an inpainting's mask at the output's size: saved beside the image
    notes: tuple[str, ...] = ()         # what was adjusted on the way (a mask scaled to the picture), for the user
    attention: list[AttentionMaps] | None = None   # per image, when asked for: where each word was attended


def generate(request: GenerationRequest, model: DiffusionModel,
             on_step: Callable[[StepInfo], None] | None = None,
             guidance: GuidanceScale | None = None,
             cancel: threading.Event | None = None, addons: AddOns | None = None,
             tiny_decoder: torch.nn.Module | None = None,
             attention: AttentionSettings | None = None) -> GenerationResult:
    """Run one request. `guidance` may be changed by another thread while this runs. `tiny_decoder`: the
    model's TAESD-like decoder, which a request for the "taesd" decoder draws its final image with.
    `attention`: also sum each word's cross-attention over the steps it names (core/attention_maps.py)."""
    # 1. Check the request before anything large is allocated; every LoRA and embedding named is found.
    sampler_name, schedule_type = resolve_schedule(request.sampler, request.schedule)
    sampler = get_sampler(sampler_name)
    check_request(request)
    prompt, tagged = split_lora_tags(request.prompt)     # A1111 reads tags from the prompt only
    loras = [(addon_name(spec), lora_path(spec, addons), weight)
             for spec, weight in check_loras(tuple(request.loras) + tuple(tagged))]
    embeddings = embeddings_in((prompt, request.negative_prompt), addons)
    plan = inpaint_plan(request, model)       # reads the picture and the mask now: a bad file fails here
    if request.decoder == "taesd" and tiny_decoder is None:
        taesd = taesd_file_for(model.family.name, model.vae.config.scale_factor)
        where = f"put {taesd} beside the model or in the models folder (`latentdesk models get " \
                f"{taesd.removesuffix('_decoder.safetensors')}` fetches it)" if taesd else "this model has none"
        raise LatentDeskError(f"Draft decoding needs a tiny decoder for {model.name}, and none was found: {where}; "
                              "or decode with the VAE")
    guidance = guidance if guidance is not None else GuidanceScale(request.guidance)
    check_fits(model, request.width, request.height, request.batch,
               guided=guidance.value != 1 and not embedded_guidance(model))
    seeds = [request.seed + i for i in range(request.batch)]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    with torch.no_grad():
        # 2. The LoRAs patched in (or the last run's taken out), the embeddings set; then the prompt and the
        #    negative prompt encoded (same chunk count, so CFG batches them).
        use_loras(model, [(path, weight) for _, path, weight in loras])
        use_embeddings(model, [path for _, path in embeddings])
        named = set(embeddings_in_use(model, prompt, request.negative_prompt))
        used = {"loras": tuple({name: lora_hash(path) for name, path, _ in loras}.items()),   # each name once
                "embeddings": tuple((name, embedding_hash(path)) for name, path in embeddings if name in named)}
        cond, uncond = encode_pair(model.text_encoder, prompt, request.negative_prompt, request.clip_skip)
        schedule = schedule_for(model.family.zero_terminal_snr)

        # 3. The noise levels to walk down, and the starting latent.
        sigmas = schedule_sigmas(schedule_type, request.steps, schedule, sampler, xl=model.family.name == "sdxl")
        blend = concat = None
        if plan is not None:
            # Inpainting (core/inpaint_latents.py): from pure noise at strength 1, as diffusers' pipeline.
            strength = request.strength if request.is_img2img else 1.0
            sigmas = sigmas[img2img_start(request.steps, strength):] if strength < 1 else sigmas
            start = inpaint_start(model, plan, generators, sigmas, sampler.init_noise_sigma(sigmas), strength,
                                  request.masked_content, soft_blend=request.mask_blur > 0)
            x, concat = start.x, start.concat
            if concat is None:     # an ordinary model: the latent outside the mask follows the picture
                blend = (start.init, start.noise, start.latent_mask)
        elif request.is_img2img:
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
        network = Denoiser(unet, model.prediction, schedule, quantize=sampler.quantize, network_dtype=model.dtype)
        if embedded_guidance(model):   # an LCM UNet: the scale is an input, one call a step
            denoiser = EmbeddedGuidance(network, conditioning(model, cond, request, concat), guidance,
                                        model.unet.config.time_cond_proj_dim)
        else:
            denoiser = CFGDenoiser(network, conditioning(model, cond, request, concat),
                                   conditioning(model, uncond, request, concat), guidance,
                                   unguided_from=unguided_from if unguided_from < total else None)
        if blend is not None:
            denoiser = LatentBlend(denoiser, *blend)
        # The guidance slider's value is read afresh, and DeepCache's full-or-reuse decided, per step.
        step_ends = [denoiser.end_step] + ([unet.end_step] if isinstance(unet, DeepCacheUNet) else [])
        probe = None
        if attention is not None:
            probe = CrossAttentionProbe(request.batch, tuple(x.shape[-2:]), attention.steps)
            step_ends.append(probe.end_step)

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
            with probing(model.unet, probe) if probe is not None else nullcontext():
                latents = sampler(denoiser, x, sigmas.to(model.device), callback=report, noise=noise)
        except Cancelled:
            partial = last["denoised"]
            del x, denoiser
            gc.collect()
            return GenerationResult(request, [], seeds, cancelled=True, latents=partial, steps_done=last["steps"],
                                    **used)

        if isinstance(denoiser, LatentBlend):
            latents = denoiser.final(latents)

        # 6. Decode through the VAE, one image at a time to bound memory; an inpainting's result is
        #    composited over its picture (exact outside the mask) and pasted back.
        draft = tiny_decoder if request.decoder == "taesd" else None
        images = [image for i in range(latents.shape[0]) for image in decode(model, latents[i:i + 1], draft)]
        if plan is not None:
            images = [plan.finish(image) for image in images]
            used["mask"], used["notes"] = plan.mask, plan.notes
        if probe is not None:
            words = [prompt_words(model.text_encoder.tokenizer, text, model.text_encoder.added_words)
                     for text in (prompt, request.negative_prompt)]
            maps = [attention_maps(probe, i, *words) for i in range(len(images))]
            if plan is not None and plan.box is not None:     # drawn on a cut-out: set back where it came from
                maps = [placed_in(m, plan.box, plan.canvas.size) for m in maps]
            used["attention"] = maps
    return GenerationResult(request, images, seeds, latents=latents, steps_done=total, **used)


def embedded_guidance(model: DiffusionModel) -> bool:
    """The model learnt its guidance (LCM's guidance embedding): no CFG batch, no negative prompt."""
    return model.unet.config.time_cond_proj_dim is not None


def conditioning(model: DiffusionModel, prompt: PromptEmbedding, request: GenerationRequest,
                 concat: torch.Tensor | None = None) -> Conditioning:
    y = None
    if model.family.pooled_text_y:
        y = prompt.pooled
    elif model.unet.config.adm_in_channels:
        # SDXL's micro-conditioning: original size = target size, no crop (what a user wants by default).
        h, w = request.height, request.width
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=prompt.pooled.device)
        y = sdxl_added_condition(prompt.pooled, time_ids)
    return Conditioning(prompt.context, y, concat)


def inpaint_plan(request: GenerationRequest, model: DiffusionModel):
    """The inpainting job a request asks for (a mask, or outpainting), or None for plain txt2img/img2img.

    An inpainting model always inpaints: without a picture it draws as if everything were masked on a
    grey picture (what it was trained to do then).
    """
    settings = InpaintSettings(request.mask_blur, request.masked_content, request.inpaint_area,
                               request.inpaint_padding)
    if request.mask is None and request.outpaint is None:
        if not is_inpainting_model(model):
            return None
        if not request.is_img2img:
            grey = Image.new("RGB", (request.width, request.height), (128, 128, 128))
            return plan_inpaint(grey, Image.new("L", grey.size, 255), request.width, request.height,
                                InpaintSettings(mask_blur=0))
        raise LatentDeskError(f"{model.name} is an inpainting model: give it a mask too (white = repaint), "
                              "or use it without a picture")
    if not request.is_img2img:
        raise LatentDeskError("Inpainting needs a picture to repaint (the init image), besides the mask")
    picture = load_image(request.init_image)
    mask = load_mask(request.mask) if request.mask is not None else None
    if request.outpaint is not None:
        picture, mask, _ = extend_canvas(picture, mask, tuple(request.outpaint))
    return plan_inpaint(picture, mask, request.width, request.height, settings)


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


def decode(model: DiffusionModel, latents: torch.Tensor, tiny_decoder: torch.nn.Module | None = None) -> list[Image.Image]:
    """Latents (as the UNet sees them) to images: through the VAE, or a tiny decoder when one is given.
    Also "Final" for a draft: the kept latents of a run re-decoded through the VAE, nothing re-sampled."""
    if tiny_decoder is not None:
        return tensor_to_images(tiny_decoder(latents.to(next(tiny_decoder.parameters()).device)).float().cpu())
    return tensor_to_images(model.vae.decode_latents(latents).float().cpu())
