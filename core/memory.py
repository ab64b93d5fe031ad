"""Will a generation fit in memory? Estimated before anything large is allocated.

The factors were measured on SD1.5-shaped networks in fp32 on the CPU (peak resident
memory above the loaded weights): UNet at 512x512, batch 2 (guidance), ~585 MiB, i.e.
about 32 float32 values per latent pixel and model channel; VAE decode at 512x512
~1 GiB, i.e. about 8 float32 values per output pixel and base channel. They scale
linearly because attention runs through fused (flash) kernels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import LatentDeskError

UNET_VALUES_PER_LATENT_PIXEL_CHANNEL = 32
VAE_VALUES_PER_PIXEL_CHANNEL = 8


def activation_bytes(model, width: int, height: int, batch: int, guided: bool) -> int:
    """Peak working memory of one generation beyond the weights (VAE decodes one image at a time)."""
    itemsize = model.dtype.itemsize
    latent_pixels = (width // 8) * (height // 8)
    passes = batch * (2 if guided else 1)
    unet = passes * latent_pixels * model.unet.config.model_channels * UNET_VALUES_PER_LATENT_PIXEL_CHANNEL
    vae = width * height * model.vae.config.base_channels * VAE_VALUES_PER_PIXEL_CHANNEL
    return max(unet, vae) * itemsize


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device`, or None where we cannot tell."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def check_fits(model, width: int, height: int, batch: int, guided: bool) -> None:
    needed = activation_bytes(model, width, height, batch, guided)
    free = available_bytes(model.device)
    if free is not None and needed > 0.9 * free:
        raise LatentDeskError(
            f"{width}x{height} (batch {batch}) needs about {needed / 2**30:.1f} GiB of working memory, "
            f"but only {free / 2**30:.1f} GiB is free; choose a smaller size or batch")
