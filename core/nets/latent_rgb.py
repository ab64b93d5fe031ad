"""A cheap look at latents: one linear map from a latent pixel's channels to an RGB colour.

    fit_latent_to_rgb(vae) -> LatentToRGB     least squares on a few decodes of this very VAE
    LatentToRGB(latents) -> (3, h, w)         in about [-1, 1], one pixel per latent pixel

An SD latent pixel stands for an 8x8 patch, and its 4 channels say roughly what colour the
patch has. Previews between full VAE decodes use this map: a (3 x C) matrix product costs
nothing next to a UNet step. It is fitted when a model loads, not hard-coded, because every
VAE (SD 1.x, SDXL, the built-in one) encodes colour differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LatentToRGB:
    weight: Tensor        # (3, C)
    bias: Tensor          # (3,)
    r2: float             # share of the decoded colours' variance the map explains, on its fitting data

    def __call__(self, latents: Tensor) -> Tensor:
        """(C, h, w) latents as diffusion sees them → (3, h, w) colours in about [-1, 1]."""
        flat = latents.detach().to("cpu", torch.float32).flatten(1)          # (C, h*w)
        rgb = self.weight @ flat + self.bias[:, None]
        return rgb.reshape(3, *latents.shape[1:])


@torch.no_grad()
def fit_latent_to_rgb(vae, samples: int = 4, side: int = 16, seed: int = 0) -> LatentToRGB:
    """Decode `samples` smooth random latents (side x side) and solve for the best linear map.

    Smooth latents (4x4 noise, upsampled) decode to patches of fairly flat colour, like the
    blobs of an early diffusion step; white noise would decode to texture the map cannot use.
    """
    generator = torch.Generator().manual_seed(seed)
    channels = vae.config.z_channels
    coarse = torch.randn(samples, channels, 4, 4, generator=generator)
    latents = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    parameter = next(vae.parameters())
    pixels = vae.decode_latents(latents.to(parameter.device)).float().cpu().clamp(-1, 1)
    factor = pixels.shape[-1] // side
    colours = F.avg_pool2d(pixels, factor)                                   # one colour per latent pixel
    x = torch.cat([latents.permute(0, 2, 3, 1).reshape(-1, channels),
                   torch.ones(samples * side * side, 1)], dim=1)              # (N, C + 1)
    y = colours.permute(0, 2, 3, 1).reshape(-1, 3)                           # (N, 3)
    solution = torch.linalg.lstsq(x.double(), y.double()).solution.float()   # (C + 1, 3)
    residual = ((x @ solution - y) ** 2).sum()
    total = ((y - y.mean(dim=0)) ** 2).sum().clamp(min=1e-12)
    return LatentToRGB(solution[:channels].T.contiguous(), solution[channels].contiguous(),
                       float(1 - residual / total))
