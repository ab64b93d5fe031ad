"""Where an inpainting run starts: its first latent, an inpainting model's extra input, and the blend.

    start = inpaint_start(model, plan, generators, sigmas, sampler, strength, masked_content)

The random draws come in diffusers' order (StableDiffusionInpaintPipeline.prepare_latents and
prepare_mask_latents), each image from its own generator, so a seed gives the same picture here and
there, stochastic samplers included:
1. the picture's VAE posterior sample, unless the run starts from pure noise with an inpainting model
   (strength 1: that pipeline never encodes the picture then);
2. the starting noise;
3. the masked picture's posterior sample. An ordinary model never uses it; its draw is still taken (one
   normal draw of the latent's shape, without running the encoder) so that the samplers' later noise
   matches.
At strength 1 the start is pure noise (as txt2img); below it, the picture's latent noised to the first
level (as img2img).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from core.images import image_to_tensor
from core.inpaint import InpaintPlan, masked_picture
from core.model import DiffusionModel

LATENT_NOISE, LATENT_NOTHING = "latent noise", "latent nothing"


@dataclass
class InpaintStart:
    x: Tensor                 # (B, C, h, w) the first latent
    init: Tensor              # (B, C, h, w) the picture's latent (zeros when it was never encoded)
    noise: Tensor             # (B, C, h, w) the starting noise, which the blend re-uses at every level
    latent_mask: Tensor       # (1, 1, h, w) 1 = repaint
    concat: Tensor | None     # (B, 5, h, w) an inpainting model's [mask, masked-picture latent]; None otherwise


def is_inpainting_model(model: DiffusionModel) -> bool:
    """A UNet that takes [latent, mask, masked latent]: 2·C + 1 input channels (9 for SD's 4-channel latents)."""
    return model.unet.config.in_channels == 2 * model.vae.config.z_channels + 1


def inpaint_start(model: DiffusionModel, plan: InpaintPlan, generators: list[torch.Generator], sigmas: Tensor,
                  init_noise_sigma: Tensor, strength: float, masked_content: str, soft_blend: bool) -> InpaintStart:
    vae = model.vae
    factor, channels = vae.config.downsample_factor, vae.config.z_channels
    size = (plan.picture.height // factor, plan.picture.width // factor)
    shape = (1, channels, *size)
    nine = is_inpainting_model(model)
    pure_noise = strength >= 1.0

    if nine and pure_noise:
        init = torch.zeros((len(generators), *shape[1:]), device=model.device)
    else:
        init = _encode(model, image_to_tensor(plan.picture), generators)
    noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]).to(model.device)
    if nine:
        masked = _encode(model, masked_picture(plan), generators)
        concat = torch.cat([plan.latent_mask(size, soft=False).to(masked).expand(len(generators), -1, -1, -1),
                            masked], dim=1)
    else:
        for g in generators:       # the masked picture's draw, taken so the later noise matches diffusers'
            torch.randn(shape, generator=g, dtype=torch.float32)
        concat = None

    latent_mask = plan.latent_mask(size, soft=soft_blend).to(model.device)
    start = init
    if masked_content in (LATENT_NOISE, LATENT_NOTHING):    # A1111: the masked part's latent replaced
        replaced = noise if masked_content == LATENT_NOISE else torch.zeros_like(init)
        start = init * (1 - latent_mask) + replaced * latent_mask
    x = noise * init_noise_sigma if pure_noise else start + noise * sigmas[0]
    return InpaintStart(x, init, noise, latent_mask, concat)


def _encode(model: DiffusionModel, pixels: Tensor, generators: list[torch.Generator]) -> Tensor:
    """One posterior sample per image, each from its own generator, scaled as the UNet sees latents."""
    posterior = model.vae.encode(pixels.to(model.device, model.vae.dtype))
    return torch.cat([posterior.sample(g) for g in generators]) * model.vae.config.scale_factor
