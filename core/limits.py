"""How large a network a model file may describe, checked before anything is built.

A file states its architecture in a few bytes: a `latentdesk.config` entry, a diffusers
`config.json`, or key names such as `input_blocks.400.`. Building what it says costs time and
memory in proportion to those numbers, not to the file: `num_res_blocks: 400` took 10.8 s and
260 MB before the missing tensors were noticed, and 100,000 would hang the app. So every number
is checked here first: a whole number, within a limit. The limits are several times what any
released Stable Diffusion model uses (noted beside each), so they refuse only files that are broken
or hostile. At the limits a UNet builds on the meta device in 0.8 s and 40 MB (9,500 tensors; the VAE
0.1 s), and the loaders build one only after the numbers match the file's own tensor shapes
(core.loading.convert_unet.check_stated_unet, core.loading.convert_vae.check_stated_vae), so a file pays for what
it holds, not for what it claims.

Each check raises `LatentDeskError` naming the setting, its value and the limit.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable

from core.errors import LatentDeskError, shown
from core.nets.unet import UNetConfig
from core.nets.vae import VAEConfig

MAX_CHANNELS = 4096            # any convolution's width; SDXL's widest is 1280, SD's VAE 512
MAX_VECTOR = 8192              # context_dim, adm_in_channels; SDXL: 2048 and 2816
MAX_LEVELS = 8                 # resolutions; SD's UNet and VAE have 4
MAX_BLOCKS = 16                # ResBlocks per level; SD: 2
MAX_DEPTH = 32                 # transformer blocks in one SpatialTransformer; SDXL: 10
MAX_TRANSFORMER_BLOCKS = 256   # in a whole UNet; SDXL: 70, SD1.5: 16
MAX_TEXT_LAYERS = 64           # CLIP text encoder layers; OpenCLIP bigG: 32


def whole(name: str, value, low: int, high: int) -> int:
    """`value` if it is a whole number from `low` to `high`; JSON's true/false and 2.0 are not."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LatentDeskError(f"{name} must be a whole number, not {shown(value)}")
    if not low <= value <= high:
        raise LatentDeskError(f"{name} {shown(value)} is not between {low} and {high}")
    return value


def positive_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise LatentDeskError(f"{name} must be a number above 0, not {shown(value)}")
    return float(value)


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


def check_unet_config(c: UNetConfig) -> None:
    mc = whole("model_channels", c.model_channels, 1, MAX_CHANNELS)
    widths = level_widths("UNet", c.channel_mult, mc)
    levels = len(widths)
    whole("in_channels", c.in_channels, 1, MAX_CHANNELS)
    whole("out_channels", c.out_channels, 1, MAX_CHANNELS)
    blocks = whole("num_res_blocks", c.num_res_blocks, 1, MAX_BLOCKS)
    depths = [whole("transformer_depth", d, 0, MAX_DEPTH) for d in per_level("transformer_depth",
                                                                                  c.transformer_depth, levels)]
    middle = whole("transformer_depth_middle", c.transformer_depth_middle, 0, MAX_DEPTH)
    for heads, width in zip(per_level("num_heads", c.num_heads, levels), widths, strict=True):
        whole("num_heads", heads, 1, width)
    whole("context_dim", c.context_dim, 1, MAX_VECTOR)
    if c.adm_in_channels is not None:
        whole("adm_in_channels", c.adm_in_channels, 1, MAX_VECTOR)
    flag("use_linear_in_transformer", c.use_linear_in_transformer)
    flag("coord_channels", c.coord_channels)
    _check_groups(c.norm_groups, [mc, *widths])
    # Levels, blocks and depths are each bounded; their product is what gets built.
    total = sum(d * (2 * blocks + 1) for d in depths) + middle
    if total > MAX_TRANSFORMER_BLOCKS:
        raise LatentDeskError(f"the UNet would have {total} transformer blocks; at most {MAX_TRANSFORMER_BLOCKS} "
                              "are supported")


def check_vae_config(c: VAEConfig) -> None:
    widths = level_widths("VAE", c.channel_mult, whole("base_channels", c.base_channels, 1, MAX_CHANNELS))
    whole("in_channels", c.in_channels, 1, MAX_CHANNELS)
    whole("out_channels", c.out_channels, 1, MAX_CHANNELS)
    whole("num_res_blocks", c.num_res_blocks, 1, MAX_BLOCKS)
    whole("z_channels", c.z_channels, 1, MAX_CHANNELS)
    positive_real("scale_factor", c.scale_factor)
    _check_groups(c.norm_groups, widths)


def _check_groups(groups, widths: list[int]) -> None:
    """GroupNorm needs every width to split evenly (torch raises a ValueError, or divides by zero, otherwise)."""
    whole("norm_groups", groups, 1, MAX_CHANNELS)
    if any(w % groups for w in widths):
        raise LatentDeskError(f"channel counts {sorted(set(widths))} do not split into {groups} norm groups "
                              "(norm_groups)")
