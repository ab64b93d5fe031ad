"""VAE weights from other layouts into ours (the original LDM keys of core/nets/vae.py).

Two sources: a diffusers `vae/` folder (config.json + diffusers key names), and
single-file checkpoints, whose config is read off the tensor shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields

import torch
from torch import Tensor

from core.errors import LatentDeskError, shown
from core.limits import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    MAX_LEVELS,
    numbered_parts,
    positive_real,
    whole,
)
from core.loading.config_checks import check_vae_config
from core.nets.vae import AutoencoderKL, VAEConfig

# Mid-block attention weights, 1x1 convs in the original. diffusers stores them as
# Linear (C, C), and so do some single files that went through diffusers and back.
_ATTN_WEIGHT = re.compile(r"(^|\.)mid\.attn_1\.(q|k|v|proj_out)\.weight$")

_VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_LEVEL_KEY = re.compile(r"encoder\.down\.([0-9]{1,9})\.")
_BLOCK_KEY = re.compile(r"encoder\.down\.0\.block\.([0-9]{1,9})\.")
_DIFFUSERS_LEVEL_KEY = re.compile(r"encoder\.down_blocks\.([0-9]{1,9})\.")
_DIFFUSERS_BLOCK_KEY = re.compile(r"encoder\.down_blocks\.0\.resnets\.([0-9]{1,9})\.")


# --- diffusers -> ours -------------------------------------------------------

def vae_config_from_diffusers(cfg: Mapping) -> VAEConfig:
    """VAEConfig from a diffusers `vae/config.json`; refuses what our module cannot be."""
    kind = cfg.get("_class_name", "AutoencoderKL")
    if kind != "AutoencoderKL":
        raise LatentDeskError(f"VAE type {shown(kind)} is not supported; only AutoencoderKL.")
    for key in ("block_out_channels", "layers_per_block", "latent_channels"):
        if key not in cfg:
            raise LatentDeskError(f"VAE config.json lacks {key!r}.")
    # Every number is checked for kind and range as it is read: they size the network built later.
    widths = cfg["block_out_channels"]
    if not isinstance(widths, list | tuple) or not 1 <= len(widths) <= MAX_LEVELS:
        raise LatentDeskError(f"VAE block_out_channels must list 1 to {MAX_LEVELS} widths, not {shown(widths)}.")
    widths = tuple(whole("block_out_channels", w, 1, MAX_CHANNELS) for w in widths)
    down, up = (cfg.get(name, []) for name in ("down_block_types", "up_block_types"))
    down, up = (list(v) if isinstance(v, list | tuple) else v for v in (down, up))   # config.json or diffusers' tuples
    if down != ["DownEncoderBlock2D"] * len(widths) or up != ["UpDecoderBlock2D"] * len(widths):
        raise LatentDeskError(
            f"VAE block types down={shown(down)}, up={shown(up)} are not supported; expected "
            f"{len(widths)} x DownEncoderBlock2D / UpDecoderBlock2D (one per block_out_channels entry)."
        )
    unsupported = {
        "act_fn": (cfg.get("act_fn", "silu"), "silu"),
        "use_quant_conv": (cfg.get("use_quant_conv", True), True),
        "use_post_quant_conv": (cfg.get("use_post_quant_conv", True), True),
        "mid_block_add_attention": (cfg.get("mid_block_add_attention", True), True),
        # Latents shifted or normalised per channel (SD3/Flux, Playground v2.5) need
        # more than the one scale_factor our config carries.
        "shift_factor": (cfg.get("shift_factor") or 0.0, 0.0),
        "latents_mean": (cfg.get("latents_mean"), None),
        "latents_std": (cfg.get("latents_std"), None),
    }
    for key, (value, wanted) in unsupported.items():
        if value != wanted:
            raise LatentDeskError(f"VAE setting {key}={shown(value)} is not supported (only {wanted!r}).")
    base = widths[0]
    if any(w % base for w in widths):
        raise LatentDeskError(f"VAE block_out_channels {list(widths)} are not multiples of the first entry.")
    config = VAEConfig(
        in_channels=whole("in_channels", cfg.get("in_channels", 3), 1, MAX_CHANNELS),
        out_channels=whole("out_channels", cfg.get("out_channels", 3), 1, MAX_CHANNELS),
        base_channels=base,
        channel_mult=tuple(w // base for w in widths),
        num_res_blocks=whole("layers_per_block", cfg["layers_per_block"], 1, MAX_BLOCKS),
        z_channels=whole("latent_channels", cfg["latent_channels"], 1, MAX_CHANNELS),
        norm_groups=whole("norm_num_groups", cfg.get("norm_num_groups", 32), 1, MAX_CHANNELS),
        scale_factor=positive_real("scaling_factor", cfg.get("scaling_factor", 0.18215)),
    )
    check_vae_config(config)
    return config


def diffusers_vae_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], scale_factor: float) -> VAEConfig:
    """A diffusers-layout VAE file without its config.json: the config read off the shapes."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes or len(shapes[key]) != 4:
            raise LatentDeskError(f"These VAE weights lack a 4-D {key!r}; not a Stable Diffusion VAE.")
        return shapes[key]

    levels = numbered_parts(shapes, _DIFFUSERS_LEVEL_KEY, "the VAE's encoder down_blocks")
    per_level = numbered_parts(shapes, _DIFFUSERS_BLOCK_KEY, "the VAE's encoder down_blocks.0 resnets")
    channels = [shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(levels)]
    return vae_config_from_diffusers({
        "in_channels": shape("encoder.conv_in.weight")[1],
        "out_channels": shape("decoder.conv_out.weight")[0],
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "layers_per_block": per_level,
        "latent_channels": shape("decoder.conv_in.weight")[1],
        "scaling_factor": scale_factor,
    })


_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_ATTN = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    # diffusers before 0.14 saved these names, and older hub folders still hold them.
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",
}
_SAME = re.compile(r"(encoder|decoder)\.(conv_in|conv_out)|quant_conv|post_quant_conv")


def _rename(key: str, levels: int) -> str | None:
    """Our key for one diffusers AutoencoderKL key; None if it has no counterpart."""
    m = re.fullmatch(r"(.+)\.(weight|bias)", key)
    if m is None:
        return None
    path, leaf = m.groups()
    if _SAME.fullmatch(path):
        return key
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out", path):
        return f"{m[1]}.norm_out.{leaf}"
    if (m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(\w+)", path)) and m[3] in _RESNET:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_RESNET[m[3]]}.{leaf}"
    if (m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(\w+(?:\.0)?)", path)) and m[2] in _ATTN:
        return f"{m[1]}.mid.attn_1.{_ATTN[m[2]]}.{leaf}"
    if m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.([0-9]{1,9})\.(.+)", path):
        side, way, i, rest = m[1], m[2], int(m[3]), m[4]
        if (side, way) not in (("encoder", "down"), ("decoder", "up")) or i >= levels:
            return None
        # diffusers numbers decoder blocks in the order they run (coarse first);
        # the original numbers them by level, like the encoder.
        level = i if way == "down" else levels - 1 - i
        if (r := re.fullmatch(r"resnets\.([0-9]{1,9})\.(\w+)", rest)) and r[2] in _RESNET:
            return f"{side}.{way}.{level}.block.{r[1]}.{_RESNET[r[2]]}.{leaf}"
        if rest == f"{way}samplers.0.conv":
            return f"{side}.{way}.{level}.{way}sample.conv.{leaf}"
    return None


def vae_state_from_diffusers(sd: Mapping[str, Tensor], config: VAEConfig) -> dict[str, Tensor]:
    """A diffusers AutoencoderKL state dict under our (original LDM) key names.

    Tensors are shared with `sd`, not copied; Linear attention weights become
    (C, C, 1, 1) views.
    """
    out = fix_attention_shapes(_renamed(sd, len(config.channel_mult)))
    _check_shapes({k: tuple(v.shape) for k, v in out.items()}, config)
    return out


def vae_shapes_from_diffusers(shapes: Mapping[str, tuple[int, ...]], config: VAEConfig) -> dict[str, tuple[int, ...]]:
    """The shapes `vae_state_from_diffusers` would give, from a file's header: checkable before reading."""
    return {k: _as_4d(k, tuple(s)) for k, s in _renamed(shapes, len(config.channel_mult)).items()}


def _renamed(sd: Mapping, levels: int) -> dict:
    out = {}
    for key, value in sd.items():
        ours = _rename(key, levels)
        if ours is None:
            raise LatentDeskError(f"VAE weight {shown(key)} does not belong to a supported diffusers AutoencoderKL.")
        out[ours] = value
    return out


# --- single files -------------------------------------------------------------

def fix_attention_shapes(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The same dict with Linear-shaped (C, C) mid attention weights viewed as (C, C, 1, 1)."""
    return {k: v[:, :, None, None] if v.ndim == 2 and _ATTN_WEIGHT.search(k) else v for k, v in sd.items()}


def vae_config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], scale_factor: float, *, norm_groups: int = 32
) -> VAEConfig:
    """Read a VAEConfig off original-layout key shapes (prefix already stripped).

    Keys outside encoder/decoder/quant_conv/post_quant_conv (e.g. the training
    `loss.*` weights some VAE files still carry) are ignored. GroupNorm's group
    count is not stored in the weights; every SD VAE uses 32.
    """
    vae = {k: _as_4d(k, tuple(s)) for k, s in shapes.items() if k.startswith(_VAE_ROOTS)}

    def shape(key: str) -> tuple[int, ...]:
        if key not in vae:
            raise LatentDeskError(f"These VAE weights lack {key!r}; not a Stable Diffusion VAE.")
        if len(vae[key]) != 4:
            raise LatentDeskError(f"The VAE tensor {key!r} has shape {vae[key]}; a VAE's has 4 dimensions.")
        return vae[key]

    base, in_channels = shape("encoder.conv_in.weight")[:2]          # (ch, in, 3, 3)
    if base < 1:
        raise LatentDeskError("The VAE's first convolution has no output channels.")
    # Counted from the blocks the keys name, with no gaps: one stray key must not make 100,000 blocks.
    levels = numbered_parts(vae, _LEVEL_KEY, "the VAE's encoder levels")
    blocks = numbered_parts(vae, _BLOCK_KEY, "the VAE's encoder blocks")
    widths = [shape(f"encoder.down.{i}.block.0.conv2.weight")[0] for i in range(max(levels, 1))]
    if any(w % base for w in widths):
        raise LatentDeskError(f"VAE level widths {widths} are not multiples of the first conv's {base}.")
    config = VAEConfig(
        in_channels=in_channels,
        out_channels=shape("decoder.conv_out.weight")[0],              # (out, ch, 3, 3)
        base_channels=base,
        channel_mult=tuple(w // base for w in widths),
        num_res_blocks=blocks,
        z_channels=shape("decoder.conv_in.weight")[1],                 # (C, z, 3, 3)
        norm_groups=norm_groups,
        scale_factor=scale_factor,
    )
    check_vae_config(config)
    # Everything else (decoder depth, quant convs, attention) must then match exactly.
    _check_shapes(vae, config)
    return config


def _as_4d(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape + (1, 1) if len(shape) == 2 and _ATTN_WEIGHT.search(key) else shape


# --- checks -------------------------------------------------------------------

def check_stated_vae(config: VAEConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """A config a file states (`latentdesk.config`, a diffusers config.json) against its tensors' shapes
    (original layout), before anything is built from it: bounded, then equal to what the shapes show."""
    check_vae_config(config)
    seen = vae_config_from_shapes(shapes, config.scale_factor, norm_groups=config.norm_groups)
    for name in (f.name for f in fields(config)):
        if getattr(config, name) != getattr(seen, name):
            raise LatentDeskError(f"the config says {name} = {getattr(config, name)!r} but the tensors show "
                                  f"{getattr(seen, name)!r}")


def expected_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Every weight our AutoencoderKL(config) holds, with its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = AutoencoderKL(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_shapes(got: Mapping[str, tuple[int, ...]], config: VAEConfig) -> None:
    """Raise, naming keys, unless `got` is exactly what AutoencoderKL(config) loads with strict=True."""
    want = expected_shapes(config)
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    wrong = sorted(f"{k} {got[k]} (expected {want[k]})" for k in want.keys() & got.keys() if got[k] != want[k])
    problems = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys]
    if problems:
        raise LatentDeskError(
            f"VAE weights do not fit a VAE with {len(config.channel_mult)} levels of "
            f"{[config.base_channels * m for m in config.channel_mult]} channels and "
            f"{config.z_channels} latent channels — " + "; ".join(problems)
        )
