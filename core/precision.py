"""bfloat16 networks on the CPU: an approximate speed-up the user switches on (off by default).

On CPUs with AMX or AVX-512 BF16 units, as this project's development machine has (a Xeon with AMX),
oneDNN runs bfloat16 convolutions and matrix products several times faster than float32: one SD1.5
UNet call at 512x512, batch 2, took 2.1 s against 6.7 s there. The weights take half the memory too.
The price is precision: bfloat16 keeps 8 bits of mantissa, so the image changes a little (the
measured PSNR is in docs/PERFORMANCE.md). On a CPU without those units it can be slower than float32.

Only the networks run in bfloat16. The sampler's arithmetic (the latent it walks down and each
step's update) stays float32, and the UNet's input and output are converted at its boundary
(core/sampling/denoiser.py): rounding every step's small update to 8 bits would add up over the steps.
"""

from __future__ import annotations

import copy

import torch

from core.errors import LatentDeskError
from core.model import DiffusionModel

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PRECISION_NAMES = {dtype: name for name, dtype in PRECISIONS.items()} | {torch.float16: "float16"}


def precision_dtype(name: str) -> torch.dtype:
    """"float32" / "bfloat16" -> the dtype, or a message naming the choices."""
    if name not in PRECISIONS:
        raise LatentDeskError(f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    return PRECISIONS[name]


def sampling_dtype(network_dtype: torch.dtype) -> torch.dtype:
    """The dtype the sampler's latent is kept in for networks of `network_dtype`.

    float16 stays as it was (GPUs, where latents and networks share it, as in diffusers).
    """
    return torch.float32 if network_dtype == torch.bfloat16 else network_dtype


def precision_name(model: DiffusionModel) -> str | None:
    """What the image's metadata records: None for float32 (exact), else the format's name."""
    return None if model.dtype == torch.float32 else PRECISION_NAMES.get(model.dtype, str(model.dtype))


def at_precision(model: DiffusionModel, dtype: torch.dtype) -> DiffusionModel:
    """A copy of `model` with its three networks in `dtype` (the original is left as it is)."""
    if model.dtype == dtype:
        return model
    return model.replace(**{part: copy.deepcopy(getattr(model, part)).to(dtype)
                            for part in ("unet", "vae", "text_encoder")})
