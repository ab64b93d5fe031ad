"""The UNet against diffusers' UNet2DConditionModel (test-only oracle), on tiny configs.

Two independent loading routes are checked for each config:
  (a) diffusers folder: diffusers weights -> our config + key conversion -> our UNet;
  (b) single file: our UNet's original-layout keys -> diffusers' own LDM converter -> diffusers.
Both compare outputs on the same inputs, fp32, with every weight random (zero-initialised
layers would hide wiring mistakes).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from core.errors import LatentDeskError
from core.families import SD1, SD2, SDXL, UNET_PREFIX
from core.loading.convert_unet import (
    unet_config_from_diffusers,
    unet_config_from_shapes,
    unet_state_from_diffusers,
)
from core.nets.unet import UNet, UNetConfig, sdxl_added_condition

TOLERANCE = 1e-4  # max |ours - ref| relative to max |ref|
POOLED = 16       # tiny SDXL's pooled text width


class Case(NamedTuple):
    diffusers: dict                 # a diffusers unet/config.json
    config: UNetConfig              # what it must convert to
    heads_for: object               # the family rule for heads, scaled down: (channels) -> heads
    size: tuple[int, int]           # latent (H, W)


ATTN, PLAIN = "CrossAttnDownBlock2D", "DownBlock2D"
ATTN_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"

CASES = {
    # SD1: fixed heads, 1x1-conv projections; an inpainting-style 9-channel input.
    "sd1": Case(
        dict(in_channels=9, block_out_channels=[32, 64, 64], layers_per_block=2,
             down_block_types=[ATTN, ATTN, PLAIN], up_block_types=[PLAIN_UP, ATTN_UP, ATTN_UP],
             attention_head_dim=4, cross_attention_dim=24),
        UNetConfig(in_channels=9, model_channels=32, channel_mult=(1, 2, 2), transformer_depth=(1, 1, 0),
                   num_heads=(4, 4, 4), context_dim=24),
        lambda ch: 4, (8, 8)),
    # SD2 (epsilon and v models are the same net): heads from a fixed head width, Linear projections,
    # upcast_attention as SD2.1 ships it; an odd latent size, so the way up must meet odd skip sizes.
    "sd2": Case(
        dict(block_out_channels=[32, 64], layers_per_block=1, down_block_types=[ATTN, ATTN],
             up_block_types=[ATTN_UP, ATTN_UP], attention_head_dim=[2, 4], cross_attention_dim=40,
             use_linear_projection=True, upcast_attention=True),
        UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                   num_heads=(2, 4), context_dim=40, use_linear_in_transformer=True),
        lambda ch: ch // 16, (7, 9)),
    # SDXL: no attention at level 0, deeper transformers below, a 3-deep middle, pooled text + sizes.
    "sdxl": Case(
        dict(block_out_channels=[32, 64, 64], layers_per_block=2, down_block_types=[PLAIN, ATTN, ATTN],
             up_block_types=[ATTN_UP, ATTN_UP, PLAIN_UP], transformer_layers_per_block=[1, 2, 3],
             attention_head_dim=[2, 4, 4], cross_attention_dim=48, use_linear_projection=True,
             addition_embed_type="text_time", addition_time_embed_dim=256,
             projection_class_embeddings_input_dim=POOLED + 6 * 256),
        UNetConfig(model_channels=32, channel_mult=(1, 2, 2), transformer_depth=(0, 2, 3),
                   transformer_depth_middle=3, num_heads=(2, 4, 4), context_dim=48,
                   use_linear_in_transformer=True, adm_in_channels=POOLED + 6 * 256),
        lambda ch: ch // 16, (8, 12)),
    # A middle without attention (diffusers' UNetMidBlock2D: a single ResBlock).
    "plain_middle": Case(
        dict(block_out_channels=[32, 64], layers_per_block=1, down_block_types=[ATTN, PLAIN],
             up_block_types=[PLAIN_UP, ATTN_UP], mid_block_type="UNetMidBlock2D", attention_head_dim=2,
             cross_attention_dim=24),
        UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 0),
                   transformer_depth_middle=0, num_heads=(2, 2), context_dim=24),
        lambda ch: 2, (8, 8)),
}


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random and non-trivial: fan-in scaled weights, norm scales near 1, biases near 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                mean, std = 0.0, p[0].numel() ** -0.5
            else:
                mean, std = (1.0 if name.endswith("weight") else 0.0), 0.2
            p.copy_(torch.randn(p.shape, generator=g) * std + mean)
    return module.eval()


def inputs(case: Case, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c = case.config
    batch = {
        "x": torch.randn(2, c.in_channels, *case.size, generator=g),
        "t": torch.tensor([999.0, 37.5]),
        "context": torch.randn(2, 5, c.context_dim, generator=g),
        "pooled": None, "time_ids": None,
    }
    if c.adm_in_channels is not None:
        batch["pooled"] = torch.randn(2, POOLED, generator=g)
        batch["time_ids"] = torch.tensor([[1024.0, 768.0, 0.0, 16.0, 1024.0, 1024.0],
                                          [512.0, 512.0, 32.0, 0.0, 896.0, 1152.0]])
    return batch


@torch.no_grad()
def run_ours(model: UNet, b: dict) -> torch.Tensor:
    y = sdxl_added_condition(b["pooled"], b["time_ids"]) if b["pooled"] is not None else None
    return model(b["x"], b["t"], b["context"], y)


@torch.no_grad()
def run_diffusers(model: UNet2DConditionModel, b: dict) -> torch.Tensor:
    added = {"text_embeds": b["pooled"], "time_ids": b["time_ids"]} if b["pooled"] is not None else None
    return model(b["x"], b["t"], encoder_hidden_states=b["context"], added_cond_kwargs=added).sample


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    assert ref.abs().max() > 0.1  # a dead net would agree with anything
    return ((ours - ref).abs().max() / ref.abs().max()).item()


# --- parity --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_diffusers_weights_give_diffusers_output(name):
    case = CASES[name]
    torch.manual_seed(0)
    ref = randomize(UNet2DConditionModel(**case.diffusers), seed=1)

    config = unet_config_from_diffusers(dict(ref.config))
    assert config == case.config
    diffusers_state = ref.state_dict()
    state = unet_state_from_diffusers(diffusers_state, config)
    # Re-keyed, never copied: a multi-GB model must not exist twice while loading.
    assert [id(t) for t in state.values()] == [id(t) for t in diffusers_state.values()]
    ours = UNet(config).eval()
    ours.load_state_dict(state, strict=True)

    b = inputs(case)
    assert relative_error(run_ours(ours, b), run_diffusers(ref, b)) <= TOLERANCE


@pytest.mark.parametrize("name", CASES)
def test_original_keys_convert_with_diffusers_own_converter(name):
    case = CASES[name]
    torch.manual_seed(0)
    ours = randomize(UNet(case.config), seed=2)
    checkpoint = {UNET_PREFIX + k: v for k, v in ours.state_dict().items()}
    ref = UNet2DConditionModel(**case.diffusers).eval()
    ref.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, dict(ref.config)), strict=True)

    b = inputs(case, seed=3)
    assert relative_error(run_ours(ours, b), run_diffusers(ref, b)) <= TOLERANCE


# --- single-file config from shapes --------------------------------------------------------------------

def meta_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in UNet(config).state_dict().items()}


@pytest.mark.parametrize("name", CASES)
def test_shapes_give_back_the_config(name):
    case = CASES[name]
    assert unet_config_from_shapes(meta_shapes(case.config), case.heads_for) == case.config


# The released configs, as their unet/config.json files have them.
SD15_JSON = dict(
    _class_name="UNet2DConditionModel", act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False, cross_attention_dim=768, down_block_types=[ATTN, ATTN, ATTN, PLAIN],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=[PLAIN_UP, ATTN_UP, ATTN_UP, ATTN_UP])
SD21_JSON = dict(SD15_JSON, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
                 upcast_attention=True, dual_cross_attention=False, num_class_embeds=None, only_cross_attention=False,
                 sample_size=96)
SDXL_JSON = dict(SD15_JSON, attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
                 down_block_types=[PLAIN, ATTN, ATTN], up_block_types=[ATTN_UP, ATTN_UP, PLAIN_UP],
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, transformer_layers_per_block=[1, 2, 10],
                 use_linear_projection=True, num_attention_heads=None, sample_size=128)
# The refiner: attention in the middle levels only, yet a 4-deep middle; y = pooled + 5 numbers
# (aesthetic score in place of the target size).
REFINER_JSON = dict(SDXL_JSON, attention_head_dim=[6, 12, 24, 24], block_out_channels=[384, 768, 1536, 1536],
                    cross_attention_dim=1280, down_block_types=[PLAIN, ATTN, ATTN, PLAIN],
                    up_block_types=[PLAIN_UP, ATTN_UP, ATTN_UP, PLAIN_UP], projection_class_embeddings_input_dim=2560,
                    transformer_layers_per_block=4)
REAL = {
    "sd15": (SD15_JSON, SD1, UNetConfig(), 859_520_964),
    "sd21": (SD21_JSON, SD2, UNetConfig(num_heads=(5, 10, 20, 20), context_dim=1024, use_linear_in_transformer=True),
             865_910_724),
    "sdxl": (SDXL_JSON, SDXL, UNetConfig(channel_mult=(1, 2, 4), transformer_depth=(0, 2, 10), transformer_depth_middle=10,
                                         num_heads=(5, 10, 20), context_dim=2048, use_linear_in_transformer=True,
                                         adm_in_channels=2816), 2_567_463_684),
    "sdxl_refiner": (REFINER_JSON, SDXL, UNetConfig(model_channels=384, transformer_depth=(0, 4, 4, 0),
                                                    transformer_depth_middle=4, num_heads=(6, 12, 24, 24),
                                                    context_dim=1280, use_linear_in_transformer=True,
                                                    adm_in_channels=2560), None),
}


@pytest.mark.parametrize("name", REAL)
def test_real_sizes_map_key_for_key(name):
    """Full-size layouts on the meta device: block numbers past 9, SDXL's 10-deep transformers."""
    cfg_json, family, expected, n_params = REAL[name]
    config = unet_config_from_diffusers(cfg_json)
    assert config == expected
    with torch.device("meta"):
        ref = UNet2DConditionModel(**{k: v for k, v in cfg_json.items() if not k.startswith("_")})
        ours = UNet(config)
    assert sum(p.numel() for p in ours.parameters()) == (n_params or sum(p.numel() for p in ref.parameters()))
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}

    converted = unet_state_from_diffusers(ref.state_dict(), config)
    assert {k: v.shape for k, v in converted.items()} == ours_shapes
    back = convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in ours.state_dict().items()}, cfg_json)
    assert {k: v.shape for k, v in back.items()} == ref_shapes
    assert unet_config_from_shapes({k: tuple(s) for k, s in ours_shapes.items()}, family.heads_for) == config


# --- precision and memory format -----------------------------------------------------------------------

@torch.no_grad()
def test_channels_last_gives_the_same_output_and_keeps_the_layout():
    case = CASES["sd1"]
    model = randomize(UNet(case.config), seed=4)
    b = inputs(case)
    ref = run_ours(model, b)
    model.to(memory_format=torch.channels_last)
    b["x"] = b["x"].to(memory_format=torch.channels_last)
    out = run_ours(model, b)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, ref) <= 1e-5


@torch.no_grad()
def test_half_precision_runs_close_to_float32_and_returns_the_input_dtype():
    case = CASES["sdxl"]
    model = randomize(UNet(case.config), seed=5)
    b = inputs(case)
    ref = run_ours(model, b)
    out = run_ours(model.half(), b)  # fp32 inputs into an fp16 model: cast in, cast back
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert relative_error(out, ref) <= 2e-2


def test_sdxl_needs_y():
    case = CASES["sdxl"]
    b = inputs(case)
    with pytest.raises(ValueError, match="needs y"):
        UNet(case.config)(b["x"], b["t"], b["context"])


# --- what cannot be converted -------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "named"), [
    ({"class_embed_type": "timestep"}, "class_embed_type"),
    ({"time_cond_proj_dim": 0}, "time_cond_proj_dim"),     # LCM's guidance embedding is read; a width of 0 is not
    ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ({"only_cross_attention": [True, False, False]}, "only_cross_attention"),
    ({"_class_name": "UNet2DModel"}, "UNet2DModel"),
    ({"down_block_types": [ATTN, "SimpleCrossAttnDownBlock2D", PLAIN]}, "SimpleCrossAttnDownBlock2D"),
    ({"up_block_types": [PLAIN_UP, PLAIN_UP, ATTN_UP]}, "up_block_types"),
    ({"layers_per_block": [2, 1, 2]}, "layers_per_block"),
    ({"cross_attention_dim": [24, 32, 24]}, "cross_attention_dim"),
    ({"attention_head_dim": [4, 4]}, "attention_head_dim"),
    ({"block_out_channels": [32, 48, 64]}, "block_out_channels"),
    ({"transformer_layers_per_block": [1, 0, 1]}, "transformer_layers_per_block"),
    ({"reverse_transformer_layers_per_block": [[1, 1, 1], [2, 2, 2], [1, 1, 1]]}, "reverse_transformer"),
    ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid_block_type"),
    ({"mid_block_type": None}, "mid_block_type"),
    ({"addition_embed_type": "text"}, "addition_embed_type"),
    ({"addition_embed_type": "text_time", "addition_time_embed_dim": 128,
      "projection_class_embeddings_input_dim": 784}, "addition_time_embed_dim"),
    ({"norm_num_groups": None}, "norm_num_groups"),
])
def test_unsupported_diffusers_configs_are_refused_by_name(change, named):
    with pytest.raises(LatentDeskError, match=named):
        unet_config_from_diffusers({**CASES["sd1"].diffusers, **change})


@pytest.mark.parametrize("key", [
    "down_blocks.0.resnets.0.bogus.weight",         # not a ResBlock part
    "down_blocks.2.attentions.0.proj_in.weight",    # level 2 has no attention in this config
    "add_embedding.linear_1.weight",                # SDXL's y projection in an SD1 UNet
    "mid_block.resnets.2.conv1.weight",             # a third middle ResBlock
    "down_blocks.0.resnets.2.conv1.weight",         # more ResBlocks than layers_per_block
])
def test_unknown_diffusers_weights_are_refused_by_name(key):
    with pytest.raises(LatentDeskError, match=key.replace(".", r"\.")):
        unet_state_from_diffusers({key: torch.zeros(1)}, CASES["sd1"].config)


def _without(shapes: dict, part: str) -> dict:
    return {k: v for k, v in shapes.items() if part not in k}


SDXL_SHAPES = meta_shapes(CASES["sdxl"].config)


@pytest.mark.parametrize(("shapes", "why"), [
    ({}, "input_blocks.0.0.weight"),
    (_without(SDXL_SHAPES, "input_blocks.3.0.op"), "do not form equal levels"),
    # SSD-1B-style: one output block with a shallower transformer than its level's input blocks.
    (_without(SDXL_SHAPES, "output_blocks.0.1.transformer_blocks.2."), "output_blocks.0.1.transformer_blocks.2"),
    ({**SDXL_SHAPES, "middle_block.0.in_layers.2.weight": (64, 64, 1, 1)}, "middle_block.0.in_layers.2.weight"),
    ({**SDXL_SHAPES, "input_blocks.1.1.proj_in.weight": (32, 32)}, "input_blocks.1.1.proj_in.weight"),
    ({**SDXL_SHAPES, "input_blocks.4.0.in_layers.2.weight": (48, 64, 3, 3)}, "not multiples"),
])
def test_shapes_that_are_not_a_supported_unet_are_refused(shapes, why):
    with pytest.raises(LatentDeskError, match=why.replace(".", r"\.")):
        unet_config_from_shapes(shapes, CASES["sdxl"].heads_for)


def test_coordinates_run_from_edge_to_edge_and_reach_the_first_convolution():
    from core.nets.unet import coordinates

    grid = coordinates(torch.zeros(2, 4, 4, 8))
    assert grid.shape == (2, 2, 4, 8)
    assert torch.allclose(grid[0, 0, 0], torch.linspace(-7 / 8, 7 / 8, 8))   # x grows to the right
    assert torch.allclose(grid[1, 1, :, 3], torch.linspace(-3 / 4, 3 / 4, 4))  # y grows downward
    config = UNetConfig(model_channels=32, channel_mult=(1, 2), transformer_depth=(0, 1), num_heads=(2, 2),
                        context_dim=16, norm_groups=8, coord_channels=True)
    unet = randomize(UNet(config), seed=0)
    assert unet.input_blocks[0][0].weight.shape[1] == 6
    x, context = torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 16)
    with torch.no_grad():
        out = unet(x, torch.tensor([10.0]), context)
        flipped = unet(x.flip(-1), torch.tensor([10.0]), context)
    assert out.shape == (1, 4, 8, 8)
    # A left-right symmetric input gives a symmetric output only when the network ignores position.
    assert (out - flipped.flip(-1)).abs().max() > 1e-3
