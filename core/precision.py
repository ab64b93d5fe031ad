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
import functools
import time
from pathlib import Path

import torch

from core.errors import LatentDeskError
from core.model import DiffusionModel

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
AUTO = "auto"        # bfloat16 where it pays (bf16_pays) for a full-size model, else float32
# A model's networks at least this large in float32 (SD1.5's are 4.3 GB) run in bfloat16 under AUTO; smaller
# ones (the built-in model, 70 MB) gain little and keep exact float32.
BF16_MIN_WEIGHT_BYTES = 1 << 30
BF16_UNITS = ("amx_bf16", "avx512_bf16")     # /proc/cpuinfo flags of CPUs with bfloat16 arithmetic
BF16_FASTER = 0.7     # the probe's bfloat16 convolution must take under this share of float32's time
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


@functools.cache
def bf16_pays() -> bool:
    """Whether bfloat16 networks are faster than float32 on this CPU: it has bfloat16 units (AMX or
    AVX-512 BF16, where /proc/cpuinfo says; elsewhere the probe alone decides) and a short probe (a
    UNet-sized matrix product, about 0.1 s in all) confirms it. Asked once per process.

    Measured on the development machine (a 2-core Xeon with AMX): float32 62 ms, bfloat16 12 ms for this
    product; a 3x3 convolution of 128 channels gained nothing, one of 320 channels 16x."""
    flags = _cpu_flags()
    if flags is not None and not flags & set(BF16_UNITS):
        return False
    return _probe_seconds(torch.bfloat16) < BF16_FASTER * _probe_seconds(torch.float32)


def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()}


def _probe_seconds(dtype: torch.dtype, repeats: int = 3) -> float:
    """The best of `repeats` runs of one SD1.5-sized feed-forward product (4096 tokens of 320 channels,
    widened 4x): the kind of work most of a UNet step is."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn((2048, 320), generator=generator).to(dtype)
    weight = torch.randn((320, 1280), generator=generator).to(dtype)
    with torch.no_grad():
        tokens @ weight          # the first call picks kernels: not timed
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            tokens @ weight
            best = min(best, time.perf_counter() - started)
    return best


def autocast_pays(device: torch.device) -> bool:
    """Whether a training step autocast to bfloat16 runs faster than in float32 on `device`.

    On a CPU without bfloat16 units PyTorch emulates the arithmetic: on a 2-core AMD EPYC with AVX2 alone,
    a 1024^3 bfloat16 matrix product ran at 0.0009 TFLOP/s against 0.11 in float32, so the built-in recipe's
    `bf16` setting would make a run some hundred times slower there instead of two to three times faster."""
    return device.type != "cpu" or bf16_pays()


def automatic_precision(weight_bytes_fp32: int, device: str | torch.device = "cpu") -> str:
    """What AUTO means for a model whose networks take `weight_bytes_fp32` in float32: "bfloat16" for a
    full-size model on a CPU where bf16 pays, else "float32" (GPUs and small models keep float32)."""
    if torch.device(device).type != "cpu" or weight_bytes_fp32 < BF16_MIN_WEIGHT_BYTES:
        return "float32"
    return "bfloat16" if bf16_pays() else "float32"

