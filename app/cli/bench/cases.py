"""The in-process comparisons: one UNet step, one VAE decode, txt2img end to end, the built-in model.

    unet_step_inputs(pair, device), vae_decode_inputs(pair, device): the inputs both sides are timed on
    unet_step_work(pair, device) / vae_decode_work(pair, device) -> {"ours": fn, "diffusers": fn}
    unet_step_case, vae_decode_case, txt2img_case(pair, device) -> Case
    builtin_case(device, dtype, steps) -> Case | None (None: no built-in model installed)
    load_builtin(device, dtype), builtin_request(model, steps): that model and what the app asks of it

The UNet and VAE cases first run both sides once on the very inputs they are timed on and record
how far the outputs differ: a ratio means something only if both computed the same thing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.cli.bench.pair import ModelPair
from app.cli.bench.preview import fast_preview, vae_preview
from app.cli.bench.reference import diffusers_pipeline
from app.cli.bench.specs import CLIP_TOKENS
from app.cli.bench.timing import Case, timed
from core.generate import generate
from core.model import DiffusionModel
from core.request import GenerationRequest

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
BUILTIN_PROMPT = "a large red star in the top left corner on a blue background"
TIMESTEP = 601.0   # any mid-schedule step; the cost of a UNet call does not depend on it


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|: one number, scale-free, that any real mismatch makes large."""
    if ours.shape != theirs.shape:
        raise ValueError(f"outputs differ in shape: ours {tuple(ours.shape)}, diffusers {tuple(theirs.shape)}")
    ours, theirs = ours.float(), theirs.float()
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def unet_step_inputs(pair: ModelPair, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One guided step's UNet inputs: batch 2 (cond + uncond) latents, timesteps and text context."""
    spec, dtype = pair.spec, pair.ours.dtype
    g = torch.Generator().manual_seed(1)
    x = torch.randn(spec.batch, 4, spec.latent_size, spec.latent_size, generator=g).to(device, dtype)
    t = torch.full((spec.batch,), TIMESTEP, device=device)
    context = torch.randn(spec.batch, CLIP_TOKENS, spec.context_dim, generator=g).to(device, dtype)
    return x, t, context


def unet_step_work(pair: ModelPair, device) -> dict[str, Callable[[], torch.Tensor]]:
    """One guided step's UNet call on both sides."""
    x, t, context = unet_step_inputs(pair, device)
    return {"ours": lambda: pair.ours.unet(x, t, context),
            "diffusers": lambda: pair.theirs["unet"](x, t, encoder_hidden_states=context).sample}


def vae_decode_inputs(pair: ModelPair, device) -> torch.Tensor:
    """One image's unscaled latents (1, 4, h, w)."""
    spec = pair.spec
    z = torch.randn(1, 4, spec.latent_size, spec.latent_size, generator=torch.Generator().manual_seed(2))
    return z.to(device, pair.ours.dtype)


def vae_decode_work(pair: ModelPair, device) -> dict[str, Callable[[], torch.Tensor]]:
    """One image's latents to pixels (the decoder alone, as both pipelines call it)."""
    z = vae_decode_inputs(pair, device)
    return {"ours": lambda: pair.ours.vae.decode(z),
            "diffusers": lambda: pair.theirs["vae"].decode(z).sample}


def _network_case(name: str, title: str, work: dict[str, Callable[[], torch.Tensor]], device, details: dict) -> Case:
    with torch.no_grad():
        details["max_relative_difference"] = relative_difference(work["ours"](), work["diffusers"]())
    return Case(name, title, {side: timed(fn, device) for side, fn in work.items()}, details=details)


def unet_step_case(pair: ModelPair, device) -> Case:
    spec = pair.spec
    latents = (spec.batch, 4, spec.latent_size, spec.latent_size)
    size, latent = spec.image_size, spec.latent_size
    title = f"UNet step, {size}x{size} (batch {spec.batch}, {latent}x{latent} latents)"
    return _network_case("unet", title, unet_step_work(pair, device),
                         device, {"latents": latents, "context": (spec.batch, CLIP_TOKENS, spec.context_dim)})


def vae_decode_case(pair: ModelPair, device) -> Case:
    spec = pair.spec
    return _network_case("vae", f"VAE decode, {spec.image_size}x{spec.image_size}", vae_decode_work(pair, device),
                         device, {"latents": (1, 4, spec.latent_size, spec.latent_size),
                                  "image": (1, 3, spec.image_size, spec.image_size)})


def txt2img_case(pair: ModelPair, device) -> Case:
    """The whole recipe on both sides: prompt encoding, every guided step, VAE decode, PIL image."""
    spec, model = pair.spec, pair.ours
    request = GenerationRequest(prompt=PROMPT, steps=spec.steps, guidance=spec.guidance, sampler=spec.sampler,
                                width=spec.image_size, height=spec.image_size)
    pipe = diffusers_pipeline(pair.theirs)
    fast, vae = fast_preview(model), vae_preview(model)

    def diffusers_run():
        generator = torch.Generator("cpu").manual_seed(request.seed)   # CPU noise, as ours draws it
        return pipe(PROMPT, num_inference_steps=spec.steps, guidance_scale=spec.guidance, height=spec.image_size,
                    width=spec.image_size, generator=generator, output_type="pil").images

    contenders = {"ours, preview off": timed(lambda: generate(request, model), device),
                  "ours, fast preview every step": timed(lambda: generate(request, model, on_step=fast), device),
                  "ours, VAE preview every step": timed(lambda: generate(request, model, on_step=vae), device),
                  "diffusers": timed(diffusers_run, device)}
    return Case("txt2img", f"txt2img end to end, {spec.image_size}x{spec.image_size}, {spec.steps} steps",
                contenders, details={"steps": spec.steps, "guidance": spec.guidance, "prompt": PROMPT,
                                     "sampler": f"ours {spec.sampler!r}, diffusers EulerDiscreteScheduler",
                                     "size": spec.image_size})


def load_builtin(device, dtype: torch.dtype) -> DiffusionModel | None:
    """The built-in model, or None when resources/models/ has none."""
    from core.loading.checkpoint import load_model
    from core.resources import builtin_model_path

    path = builtin_model_path()
    return load_model(path, dtype=dtype, device=device) if path.is_file() else None


def builtin_request(model: DiffusionModel, steps: int | None = None) -> GenerationRequest:
    """What the app makes on the built-in model: its own size, steps, guidance and sampler."""
    family = model.family
    return GenerationRequest(prompt=BUILTIN_PROMPT, steps=steps or family.default_steps,
                             guidance=family.default_guidance, sampler=family.default_sampler,
                             width=family.default_size, height=family.default_size)


def builtin_case(device, dtype: torch.dtype, steps: int | None = None) -> Case | None:
    """Ours only: there is no diffusers build of the built-in model to compare with."""
    model = load_builtin(device, dtype)
    if model is None:
        return None
    path = model.source
    request = builtin_request(model, steps)
    fast, vae = fast_preview(model), vae_preview(model)
    contenders = {"ours, preview off": timed(lambda: generate(request, model), device),
                  "ours, fast preview every step": timed(lambda: generate(request, model, on_step=fast), device),
                  "ours, VAE preview every step": timed(lambda: generate(request, model, on_step=vae), device)}
    return Case("builtin", f"built-in model end to end, {request.width}x{request.height}, {request.steps} steps",
                contenders, baseline=None,
                details={"model": str(path), "steps": request.steps, "sampler": request.sampler,
                         "guidance": request.guidance, "size": request.width})
