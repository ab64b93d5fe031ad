"""Approximate speed-ups a user can switch on; both are off by default and change the image a little.

- DeepCache (core/sampling/deep_cache.py): after the first `deep_cache_start` fraction of the steps (all run in
  full), the whole UNet runs on one sampler step in `deep_cache_interval`; the steps between run its
  `deep_cache_blocks` shallowest input and output blocks and reuse the deep features of the last full step.
- Guidance cut-off (core/sampling/guidance.py): the last `guidance_cutoff` fraction of the steps runs without
  classifier-free guidance (scale 1), one UNet batch of B rows instead of 2B.

The defaults below are what `--deep-cache` / `--guidance-cutoff` without a value and the app use,
chosen by `latentdesk bench compare --only approx approx-builtin` (numbers in docs/ARCHITECTURE.md).
This module imports no torch: the window checks and shows these settings before the engine loads.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from core.errors import LatentDeskError

if TYPE_CHECKING:
    from core.request import GenerationRequest

DEEP_CACHE_INTERVAL = 3   # one full UNet step in three
DEEP_CACHE_BLOCKS = 1     # reuse steps run input block 0 (conv_in) and the last output block
DEEP_CACHE_START = 0.35   # the first 35 % of the steps run in full: they lay the image out
GUIDANCE_CUTOFF = 0.3     # the last 30 % of the steps unguided
MAX_DEEP_CACHE_INTERVAL = 1000


def check_speedups(request: GenerationRequest) -> None:
    """Refuse settings that cannot work, with a message a user understands."""
    interval, blocks = request.deep_cache_interval, request.deep_cache_blocks
    if not _whole(interval) or not 1 <= interval <= MAX_DEEP_CACHE_INTERVAL:
        raise LatentDeskError(f"The deep cache interval must be a whole number from 1 (off: the whole UNet every "
                              f"step) to {MAX_DEEP_CACHE_INTERVAL}, not {interval!r}.")
    if not _whole(blocks) or blocks < 1:
        raise LatentDeskError(f"The deep cache blocks (how many shallow UNet blocks run on the cached steps) "
                              f"must be a whole number from 1, not {blocks!r}.")
    if not _fraction(request.deep_cache_start):
        raise LatentDeskError(f"The deep cache start (the fraction of the first steps run in full) must be from 0 "
                              f"to below 1, not {request.deep_cache_start!r}.")
    if not _fraction(request.guidance_cutoff):
        raise LatentDeskError(f"The guidance cut-off (the fraction of the last steps run without guidance) "
                              f"must be from 0 (off) to below 1, not {request.guidance_cutoff!r}.")


def steps_part(total: int, fraction: float) -> int:
    """fraction·total steps, rounded half up: how many run unguided, or in full before DeepCache starts."""
    return min(total, math.floor(fraction * total + 0.5))


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fraction(value: object) -> bool:
    """0 ≤ value < 1 (NaN fails the comparison)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1
