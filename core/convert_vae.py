"""VAE weights from other layouts into ours (the original LDM keys of core/vae.py).

Two sources: a diffusers `vae/` folder (config.json + diffusers key names), and
single-file checkpoints, whose config is read off the tensor shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from core.errors import LatentDeskError
from core.vae import AutoencoderKL, VAEConfig

# Mid-block attention weights, 1x1 convs in the original. diffusers stores them as
# Linear (C, C), and so do some single files that went through diffusers and back.
_ATTN_WEIGHT = re.compile(r"(^|\.)mid\.attn_1\.(q|k|v|proj_out)\.weight$")

_VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


# --- diffusers -> ours -------------------------------------------------------

def vae_config_from_diffusers(cfg: Mapping) -> VAEConfig:
    """VAEConfig from a diffusers `vae/config.json`; refuses what our module cannot be."""
    kind = cfg.get("_class_name", "AutoencoderKL")
    if kind != "AutoencoderKL":
        raise LatentDeskError(f"VAE type {kind!r} is not supported; only AutoencoderKL.")
    for key in ("block_out_channels", "layers_per_block", "latent_channels"):
        if key not in cfg:
            raise LatentDeskError(f"VAE config.json lacks {key!r}.")
    widths = tuple(int(w) for w in cfg["block_out_channels"])
    down, up = list(cfg.get("down_block_types", [])), list(cfg.get("up_block_types", []))
    if down != ["DownEncoderBlock2D"] * len(widths) or up != ["UpDecoderBlock2D"] * len(widths):
        raise LatentDeskError(
            f"VAE block types down={down}, up={up} are not supported; expected "
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
            raise LatentDeskError(f"VAE setting {key}={value!r} is not supported (only {wanted!r}).")
    base = widths[0] if widths else 0
    if base <= 0 or any(w % base for w in widths):
        raise LatentDeskError(f"VAE block_out_channels {list(widths)} are not multiples of the first entry.")
    config = VAEConfig(
        in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 3)),
        base_channels=base,
        channel_mult=tuple(w // base for w in widths),
        num_res_blocks=int(cfg["layers_per_block"]),
        z_channels=int(cfg["latent_channels"]),
        norm_groups=int(cfg.get("norm_num_groups", 32)),
        scale_factor=float(cfg.get("scaling_factor", 0.18215)),
    )
    _check_config(config)
    return config


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
    if m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(.+)", path):
        side, way, i, rest = m[1], m[2], int(m[3]), m[4]
        if (side, way) not in (("encoder", "down"), ("decoder", "up")) or i >= levels:
            return None
        # diffusers numbers decoder blocks in the order they run (coarse first);
        # the original numbers them by level, like the encoder.
        level = i if way == "down" else levels - 1 - i
        if (r := re.fullmatch(r"resnets\.(\d+)\.(\w+)", rest)) and r[2] in _RESNET:
            return f"{side}.{way}.{level}.block.{r[1]}.{_RESNET[r[2]]}.{leaf}"
        if rest == f"{way}samplers.0.conv":
            return f"{side}.{way}.{level}.{way}sample.conv.{leaf}"
    return None


def vae_state_from_diffusers(sd: Mapping[str, Tensor], config: VAEConfig) -> dict[str, Tensor]:
    """A diffusers AutoencoderKL state dict under our (original LDM) key names.

    Tensors are shared with `sd`, not copied; Linear attention weights become
    (C, C, 1, 1) views.
    """
    levels = len(config.channel_mult)
    out: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        ours = _rename(key, levels)
        if ours is None:
            raise LatentDeskError(f"VAE weight {key!r} does not belong to a supported diffusers AutoencoderKL.")
        out[ours] = tensor
    out = fix_attention_shapes(out)
    _check_shapes({k: tuple(v.shape) for k, v in out.items()}, config)
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
        return vae[key]

    base, in_channels = shape("encoder.conv_in.weight")[:2]          # (ch, in, 3, 3)
    levels = 1 + max((int(m[1]) for k in vae if (m := re.match(r"encoder\.down\.(\d+)\.", k))), default=-1)
    blocks = 1 + max((int(m[1]) for k in vae if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))), default=-1)
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
    _check_config(config)
    # Everything else (decoder depth, quant convs, attention) must then match exactly.
    _check_shapes(vae, config)
    return config


def _as_4d(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape + (1, 1) if len(shape) == 2 and _ATTN_WEIGHT.search(key) else shape


# --- checks -------------------------------------------------------------------

def _check_config(config: VAEConfig) -> None:
    widths = [config.base_channels * m for m in config.channel_mult]
    if not widths or min(widths) <= 0 or config.num_res_blocks < 1 or config.z_channels < 1:
        raise LatentDeskError(f"Not a usable VAE: {config}.")
    if any(w % config.norm_groups for w in widths):
        raise LatentDeskError(f"VAE channel counts {widths} do not split into {config.norm_groups} norm groups.")


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
