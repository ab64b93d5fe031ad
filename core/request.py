"""What the user asked for: one frozen value, written into the PNG and read back from it."""

from __future__ import annotations

from dataclasses import dataclass

from core.sampling.speedups import DEEP_CACHE_BLOCKS, DEEP_CACHE_START

MAX_SEED = 2**64 - 1       # torch.Generator.manual_seed's range; A1111's UI stays below 2**32


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    guidance: float = 7.0          # classifier-free guidance scale; 1 = no guidance
    sampler: str = "DPM++ 2M Karras"  # A1111's names (core/sampling/samplers.py SAMPLERS)
    seed: int = 0                  # image i of a batch uses seed + i
    width: int = 512
    height: int = 512
    batch: int = 1
    clip_skip: int = 1             # A1111's counting: 1 = the family's own layer
    init_image: str | None = None  # img2img: path of the starting image
    strength: float = 0.75         # img2img: 1 = start from pure noise, 0.1 = keep nearly all of it
    model: str = "builtin"         # "builtin" or the model's path; the PNG records its name and hash
    # Approximate speed-ups (core/sampling/speedups.py), off by default; the PNG records them only when on.
    deep_cache_interval: int = 1   # DeepCache: the whole UNet every N-th step, deep features reused between; 1 = off
    deep_cache_blocks: int = DEEP_CACHE_BLOCKS  # the shallow UNet blocks that still run on the reused steps
    deep_cache_start: float = DEEP_CACHE_START  # DeepCache: this first fraction of the steps runs in full
    guidance_cutoff: float = 0.0   # this last fraction of the steps runs unguided (scale 1); 0 = off

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None
