"""Will a generation fit in memory? Estimated before anything large is allocated.

The factors were measured on SD1.5-shaped networks in fp32 on the CPU (peak resident
memory above the loaded weights): UNet at 512x512, batch 2 (guidance), ~585 MiB, i.e.
about 32 float32 values per latent pixel and model channel; VAE decode at 512x512
~1 GiB, i.e. about 8 float32 values per output pixel and base channel. They scale
linearly because attention runs through fused (flash) kernels.

What a model's weights take, before loading it, is read off its file headers in
core/loading/footprint.py.
"""

from __future__ import annotations

import psutil
import torch

from core.errors import LatentDeskError

UNET_VALUES_PER_LATENT_PIXEL_CHANNEL = 32
VAE_VALUES_PER_PIXEL_CHANNEL = 8

# The working memory the generation being started needs, as check_fits last estimated it. The bf16 weight
# packs (core/nets/packed_weights.py) are made during the run's first step and leave at least this much
# free, so a pack never takes the memory check_fits found for the run itself.
_working_bytes = 0


def working_bytes() -> int:
    return _working_bytes


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
    try:        # psutil reads it on Linux (MemAvailable), Windows and macOS alike
        return int(psutil.virtual_memory().available)
    except Exception:       # noqa: BLE001 - an exotic system where it cannot tell: no check, not a crash
        return None


def check_fits(model, width: int, height: int, batch: int, guided: bool) -> None:
    global _working_bytes
    needed = _working_bytes = activation_bytes(model, width, height, batch, guided)
    free = available_bytes(model.device)
    if free is not None and needed > 0.9 * free:
        raise LatentDeskError(
            f"{width}x{height} (batch {batch}) needs about {needed / 2**30:.1f} GiB of working memory, "
            f"but only {free / 2**30:.1f} GiB is free; choose a smaller size or batch")

