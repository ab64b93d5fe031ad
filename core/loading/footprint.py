"""What a model takes in memory once loaded, read off its safetensors headers before a weight is read,
so a model that cannot fit is refused with a message instead of the system killing the app."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from core import memory
from core.errors import ModelLoadError
from core.loading.safetensors_io import DTYPES, FLOAT_DTYPES, SafetensorsFile

# Checkpoints that carry a second copy of the UNet for training (EMA) never have it loaded.
UNLOADED_PREFIXES = ("model_ema.",)


def weights_bytes(path: Path, dtype: torch.dtype) -> int:
    """About what a model's networks take once loaded in `dtype`, read off its safetensors headers.

    A diffusers folder may hold a part twice (`x.safetensors` and `x.fp16.safetensors`), each maybe in
    shards (`x-00001-of-00002.safetensors`): every shard of one variant of each part is counted.
    Raises what reading a header raises (ModelLoadError, OSError).
    """
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
    needed, free = weights_bytes(path, dtype), memory.available_bytes(device)
    if free is not None and needed > 0.9 * free:
        raise ModelLoadError(path, f"needs about {needed / 2**30:.1f} GiB of memory to load, but only "
                                   f"{free / 2**30:.1f} GiB is free; close other programs, or choose half "
                                   "precision (bf16) to halve it")
