"""Approximate speed-ups a user can switch on; both are off by default and change the image a little.

- DeepCache (core/sampling/deep_cache.py): after the first `deep_cache_start` fraction of the steps (all run in
  full), the whole UNet runs on one sampler step in `deep_cache_interval`; the steps between run its
  `deep_cache_blocks` shallowest input and output blocks and reuse the deep features of the last full step.
- Guidance cut-off (core/sampling/guidance.py): the last `guidance_cutoff` fraction of the steps runs without
  classifier-free guidance (scale 1), one UNet batch of B rows instead of 2B.

The defaults below are what `--deep-cache` / `--guidance-cutoff` without a value and the app use,
chosen by `latentdesk bench compare --only approx approx-builtin` (numbers in docs/ARCHITECTURE.md).
The rules the four settings keep are core/request.py's, with the other settings'. This module imports no torch:
the window shows these settings before the engine loads.
"""

from __future__ import annotations

import math

DEEP_CACHE_INTERVAL = 3   # one full UNet step in three
DEEP_CACHE_BLOCKS = 1     # reuse steps run input block 0 (conv_in) and the last output block
DEEP_CACHE_START = 0.35   # the first 35 % of the steps run in full: they lay the image out
GUIDANCE_CUTOFF = 0.3     # the last 30 % of the steps unguided
MAX_DEEP_CACHE_INTERVAL = 1000


def steps_part(total: int, fraction: float) -> int:
    """fraction·total steps, rounded half up: how many run unguided, or in full before DeepCache starts."""
    return min(total, math.floor(fraction * total + 0.5))
