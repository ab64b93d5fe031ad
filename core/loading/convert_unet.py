"""UNet configs and weights from the other layouts: diffusers folders and bare tensor shapes.

    unet_config_from_diffusers(config.json dict)   -> UNetConfig
    unet_state_from_diffusers(state dict, config)  -> state dict with original (LDM) keys
    unet_config_from_shapes(shapes, heads_for)     -> UNetConfig read off a single file's tensors
    check_stated_unet(config, shapes)              a config a file states, against its tensors' shapes

Anything these cannot represent raises `LatentDeskError` saying what and why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import fields

import torch
from torch import Tensor

from core.errors import LatentDeskError, shown
from core.limits import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    MAX_DEPTH,
    MAX_LEVELS,
    MAX_VECTOR,
    numbered_parts,
    whole,
)
from core.loading.config_checks import check_unet_config
from core.nets.unet import UNet, UNetConfig

# --- diffusers config.json ---------------------------------------------------------------------------

ATTN_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
UP_FOR_DOWN = {ATTN_DOWN: "CrossAttnUpBlock2D", PLAIN_DOWN: "UpBlock2D"}

# Options that change the network away from LDM's UNet; each must hold its LDM value. A missing
# option means diffusers' default, which is the LDM value for all of them.
REQUIRED = {
    "act_fn": "silu",
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "class_embed_type": None,           # upscaler / unCLIP noise-level embeddings
    "num_class_embeds": None,
    "class_embeddings_concat": False,
    "encoder_hid_dim": None,            # Kandinsky-style projections of the text
    "encoder_hid_dim_type": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "dual_cross_attention": False,
    "only_cross_attention": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "attention_type": "default",        # GLIGEN's gated attention
}
SIZE_EMBED_DIM = 256  # SDXL's width per size/crop number; `sdxl_added_condition` builds y with it


def unet_config_from_diffusers(cfg: Mapping) -> UNetConfig:
    """The UNetConfig of a diffusers `unet/config.json` (a UNet2DConditionModel)."""
    kind = cfg.get("_class_name", "UNet2DConditionModel")
    if kind != "UNet2DConditionModel":
        raise LatentDeskError(f"UNet config: a {shown(kind)} is not a Stable Diffusion UNet (UNet2DConditionModel)")
    for name, value in REQUIRED.items():
        got = cfg.get(name, value)
        if name in ("only_cross_attention", "mid_block_only_cross_attention") and not _any_true(got):
            continue
        if got != value:
            raise LatentDeskError(f"UNet config: {name} = {shown(got)} is not supported (Stable Diffusion uses "
                                  f"{value!r})")

    down = _names(cfg, "down_block_types")
    levels = len(down)
    if not 1 <= levels <= MAX_LEVELS:
        raise LatentDeskError(f"UNet config: down_block_types lists {levels} levels; 1 to {MAX_LEVELS} are supported")
    for kind in down:
        if kind not in UP_FOR_DOWN:
            raise LatentDeskError(f"UNet config: down block type {shown(kind)} is not supported "
                                  f"(only {ATTN_DOWN} and {PLAIN_DOWN})")
    up = _names(cfg, "up_block_types")
    mirrored = [UP_FOR_DOWN[kind] for kind in reversed(down)]
    if up != mirrored:
        raise LatentDeskError(f"UNet config: up_block_types {shown(up)} do not mirror down_block_types {down}; "
                              f"expected {mirrored}")

    # Every number is checked for kind and range as it is read: they size the network built later.
    channels = [whole("block_out_channels", ch, 1, MAX_CHANNELS) for ch in _per_level(cfg, "block_out_channels", levels)]
    mc = channels[0]
    if any(ch % mc for ch in channels):
        raise LatentDeskError(f"UNet config: block_out_channels {list(channels)} are not multiples of the first")
    num_res_blocks = _same_everywhere(cfg, "layers_per_block", levels, default=2, high=MAX_BLOCKS)
    context_dim = _same_everywhere(cfg, "cross_attention_dim", levels, default=1280, high=MAX_VECTOR)
    # diffusers' naming quirk: `attention_head_dim` holds the number of heads unless
    # `num_attention_heads` is given (diffusers issue 2011).
    heads_key = "num_attention_heads" if cfg.get("num_attention_heads") is not None else "attention_head_dim"
    num_heads = [whole(heads_key, n, 1, MAX_CHANNELS) for n in _per_level(cfg, heads_key, levels, default=8)]

    layers = _per_level(cfg, "transformer_layers_per_block", levels, default=1)
    if any(isinstance(n, tuple) for n in layers):
        raise LatentDeskError("UNet config: transformer_layers_per_block varies within a level; not supported")
    layers = [whole("transformer_layers_per_block", n, 0, MAX_DEPTH) for n in layers]
    depth = tuple(n if kind == ATTN_DOWN else 0 for n, kind in zip(layers, down, strict=True))
    if any(kind == ATTN_DOWN and n < 1 for n, kind in zip(layers, down, strict=True)):
        raise LatentDeskError(f"UNet config: transformer_layers_per_block {list(layers)} leaves an attention "
                              "level without transformer blocks")
    # SSD-1B-style pruned UNets give the way up other depths than the way down.
    reverse = cfg.get("reverse_transformer_layers_per_block")
    for up_level, per_block in enumerate(_per_level(cfg, "reverse_transformer_layers_per_block", levels)
                                         if reverse is not None else ()):
        name = "reverse_transformer_layers_per_block"
        got = {whole(name, n, 0, MAX_DEPTH) for n in (per_block if isinstance(per_block, tuple) else (per_block,))}
        level = levels - 1 - up_level
        if depth[level] and got != {depth[level]}:
            raise LatentDeskError(f"UNet config: reverse_transformer_layers_per_block {reverse} differs from "
                                  "the way down; such pruned UNets are not supported")

    # diffusers' middle takes the last level's transformer depth and heads, whatever that level has.
    mid_type = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type == "UNetMidBlock2DCrossAttn" and layers[-1] >= 1:
        depth_middle = layers[-1]
    elif mid_type == "UNetMidBlock2D":
        depth_middle = 0  # one ResBlock, no attention
    else:
        raise LatentDeskError(f"UNet config: mid_block_type {mid_type!r} with transformer_layers_per_block "
                              f"{list(layers)} is not supported")

    adm_in_channels = None
    addition = cfg.get("addition_embed_type")
    if addition == "text_time":
        adm_in_channels = cfg.get("projection_class_embeddings_input_dim")
        if adm_in_channels is None:
            raise LatentDeskError("UNet config: text_time conditioning without projection_class_embeddings_input_dim")
        whole("projection_class_embeddings_input_dim", adm_in_channels, 1, MAX_VECTOR)
        if cfg.get("addition_time_embed_dim") != SIZE_EMBED_DIM:
            raise LatentDeskError(f"UNet config: addition_time_embed_dim {cfg.get('addition_time_embed_dim')!r} "
                                  f"is not supported (SDXL uses {SIZE_EMBED_DIM})")
    elif addition is not None:
        raise LatentDeskError(f"UNet config: addition_embed_type {addition!r} is not supported (only 'text_time')")

    time_dim = cfg.get("time_embedding_dim")
    if time_dim is not None and time_dim != 4 * mc:
        raise LatentDeskError(f"UNet config: time_embedding_dim {time_dim} is not supported (Stable Diffusion uses {4 * mc})")

    # LCM's guidance-scale embedding (diffusers' LatentConsistencyModelPipeline): its width, bounded here.
    cond_dim = cfg.get("time_cond_proj_dim")
    if cond_dim is not None:
        whole("time_cond_proj_dim", cond_dim, 1, MAX_VECTOR)

    groups = cfg.get("norm_num_groups", 32)
    if groups is None:
        raise LatentDeskError("UNet config: a UNet without group norms (norm_num_groups null) is not supported")

    config = UNetConfig(
        in_channels=whole("in_channels", cfg.get("in_channels", 4), 1, MAX_CHANNELS),
        out_channels=whole("out_channels", cfg.get("out_channels", 4), 1, MAX_CHANNELS),
        model_channels=mc,
        channel_mult=tuple(ch // mc for ch in channels),
        num_res_blocks=num_res_blocks,
        transformer_depth=depth,
        transformer_depth_middle=depth_middle,
        num_heads=tuple(num_heads),
        context_dim=context_dim,
        use_linear_in_transformer=bool(cfg.get("use_linear_projection", False)),
        adm_in_channels=adm_in_channels,
        norm_groups=whole("norm_num_groups", groups, 1, MAX_CHANNELS),
        time_cond_proj_dim=cond_dim,
    )
    check_unet_config(config)   # what no single option shows: heads per width, groups per width, totals
    return config


def _any_true(value) -> bool:
    return any(value) if isinstance(value, list | tuple) else bool(value)


def _per_level(cfg: Mapping, name: str, levels: int, default=None) -> tuple:
    """An option diffusers gives as one value or one per level, as a tuple with one entry per level."""
    value = cfg.get(name, default)
    if value is None:
        raise LatentDeskError(f"UNet config: {name} is missing")
    if not isinstance(value, list | tuple):
        return (value,) * levels
    if len(value) != levels:
        raise LatentDeskError(f"UNet config: {name} has {len(value)} entries for {levels} levels")
    return tuple(tuple(v) if isinstance(v, list) else v for v in value)


def _same_everywhere(cfg: Mapping, name: str, levels: int, default, high: int) -> int:
    values = {whole(name, value, 1, high) for value in _per_level(cfg, name, levels, default)}
    if len(values) != 1:
        raise LatentDeskError(f"UNet config: {name} differs between levels ({shown(cfg.get(name))}); not supported")
    return values.pop()


def _names(cfg: Mapping, name: str) -> list[str]:
    value = cfg.get(name, [])
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise LatentDeskError(f"UNet config: {name} must be a list of block type names, not {shown(value)}")
    return list(value)


# --- diffusers weights -------------------------------------------------------------------------------

# The only place where diffusers renames inside a module: the ResBlock's layers.
RESNET_PARTS = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}


def unet_state_from_diffusers(sd: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """UNet2DConditionModel weights under the original keys; the same tensor objects, nothing copied."""
    table = _module_table(config)
    return {_original_key(key, table): tensor for key, tensor in sd.items()}


def _original_key(key: str, table: dict[str, tuple[str, dict | None]]) -> str:
    parts = key.split(".")
    for n in range(1, len(parts)):  # module prefixes are short: try the shortest first
        entry = table.get(".".join(parts[:n]))
        if entry is None:
            continue
        prefix, renames = entry
        rest = parts[n:]
        if renames is not None:
            if rest[0] not in renames:
                break
            rest = [renames[rest[0]], *rest[1:]]
        return ".".join([prefix, *rest])
    raise LatentDeskError(f"UNet weight {key!r} has no place in this UNet's layout")


def _module_table(c: UNetConfig) -> dict[str, tuple[str, dict | None]]:
    """diffusers module prefix -> (original prefix, renames of the next name or None)."""
    table: dict[str, tuple[str, dict | None]] = {
        "time_embedding.linear_1": ("time_embed.0", None),
        "time_embedding.linear_2": ("time_embed.2", None),
        "conv_in": ("input_blocks.0.0", None),
        "conv_norm_out": ("out.0", None),
        "conv_out": ("out.2", None),
    }
    if c.time_cond_proj_dim is not None:
        table["time_embedding.cond_proj"] = ("time_cond_proj", None)
    if c.adm_in_channels is not None:
        table["add_embedding.linear_1"] = ("label_emb.0.0", None)
        table["add_embedding.linear_2"] = ("label_emb.0.2", None)

    per_level = c.num_res_blocks + 1  # input blocks per level (ResBlocks + Downsample); output blocks likewise
    for level in range(c.levels):
        attends = c.transformer_depth[level] > 0
        for j in range(c.num_res_blocks):
            n = 1 + level * per_level + j
            table[f"down_blocks.{level}.resnets.{j}"] = (f"input_blocks.{n}.0", RESNET_PARTS)
            if attends:
                table[f"down_blocks.{level}.attentions.{j}"] = (f"input_blocks.{n}.1", None)
        if level < c.levels - 1:
            table[f"down_blocks.{level}.downsamplers.0.conv"] = (f"input_blocks.{(level + 1) * per_level}.0.op", None)

        up = c.levels - 1 - level  # diffusers numbers the way up from the bottom
        for j in range(per_level):
            n = up * per_level + j
            table[f"up_blocks.{up}.resnets.{j}"] = (f"output_blocks.{n}.0", RESNET_PARTS)
            if attends:
                table[f"up_blocks.{up}.attentions.{j}"] = (f"output_blocks.{n}.1", None)
        if level > 0:
            last = up * per_level + c.num_res_blocks
            table[f"up_blocks.{up}.upsamplers.0.conv"] = (f"output_blocks.{last}.{2 if attends else 1}.conv", None)

    table["mid_block.resnets.0"] = ("middle_block.0", RESNET_PARTS)
    if c.transformer_depth_middle:
        table["mid_block.attentions.0"] = ("middle_block.1", None)
        table["mid_block.resnets.1"] = ("middle_block.2", RESNET_PARTS)
    return table


# --- tensor shapes of a single file ------------------------------------------------------------------

INPUT_BLOCK_KEY = re.compile(r"input_blocks\.([0-9]{1,9})\.")
# The SpatialTransformer is always the second layer of its block.
TRANSFORMER_KEY = re.compile(r"(input_blocks\.[0-9]+|output_blocks\.[0-9]+|middle_block)\.1\.(transformer_blocks\..*)")
TRANSFORMER_BLOCK_KEY = re.compile(r"transformer_blocks\.([0-9]{1,9})\.")


def unet_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], heads_for: Callable[[int], int]) -> UNetConfig:
    """Read the architecture off original-layout tensor shapes (keys without `model.diffusion_model.`).

    Heads cannot be seen in the shapes (q, k, v are all channels wide), so `heads_for(channels)`
    gives the family's rule for a level of that width.
    """
    seen = unet_layout_from_shapes(shapes)
    widths = [seen["model_channels"] * m for m in seen["channel_mult"]]
    config = UNetConfig(**{**seen, "context_dim": seen["context_dim"] or UNetConfig.context_dim},
                        num_heads=tuple(heads_for(w) for w in widths))
    check_unet_config(config)
    _check_shapes(shapes, config)
    return config


def check_stated_unet(config: UNetConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """A config a file states (`latentdesk.config`, a diffusers config.json) against its tensors' shapes.

    Bounded first, then compared with what the shapes show, then every tensor's shape: all before the
    network is built, so a config claiming 400 blocks beside weights for 2 costs nothing.
    """
    check_unet_config(config)
    seen = unet_layout_from_shapes(shapes)
    stated = {**{f.name: getattr(config, f.name) for f in fields(config)},
              "in_channels": config.in_channels + (2 if config.coord_channels else 0)}
    if seen["context_dim"] is None:   # no attention: the width of the text it would read is not in the shapes
        del seen["context_dim"]
    for name, value in seen.items():
        if stated[name] != value:
            raise LatentDeskError(f"the config says {name} = {stated[name]!r} but the tensors show {value!r}")
    _check_shapes(shapes, config)


def unet_layout_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """The UNetConfig fields the shapes show, all but num_heads and norm_groups; nothing is built.

    `in_channels` is the first convolution's (coord_channels add 2); `context_dim` is None where no
    level attends. Every count comes from blocks the keys name, and no key names one past a gap.
    """
    def shape(key: str, rank: int = 4) -> tuple[int, ...]:
        if key not in shapes:
            raise LatentDeskError(f"the UNet has no tensor {key!r}: not a UNet layout Latent Desk knows")
        if len(shapes[key]) != rank:
            raise LatentDeskError(f"the UNet tensor {key!r} has shape {tuple(shapes[key])}; a UNet's has "
                                  f"{rank} dimensions")
        return tuple(shapes[key])

    mc, in_channels = shape("input_blocks.0.0.weight")[:2]
    out_channels = shape("out.2.weight")[0]
    if mc < 1:
        raise LatentDeskError("the UNet's first convolution has no output channels")

    try:
        n_inputs = numbered_parts(shapes, INPUT_BLOCK_KEY, "the UNet's input blocks")
    except LatentDeskError as gap:   # a whole block missing breaks the levels, as a missing downsampling does
        raise LatentDeskError(f"{gap}: they do not form equal levels") from None
    downsamples = [n for n in range(n_inputs) if f"input_blocks.{n}.0.op.weight" in shapes]
    levels = len(downsamples) + 1
    num_res_blocks, remainder = divmod(n_inputs - 1 - len(downsamples), levels)
    if n_inputs < 2 or remainder or downsamples != [(lv + 1) * (num_res_blocks + 1) for lv in range(levels - 1)]:
        raise LatentDeskError(f"the UNet's {n_inputs} input blocks with downsampling at {downsamples} "
                              "do not form equal levels")

    first_blocks = [1 + lv * (num_res_blocks + 1) for lv in range(levels)]
    widths = [shape(f"input_blocks.{n}.0.in_layers.2.weight")[0] for n in first_blocks]
    if any(w % mc for w in widths):
        raise LatentDeskError(f"the UNet's level widths {widths} are not multiples of {mc}")

    depths = _transformer_depths(shapes)
    attention = [k for k in shapes if k.endswith("attn2.to_k.weight")]
    proj_in = [k for k in shapes if k.endswith(".1.proj_in.weight")]
    return dict(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=mc,
        channel_mult=tuple(w // mc for w in widths),
        num_res_blocks=num_res_blocks,
        transformer_depth=tuple(depths.get(f"input_blocks.{n}", 0) for n in first_blocks),
        transformer_depth_middle=depths.get("middle_block", 0),
        context_dim=shape(attention[0], 2)[1] if attention else None,
        use_linear_in_transformer=bool(proj_in) and len(shapes[proj_in[0]]) == 2,
        adm_in_channels=shape("label_emb.0.0.weight", 2)[1] if "label_emb.0.0.weight" in shapes else None,
        time_cond_proj_dim=shape("time_cond_proj.weight", 2)[1] if "time_cond_proj.weight" in shapes else None,
    )


def _transformer_depths(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Block ("input_blocks.4", "middle_block", ...) -> how many transformer blocks its SpatialTransformer has."""
    inside: dict[str, list[str]] = {}
    for key in shapes:
        if m := TRANSFORMER_KEY.match(key):
            inside.setdefault(m[1], []).append(m[2])
    return {block: numbered_parts(keys, TRANSFORMER_BLOCK_KEY, f"the UNet's {block} transformer blocks")
            for block, keys in inside.items()}


def _check_shapes(shapes: Mapping[str, tuple[int, ...]], config: UNetConfig) -> None:
    """Every tensor the derived config implies, with its shape, and nothing else: else it is not that UNet."""
    with torch.device("meta"):  # shapes only: no memory, no init time
        expected = {k: tuple(v.shape) for k, v in UNet(config).state_dict().items()}
    for key, want in expected.items():
        if key not in shapes:
            raise LatentDeskError(f"the UNet has no tensor {key!r}: an architecture Latent Desk does not support "
                                  "(e.g. different transformer depths on the way up and down)")
        if tuple(shapes[key]) != want:
            raise LatentDeskError(f"the UNet tensor {key!r} has shape {tuple(shapes[key])}, expected {want} "
                                  "for the architecture its other tensors describe")
    extra = [k for k in shapes if k not in expected]
    if extra:
        raise LatentDeskError(f"the UNet has a tensor {shown(extra[0])} (and {len(extra) - 1} more) that the "
                              "architecture its other tensors describe has no place for")
