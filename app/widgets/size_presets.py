"""The size presets: about the area a model family was trained at, in the common aspect ratios."""

from __future__ import annotations

import math

SIZE_STEP = 8              # the VAE downsamples by 8
MIN_SIDE, MAX_SIDE = 64, 4096
RATIOS = ((1, 1), (3, 4), (4, 3), (2, 3), (3, 2), (9, 16), (16, 9))


def size_presets(native: int) -> list[tuple[int, int]]:
    """Sizes with about the area the family was trained at (native²), one per common aspect
    ratio, sides rounded to multiples of 8; then a half-size square for quick drafts."""
    sizes = []
    for w, h in RATIOS:
        width = math.sqrt(native * native * w / h)
        sizes.append((round8(width), round8(width * h / w)))
    sizes.append((round8(native / 2),) * 2)
    return sizes


def round8(value: float) -> int:
    return max(MIN_SIDE, int(round(value / SIZE_STEP)) * SIZE_STEP)
