"""Will a generation fit in memory? Estimated before anything large is allocated.

The factors were measured on SD1.5-shaped networks in fp32 on the CPU (peak resident
memory above the loaded weights): UNet at 512x512, batch 2 (guidance), ~585 MiB, i.e.
about 32 float32 values per latent pixel and model channel; VAE decode at 512x512
~1 GiB, i.e. about 8 float32 values per output pixel and base channel. They scale
linearly because attention runs through fused (flash) kernels.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import psutil
import torch

from core.errors import LatentDeskError, ModelLoadError

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
    try:        # psutil reads it on Linux (MemAvailable), Windows and macOS alike
        return int(psutil.virtual_memory().available)
    except Exception:       # noqa: BLE001 - an exotic system where it cannot tell: no check, not a crash
        return None


def check_fits(model, width: int, height: int, batch: int, guided: bool) -> None:
    needed = activation_bytes(model, width, height, batch, guided)
    free = available_bytes(model.device)
    if free is not None and needed > 0.9 * free:
        raise LatentDeskError(
            f"{width}x{height} (batch {batch}) needs about {needed / 2**30:.1f} GiB of working memory, "
            f"but only {free / 2**30:.1f} GiB is free; choose a smaller size or batch")


# Checkpoints that carry a second copy of the UNet for training (EMA) never have it loaded.
UNLOADED_PREFIXES = ("model_ema.",)


def weights_bytes(path: Path, dtype: torch.dtype) -> int:
    """About what a model's networks take once loaded in `dtype`, read off its safetensors headers.

    A diffusers folder may hold a part twice (`x.safetensors` and `x.fp16.safetensors`), each maybe in
    shards (`x-00001-of-00002.safetensors`): every shard of one variant of each part is counted.
    Raises what reading a header raises (ModelLoadError, OSError).
    """
    from core.loading.safetensors_io import DTYPES, FLOAT_DTYPES, SafetensorsFile

    total = 0
    for file in _one_variant_each(path) if path.is_dir() else [path]:
        for key, entry in SafetensorsFile(file).entries.items():
            if key.startswith(UNLOADED_PREFIXES):
                continue
            itemsize = dtype.itemsize if entry.dtype in FLOAT_DTYPES else DTYPES[entry.dtype].itemsize
            total += math.prod(entry.shape) * itemsize
    return total


_VARIANT = re.compile(r"\.(\w+?)(?:-\d+-of-\d+)?\.safetensors$")     # "fp16" in x.fp16-00001-of-00002.safetensors


def _one_variant_each(folder: Path) -> list[Path]:
    """The weight files of a diffusers folder, one variant per part's folder (the plain one if there is one)."""
    by_part: dict[Path, dict[str, list[Path]]] = {}
    for file in sorted(folder.rglob("*.safetensors")):
        variant = m[1] if (m := _VARIANT.search(file.name)) else ""
        by_part.setdefault(file.parent, {}).setdefault(variant, []).append(file)
    return [file for variants in by_part.values() for file in variants.get("", variants[min(variants)])]


def check_load_fits(path: Path, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, before reading a weight, a model that cannot fit in the memory that is free."""
    needed, free = weights_bytes(path, dtype), available_bytes(device)
    if free is not None and needed > 0.9 * free:
        raise ModelLoadError(path, f"needs about {needed / 2**30:.1f} GiB of memory to load, but only "
                                   f"{free / 2**30:.1f} GiB is free; close other programs, or choose half "
                                   "precision (bf16) to halve it")
