"""Whole network configs checked against core/limits.py before anything is built from them: each
number bounded, and what no single number shows (heads per width, norm groups per width, the total
count of transformer blocks)."""

from __future__ import annotations

from core.errors import LatentDeskError, shown
from core.limits import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    MAX_DEPTH,
    MAX_TRANSFORMER_BLOCKS,
    MAX_VECTOR,
    flag,
    level_widths,
    per_level,
    positive_real,
    whole,
)
from core.nets.unet import UNetConfig
from core.nets.vae import VAEConfig


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
    if c.time_cond_proj_dim is not None:
        whole("time_cond_proj_dim", c.time_cond_proj_dim, 1, MAX_VECTOR)
    _check_cross_only(c.cross_attention_only, depths)
    _check_groups(c.norm_groups, [mc, *widths])
    # Levels, blocks and depths are each bounded; their product is what gets built.
    total = sum(d * (2 * blocks + 1) for d in depths) + middle
    if total > MAX_TRANSFORMER_BLOCKS:
        raise LatentDeskError(f"the UNet would have {total} transformer blocks; at most {MAX_TRANSFORMER_BLOCKS} "
                              "are supported")


def _check_cross_only(levels, depths: list[int]) -> None:
    """Distinct levels that exist and have transformer blocks to strip."""
    if not isinstance(levels, tuple | list):
        raise LatentDeskError(f"cross_attention_only must list levels, not {shown(levels)}")
    for level in levels:
        whole("cross_attention_only level", level, 0, len(depths) - 1)
        if not depths[level]:
            raise LatentDeskError(f"cross_attention_only names level {level}, which has no transformer blocks")
    if len(set(levels)) != len(levels):
        raise LatentDeskError(f"cross_attention_only names a level twice: {shown(levels)}")


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
