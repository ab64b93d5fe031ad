"""How a run's seed is chosen from the seed box: the number typed there, or a fresh random one.

A fresh one is drawn every run while "Random" is checked, and once when the box is empty (the box
then shows it, so the next run repeats it). A Live run keeps the last seed even in Random mode,
so the picture changes only by the edit that started it.
"""

from __future__ import annotations

import enum
import secrets

# The seed box's range, A1111's; image i of a batch uses seed + i. The engine itself takes seeds up
# to core.request.MAX_SEED (torch's range).
FORM_MAX_SEED = 2**32 - 1


class SeedMode(enum.Enum):
    TYPED = "typed"     # the number in the box
    RANDOM = "random"   # "Random" checked: a new seed every run
    EMPTY = "empty"     # nothing typed: one is drawn, and shown


def random_seed() -> int:
    return secrets.randbelow(FORM_MAX_SEED + 1)


def seed_for_run(mode: SeedMode, typed: int, last: int | None, live: bool) -> tuple[int, bool]:
    """The next run's seed, and whether it was drawn just now (the box should show it)."""
    if live and mode is SeedMode.RANDOM and last is not None:
        return last, False
    if mode is not SeedMode.TYPED:
        return random_seed(), True
    return typed, False
