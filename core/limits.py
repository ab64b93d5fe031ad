"""The limits on numbers from outside: how large a network a model file may describe, checked before
anything is built, and what an image's size and a request's settings may be.

A file states its architecture in a few bytes: a `latentdesk.config` entry, a diffusers
`config.json`, or key names such as `input_blocks.400.`. Building what it says costs time and
memory in proportion to those numbers, not to the file: `num_res_blocks: 400` took 10.8 s and
260 MB before the missing tensors were noticed, and 100,000 would hang the app. So every number
is checked here first: a whole number, within a limit. The limits are several times what any
released Stable Diffusion model uses (noted beside each), so they refuse only files that are broken
or hostile. At the limits a UNet builds on the meta device in 0.8 s and 40 MB (9,500 tensors; the VAE
0.1 s), and the loaders build one only after the numbers match the file's own tensor shapes
(core.loading.convert_unet.check_stated_unet, core.loading.convert_vae.check_stated_vae), so a file pays for what
it holds, not for what it claims. The checks of a whole network config are in core/loading/config_checks.py.

Each check raises `LatentDeskError` naming the setting, its value and the limit.

The rules themselves are here once, for every number that comes from outside: `Whole` and `Span` say what
they accept and why a value fails ("below 1"); `require` words the refusal for a request's settings
(core/request.py, which the infotext reader shares), `whole` for a model file's. `check_size` is the
rule for an image's width and height, in pixels.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable
from typing import NamedTuple

from core.errors import LatentDeskError, shown

MAX_CHANNELS = 4096            # any convolution's width; SDXL's widest is 1280, SD's VAE 512
MAX_VECTOR = 8192              # context_dim, adm_in_channels; SDXL: 2048 and 2816
MAX_LEVELS = 8                 # resolutions; SD's UNet and VAE have 4
MAX_BLOCKS = 16                # ResBlocks per level; SD: 2
MAX_DEPTH = 32                 # transformer blocks in one SpatialTransformer; SDXL: 10
MAX_TRANSFORMER_BLOCKS = 256   # in a whole UNet; SDXL: 70, SD1.5: 16
MAX_TEXT_LAYERS = 64           # CLIP text encoder layers; OpenCLIP bigG: 32
MAX_CONFIG_BYTES = 1024 * 1024  # a diffusers config.json (a UNet's is ~2 kB), read whole
MIN_SIDE = 64                  # an image's width or height, in pixels (check_size)
MAX_SIDE = 8192

NOT_WHOLE = "not a whole number"


# -- the rules for one number -----------------------------------------------------------------------

class BrokenRule(LatentDeskError):
    """A value its rule refuses. The message names the setting; `reason` says what is wrong without
    naming it ("below 1"), for a reader that names the setting its own way (the infotext reader)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class Whole(NamedTuple):
    """A whole number from `low` to `high` (None: no top). JSON's true/false and 2.0 are not whole numbers."""

    low: int
    high: int | None = None

    def wants(self) -> str:
        if self.high is None:
            return f"a whole number of at least {self.low}"
        return f"a whole number from {self.low} to {self.high}"

    def problem(self, value) -> str | None:
        """Why `value` breaks the rule, or None when it keeps it."""
        if isinstance(value, bool) or not isinstance(value, int):
            return NOT_WHOLE
        if value < self.low:
            return f"below {self.low}"
        if self.high is not None and value > self.high:
            return f"above {self.high}"
        return None


class Span(NamedTuple):
    """A finite number from `low` to `high`; `low_open` / `high_open` leave that end itself out."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def wants(self) -> str:
        """"a number", "a number above 0", "a number from 0 to below 1", "a number above 0 and at most 1"."""
        words = ["a number"]
        if self.low > -math.inf:
            words.append(f"above {self.low}" if self.low_open else f"from {self.low}")
        if self.high < math.inf:
            top = f"below {self.high}" if self.high_open else f"at most {self.high}"
            if self.low > -math.inf:
                top = f"and {top}" if self.low_open else f"to {top.removeprefix('at most ')}"
            words.append(top)
        return " ".join(words)

    def problem(self, value) -> str | None:
        """Why `value` breaks the rule, or None when it keeps it."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return "not a number"
        if not math.isfinite(value):
            return "not a finite number"
        if value < self.low or value > self.high:
            if self.low > -math.inf and self.high < math.inf:
                return f"outside {self.low}–{self.high}"
            return f"below {self.low}" if value < self.low else f"above {self.high}"
        if self.low_open and value == self.low:
            return f"not above {self.low}"
        if self.high_open and value == self.high:
            return f"not below {self.high}"
        return None


class OneOf(NamedTuple):
    """One of a few names (a setting's choices, as the window's box and the command line offer them)."""

    choices: tuple[str, ...]

    def wants(self) -> str:
        return "one of " + ", ".join(self.choices)

    def problem(self, value) -> str | None:
        return None if isinstance(value, str) and value in self.choices else "not one of them"


ANY_NUMBER = Span()                         # finite: NaN and infinity are refused
FRACTION = Span(0, 1, high_open=True)       # a share of the steps, 0 ≤ x < 1


def require(name: str, value, rule: Whole | Span | OneOf):
    """`value` if it keeps `rule`; else BrokenRule "<name> must be <what the rule wants>, not <value>"."""
    problem = rule.problem(value)
    if problem is not None:
        raise BrokenRule(f"{name} must be {rule.wants()}, not {shown(value)}", problem)
    return value


def whole(name: str, value, low: int, high: int) -> int:
    """`value` if it keeps Whole(low, high), worded for a model file's setting: the value comes first,
    as in every loader's message ("num_res_blocks 400 is not between 1 and 16")."""
    problem = Whole(low, high).problem(value)
    if problem == NOT_WHOLE:
        raise LatentDeskError(f"{name} must be a whole number, not {shown(value)}")
    if problem is not None:
        raise LatentDeskError(f"{name} {shown(value)} is not between {low} and {high}")
    return value


def positive_real(name: str, value) -> float:
    return float(require(name, value, Span(0, low_open=True)))


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise LatentDeskError(f"{name} must be true or false, not {shown(value)}")
    return value


def per_level(name: str, values, levels: int) -> tuple:
    if not isinstance(values, tuple | list) or len(values) != levels:
        raise LatentDeskError(f"{name} must list one value for each of the {levels} levels, not {shown(values)}")
    return tuple(values)


def numbered_parts(keys: Iterable[str], pattern: re.Pattern, what: str) -> int:
    """How many parts (blocks, layers) the keys number 0, 1, 2, ... in `pattern`'s first group.

    Numbered with no gap, so the count never exceeds the keys there are: one key named
    `input_blocks.100000.` must not make 100,001 blocks. The pattern's group should be `([0-9]{1,9})`:
    `int()` refuses more than 4,300 digits, and `\\d` matches digits of other scripts too.
    """
    numbers = {int(m[1]) for key in keys if (m := pattern.match(key))}
    count = len(numbers)
    if numbers != set(range(count)):
        gap = min(set(range(count + 1)) - numbers)
        raise LatentDeskError(f"{what} are numbered with a gap at {gap}")
    return count


def level_widths(network: str, channel_mult, base: int) -> list[int]:
    """Each level's width, base × channel_mult, with the level count and every width bounded."""
    mults = channel_mult if isinstance(channel_mult, tuple | list) else ()
    if not 1 <= len(mults) <= MAX_LEVELS:
        raise LatentDeskError(f"the {network} has {len(mults)} levels (channel_mult {shown(channel_mult)}); "
                              f"1 to {MAX_LEVELS} are supported")
    return [base * whole("channel_mult", m, 1, MAX_CHANNELS // base) for m in mults]


# -- image sizes ------------------------------------------------------------------------------------

def check_size(width, height, multiple: int = 8, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE) -> None:
    """LatentDeskError unless width and height are whole numbers of pixels the VAE can take.

    The VAE downsamples by 8, so each side must be a multiple of 8.
    """
    for label, side in (("width", width), ("height", height)):
        if isinstance(side, bool) or not isinstance(side, numbers.Integral):
            raise LatentDeskError(f"{label} must be a whole number of pixels, not {side!r}")
        if side < min_side:
            raise LatentDeskError(f"{label} {side} is too small; the smallest is {min_side}")
        if side > max_side:
            raise LatentDeskError(f"{label} {side} is too large; the largest is {max_side}")
        if side % multiple:
            nearest = min(max((side + multiple // 2) // multiple * multiple, min_side), max_side)  # ties up
            raise LatentDeskError(f"{label} {side} is not a multiple of {multiple}; try {nearest}")
