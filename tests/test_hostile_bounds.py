"""Numbers a model file states are bounded and checked against its tensors before anything is built.

A file can say "400 blocks" or "1000 channels" in a few bytes. Believed, that builds a network
the file has no weights for: seconds to minutes and hundreds of MB before the missing tensors
are noticed, or a hang. Each case here must end in one ModelLoadError that names the file and the
setting, quickly and without a large allocation (the app waits for one of the two outcomes).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import LatentDeskError, ModelLoadError
from core.families import UNET_PREFIX, VAE_PREFIX
from core.loading.checkpoint import load_model, load_vae
from core.loading.preview_decoders import CONFIG_KEY, load_preview_decoder
from core.loading.weights import build_on_meta
from core.nets.preview_decoder import PreviewDecoder, PreviewDecoderConfig
from core.nets.unet import UNet, UNetConfig
from core.nets.vae import AutoencoderKL, VAEConfig

ROOT = Path(__file__).resolve().parent.parent
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
TEXT_WIDTH = 8
# One level, one block: the smallest UNet and VAE the loaders accept, so a whole model is ~2 MB.
UNET = UNetConfig(model_channels=32, channel_mult=(1,), num_res_blocks=1, transformer_depth=(1,),
                  transformer_depth_middle=1, num_heads=(1,), context_dim=TEXT_WIDTH)
VAE = VAEConfig(base_channels=32, channel_mult=(1,), num_res_blocks=1)


def zeros_of(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: torch.zeros(v.shape) for k, v in module.state_dict().items()}


@functools.cache
def tiny_clip_tensors() -> dict[str, torch.Tensor]:
    """An SD1-layout CLIP text encoder, 8 wide and 1 layer deep (the full vocabulary: token ids are CLIP's)."""
    from transformers import CLIPTextConfig

    from core.text.encoder import build_clip
    config = CLIPTextConfig(vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=1, max_position_embeddings=77)
    state = build_clip(config, with_projection=False).state_dict()
    return {TEXT_PREFIX + k.removeprefix("text_model."): torch.zeros(v.shape) for k, v in state.items()
            if not k.endswith("position_ids")}


def stated_model(path: Path, unet: dict | None = None, vae: dict | None = None, tensors=None, **top) -> Path:
    """A tiny SD1-layout file (zeros) whose `latentdesk.config` says what `unet`, `vae` and `top` change."""
    config = {"format": 1, "family": "sd1", "unet": {**asdict(UNET), **(unet or {})},
              "vae": {**asdict(VAE), **(vae or {})}, "text_encoder": {}, **top}
    state = tiny_clip_tensors() | zeros_of(build_on_meta(lambda: UNet(UNET)), UNET_PREFIX)
    state |= zeros_of(build_on_meta(lambda: AutoencoderKL(VAE)), VAE_PREFIX)
    save_file(state | (tensors or {}), path, metadata={"latentdesk.config": json.dumps(config)})
    return path


def shapes_model(path: Path, extra: dict[str, tuple[int, ...]] | None = None, unet: UNetConfig = UNET) -> Path:
    """A tiny SD1-layout file without a stated config (plus `extra` tensors): the architecture is read off
    the shapes."""
    state = tiny_clip_tensors() | zeros_of(build_on_meta(lambda: UNet(unet)), UNET_PREFIX)
    state |= zeros_of(build_on_meta(lambda: AutoencoderKL(VAE)), VAE_PREFIX)
    save_file(state | {k: torch.zeros(s) for k, s in (extra or {}).items()}, path)
    return path


def preview_file(path: Path, config: dict | str, width: int = 8) -> Path:
    decoder = PreviewDecoder(PreviewDecoderConfig(width=width))
    raw = config if isinstance(config, str) else json.dumps(config)
    save_file(decoder.state_dict(), path, metadata={CONFIG_KEY: raw})
    return path


def refused(load, path: Path, *words: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and all(w in message for w in words), message
    return message


def test_the_tiny_files_these_tests_break_load(tmp_path):
    """The control: every case below changes one thing about a file that loads."""
    model = load_model(stated_model(tmp_path / "stated.safetensors"))
    assert model.unet.config == UNET and model.vae.config == VAE
    assert load_model(shapes_model(tmp_path / "shapes.safetensors")).unet.config.num_res_blocks == 1
    assert isinstance(load_preview_decoder(preview_file(tmp_path / "p.safetensors", {"width": 8})), PreviewDecoder)


# --- latentdesk.config: every number bounded, then checked against the tensors ----------------------

STATED_CASES = [
    ("blocks400", {"unet": {"num_res_blocks": 400}}, "num_res_blocks 400"),
    ("blocks_mismatch", {"unet": {"num_res_blocks": 2}}, "num_res_blocks = 2"),
    ("groups0", {"unet": {"norm_groups": 0}}, "norm_groups 0"),
    ("groups_split", {"unet": {"norm_groups": 5}}, "norm_groups"),
    ("width_text", {"unet": {"model_channels": "32"}}, "model_channels"),
    ("width_float", {"unet": {"model_channels": 32.5}}, "model_channels"),
    ("width_huge", {"unet": {"model_channels": 10**6}}, "model_channels"),
    ("levels_many", {"unet": {"channel_mult": [1] * 40, "transformer_depth": [1] * 40, "num_heads": [1] * 40}},
     "40 levels"),
    ("depth_huge", {"unet": {"transformer_depth": [5000]}}, "transformer_depth"),
    ("heads0", {"unet": {"num_heads": [0]}}, "num_heads"),
    ("context_neg", {"unet": {"context_dim": -8}}, "context_dim"),
    ("adm_list", {"unet": {"adm_in_channels": [1, 2]}}, "adm_in_channels"),
    ("coord_text", {"unet": {"coord_channels": "yes"}}, "coord_channels"),
    ("cross_only_text", {"unet": {"cross_attention_only": "0"}}, "cross_attention_only"),
    ("cross_only_level", {"unet": {"cross_attention_only": [7]}}, "cross_attention_only level 7"),
    ("cross_only_empty", {"unet": {"transformer_depth": [0], "cross_attention_only": [0]}}, "no transformer blocks"),
    ("cross_only_twice", {"unet": {"cross_attention_only": [0, 0]}}, "twice"),
    ("cross_only_mismatch", {"unet": {"cross_attention_only": [0]}}, "attn1"),
    ("cond_dim_huge", {"unet": {"time_cond_proj_dim": 10**9}}, "time_cond_proj_dim"),
    ("cond_dim_text", {"unet": {"time_cond_proj_dim": "256"}}, "time_cond_proj_dim"),
    ("vae_blocks", {"vae": {"num_res_blocks": 100_000}}, "num_res_blocks 100000"),
    ("vae_groups0", {"vae": {"norm_groups": 0}}, "norm_groups 0"),
    ("vae_scale_nan", {"vae": {"scale_factor": float("nan")}}, "scale_factor"),
    ("vae_scale_text", {"vae": {"scale_factor": "0.18"}}, "scale_factor"),
    ("vae_mismatch", {"vae": {"z_channels": 8}}, "z_channels = 8"),
    ("family_list", {"family": ["sd1"]}, "unknown family"),
    ("text_heads0", {"text_encoder": {"num_attention_heads": 0}}, "num_attention_heads"),
    ("text_act", {"text_encoder": {"hidden_act": "nope"}}, "hidden_act"),
    ("size_huge", {"default_size": 10**9}, "default_size"),
    ("steps_text", {"default_steps": "20"}, "default_steps"),
    ("guidance_nan", {"default_guidance": float("nan")}, "default_guidance"),
    ("sampler", {"default_sampler": "Rocket"}, "default_sampler"),
]


@pytest.mark.parametrize("name,change,words", STATED_CASES, ids=[c[0] for c in STATED_CASES])
def test_a_stated_config_is_bounded_and_checked_against_the_tensors(tmp_path, name, change, words):
    refused(load_model, stated_model(tmp_path / f"{name}.safetensors", **change), words)


@pytest.mark.parametrize("text", ["[" * 100_000, '{"format": 1, "family": "sd1", "unet": ' + "9" * 5000 + "}"],
                         ids=["deep", "long_number"])
def test_a_stated_config_that_python_cannot_parse(tmp_path, text):
    path = tmp_path / "x.safetensors"
    save_file(tiny_clip_tensors() | zeros_of(build_on_meta(lambda: UNet(UNET)), UNET_PREFIX), path,
              metadata={"latentdesk.config": text})
    refused(load_model, path, "latentdesk.config")


# --- architectures read off the shapes: the counts come from key names --------------------------------

SHAPE_CASES = [
    ("far_block", {UNET_PREFIX + "input_blocks.100000.0.in_layers.2.weight": (32, 32, 3, 3)}, "input blocks"),
    ("long_index", {UNET_PREFIX + "input_blocks." + "9" * 5000 + ".0.x": (1,)}, "model.diffusion_model."),
    ("far_transformer", {UNET_PREFIX + "input_blocks.1.1.transformer_blocks.99999.norm1.weight": (32,)}, "transformer"),
    ("flat_conv_in", {UNET_PREFIX + "input_blocks.0.0.weight": (32,)}, "input_blocks.0.0.weight"),
    ("vae_far_block", {VAE_PREFIX + "encoder.down.0.block.100000.conv1.weight": (32, 32, 3, 3)}, "VAE"),
    ("vae_flat", {VAE_PREFIX + "decoder.conv_out.weight": ()}, "decoder.conv_out.weight"),
    ("text_far_layer", {TEXT_PREFIX + "encoder.layers.100000.mlp.fc1.weight": (16, 8)}, "layers"),
    ("text_long_index", {TEXT_PREFIX + "encoder.layers." + "9" * 5000 + ".mlp.fc1.weight": (16, 8)}, "text encoder"),
]


@pytest.mark.parametrize("name,extra,words", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_counts_read_off_key_names_are_bounded(tmp_path, name, extra, words):
    refused(load_model, shapes_model(tmp_path / f"{name}.safetensors", extra), words)


def test_shapes_whose_widths_do_not_split_into_the_norm_groups(tmp_path):
    # Shapes cannot show GroupNorm's group count; SD's is 32, which cannot split 48 channels (torch raised
    # a ValueError while building).
    path = shapes_model(tmp_path / "x.safetensors", unet=replace(UNET, model_channels=48, norm_groups=16))
    refused(load_model, path, "do not split into 32 norm groups")


def test_a_zero_wide_unet(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(tiny_clip_tensors() | {UNET_PREFIX + "input_blocks.0.0.weight": torch.zeros(0, 4, 3, 3),
                                     UNET_PREFIX + "input_blocks.1.0.in_layers.2.weight": torch.zeros(32, 0, 3, 3),
                                     UNET_PREFIX + "out.2.weight": torch.zeros(4, 0, 3, 3)}, path)
    refused(load_model, path, "model.diffusion_model.")


def test_a_diffusers_layout_vae_file_with_parts_missing(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(2, 2, 3, 3),
               "encoder.down_blocks.x.resnets.0.conv1.weight": torch.zeros(2)}, path)
    refused(lambda p: load_vae(p, scale_factor=0.18215), path, "VAE")


# --- preview decoders --------------------------------------------------------------------------------

PREVIEW_CASES = [
    ("width", {"width": 1000}, "width 1000"),
    ("blocks", {"blocks": 10_000}, "blocks 10000"),
    ("factor", {"factor": 10**6}, "factor"),
    ("channels", {"latent_channels": 10**6}, "latent_channels"),
    ("float", {"width": 8.5}, "width"),
    ("bool", {"blocks": True}, "blocks"),
    ("list", [8], "config"),
    ("deep", "[" * 100_000, "config"),
    ("long_number", '{"width": ' + "9" * 5000 + "}", "config"),
]


@pytest.mark.parametrize("name,config,words", PREVIEW_CASES, ids=[c[0] for c in PREVIEW_CASES])
def test_a_preview_decoder_config_is_bounded(tmp_path, name, config, words):
    refused(load_preview_decoder, preview_file(tmp_path / f"{name}.preview.safetensors", config), words)


def test_taesd_layer_numbers_python_cannot_read(tmp_path):
    path = tmp_path / "taesd.safetensors"
    save_file({"decoder.layers.0.weight": torch.zeros(8, 4, 3, 3),
               "decoder.layers." + "9" * 5000 + ".weight": torch.zeros(1),
               "decoder.layers.²": torch.zeros(1)}, path)
    refused(load_preview_decoder, path, "TAESD")


# --- diffusers folders ---------------------------------------------------------------------------------

UNET_JSON = {"_class_name": "UNet2DConditionModel", "down_block_types": ["CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D"], "block_out_channels": [32], "layers_per_block": 1,
             "cross_attention_dim": TEXT_WIDTH, "attention_head_dim": 1}


def diffusers_folder(root: Path, unet_json: dict | None = None, index: dict | None = None,
                     unet_weights: dict | None = None) -> Path:
    """A hand-made SD1 diffusers folder: JSON files, a tiny text encoder, a UNet file with one tensor
    (or a shard index whose `weight_map` is `unet_weights`); the loader reads no further than that."""
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps(index or {"_class_name": "StableDiffusionPipeline"}))
    for part, config in (("unet", {**UNET_JSON, **(unet_json or {})}), ("text_encoder", {"hidden_act": "quick_gelu"}),
                         ("vae", {})):
        (root / part).mkdir()
        (root / part / "config.json").write_text(json.dumps(config))
    text = {k.removeprefix("cond_stage_model.transformer."): v for k, v in tiny_clip_tensors().items()}
    save_file(text, root / "text_encoder" / "model.safetensors")
    if unet_weights is None:
        save_file({"conv_in.weight": torch.zeros(32, 4, 3, 3)}, root / "unet" / "diffusion_pytorch_model.safetensors")
    else:
        (root / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"weight_map": unet_weights}))
    return root


FOLDER_CASES = [
    ("class_list", {"index": {"_class_name": ["StableDiffusionPipeline"]}}, "pipeline"),
    ("map_value_int", {"unet_weights": {"a": 5}}, "weight_map"),
    ("map_value_list", {"unet_weights": {"a": ["x.safetensors"]}}, "weight_map"),
    ("drive_relative", {"unet_weights": {"a": "C:x.safetensors"}}, "outside the folder"),
    ("drive_absolute", {"unet_weights": {"a": "C:\\x.safetensors"}}, "outside the folder"),
    ("unc", {"unet_weights": {"a": "\\\\server\\share\\x.safetensors"}}, "outside the folder"),
    ("parent", {"unet_weights": {"a": ".."}}, "outside the folder"),
    ("blocks400", {"unet_json": {"layers_per_block": 400}}, "layers_per_block 400"),
    ("blocks_dict", {"unet_json": {"layers_per_block": {"a": 1}}}, "layers_per_block"),
    ("widths_text", {"unet_json": {"block_out_channels": ["32"]}}, "block_out_channels"),
    ("widths_zero", {"unet_json": {"block_out_channels": [0]}}, "block_out_channels"),
    ("types_int", {"unet_json": {"down_block_types": 5}}, "down_block_types"),
    ("types_nested", {"unet_json": {"down_block_types": [["CrossAttnDownBlock2D"]]}}, "down_block_types"),
    ("groups0", {"unet_json": {"norm_num_groups": 0}}, "norm_num_groups 0"),
    ("reverse_int", {"unet_json": {"reverse_transformer_layers_per_block": 3}}, "reverse_transformer"),
    ("heads_text", {"unet_json": {"attention_head_dim": "eight"}}, "attention_head_dim"),
]


@pytest.mark.parametrize("name,change,words", FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES])
def test_a_diffusers_folder_states_bounded_numbers_of_the_right_kind(tmp_path, name, change, words):
    refused(load_model, diffusers_folder(tmp_path / name, **change), words)


VAE_JSON = {"block_out_channels": [32], "layers_per_block": 1, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"]}


@pytest.mark.parametrize("change,words", [
    ({"block_out_channels": ["wide"]}, "block_out_channels"),
    ({"block_out_channels": 32}, "block_out_channels"),
    ({"layers_per_block": 1e300}, "layers_per_block"),
    ({"layers_per_block": 2.5}, "layers_per_block"),
    ({"latent_channels": None}, "latent_channels"),
    ({"norm_num_groups": 0}, "norm_num_groups 0"),
], ids=["widths_text", "widths_int", "blocks_huge", "blocks_float", "latents_null", "groups0"])
def test_a_diffusers_vae_config_states_numbers(tmp_path, change, words):
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**VAE_JSON, **change}))
    save_file({"encoder.conv_in.weight": torch.zeros(32, 3, 3, 3)}, folder / "diffusion_pytorch_model.safetensors")
    refused(lambda p: load_vae(p, scale_factor=0.18215), folder, words)


@pytest.mark.parametrize("scale", ["0.18", float("nan"), float("inf"), -1.0, None])
def test_a_diffusers_vae_scale_factor_is_a_positive_number(scale):
    from core.loading.convert_vae import vae_config_from_diffusers
    with pytest.raises(LatentDeskError, match="scaling_factor"):
        vae_config_from_diffusers({**VAE_JSON, "scaling_factor": scale})


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a": ' + "1" * 5000 + "}"], ids=["deep", "long_number"])
def test_a_diffusers_json_file_python_cannot_parse(tmp_path, text):
    folder = diffusers_folder(tmp_path / "model")
    (folder / "model_index.json").write_text(text)
    refused(load_model, folder, "model_index.json")


# --- no large allocation, no hang ----------------------------------------------------------------------

MEASURE = r"""
import json, sys, time
from pathlib import Path

from core.loading.checkpoint import load_model                 # imported first: importing is not the load's cost
from core.errors import LatentDeskError
from core.loading.preview_decoders import load_preview_decoder

def kib(field):
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(field + ":"))

load = {"model": load_model, "preview": load_preview_decoder}
try:
    Path("/proc/self/clear_refs").write_text("5")      # the peak (VmHWM) restarts from here
except OSError:                                        # not allowed here: the peak so far is the imports'
    pass
before, start = kib("VmRSS"), time.perf_counter()
try:
    load[sys.argv[1]](sys.argv[2])
    outcome = "loaded"
except LatentDeskError as error:
    outcome = f"{type(error).__name__}: {error}"
print(json.dumps({"outcome": outcome, "peak_mib": (kib("VmHWM") - before) / 1024,
                  "seconds": time.perf_counter() - start}))
"""
PEAK_LIMIT_MIB = 64


def taesd_file(path: Path) -> Path:
    # The two tensors that make a file look like TAESD; the first says 256 channels wide (the limit).
    save_file({"1.weight": torch.zeros(256, 4, 3, 3), "3.conv.0.weight": torch.zeros(1)}, path)
    return path


ALLOCATION_CASES = [
    ("preview_width", "preview", lambda d: preview_file(d / "x.preview.safetensors", {"width": 1000})),
    ("taesd_width", "preview", lambda d: taesd_file(d / "taesd_decoder.safetensors")),
    ("stated_blocks", "model", lambda d: stated_model(d / "x.safetensors", {"num_res_blocks": 400})),
    ("stated_blocks_100000", "model", lambda d: stated_model(d / "x.safetensors", {"num_res_blocks": 100_000})),
    # Within every limit, but not what the tensors hold: compared before it is built.
    ("stated_blocks_in_limits", "model", lambda d: stated_model(d / "x.safetensors", {"num_res_blocks": 16,
                                                                                      "transformer_depth": [7]})),
    ("folder_blocks", "model", lambda d: diffusers_folder(d / "x", {"layers_per_block": 400})),
    ("shapes_far_block", "model", lambda d: shapes_model(
        d / "x.safetensors", {UNET_PREFIX + "input_blocks.100000.0.in_layers.2.weight": (32, 32, 3, 3)})),
    ("vae_far_block", "model", lambda d: shapes_model(
        d / "x.safetensors", {VAE_PREFIX + "encoder.down.0.block.100000.conv1.weight": (32, 32, 3, 3)})),
    ("text_far_layer", "model", lambda d: shapes_model(
        d / "x.safetensors", {TEXT_PREFIX + "encoder.layers.100000.mlp.fc1.weight": (16, 8)})),
]


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak RSS from /proc/self/status")
@pytest.mark.parametrize("name,loader,build", ALLOCATION_CASES, ids=[c[0] for c in ALLOCATION_CASES])
def test_a_hostile_file_is_refused_quickly_without_a_large_allocation(tmp_path, name, loader, build):
    path = build(tmp_path)
    result = subprocess.run([sys.executable, "-c", MEASURE, loader, str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(name, report)
    assert report["outcome"].startswith("ModelLoadError"), report
    assert report["peak_mib"] < PEAK_LIMIT_MIB, report
    assert report["seconds"] < 5, report
