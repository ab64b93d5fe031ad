"""Loading a diffusers model folder (model_index.json, unet/, vae/, text_encoder/, …).

Weights are read from `.safetensors` only; a folder that has only pickled
`.bin` files is refused with a message, never unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.assemble import blame, check_context_width, load_text_encoder
from core.convert_unet import unet_config_from_diffusers, unet_state_from_diffusers
from core.convert_vae import vae_config_from_diffusers, vae_state_from_diffusers
from core.errors import ModelLoadError
from core.families import SD1, SD2, SDXL, Family
from core.model import Loaded
from core.safetensors_io import PICKLE_SUFFIXES, SafetensorsFile, refuse_pickle
from core.unet import UNet
from core.vae import AutoencoderKL
from core.weights import build_on_meta, fill

MAX_CONFIG_BYTES = 1024 * 1024
WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
PIPELINES = {
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionXLInpaintPipeline",
}


def load_parts(folder: Path, parts, *, dtype: torch.dtype, device):
    index = read_json(folder / "model_index.json", folder)
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES:
        raise ModelLoadError(folder, f"model_index.json names pipeline {pipeline!r}, which is not a Stable "
                                     "Diffusion 1.x/2.x/XL pipeline")
    family = _family(folder, index)
    scheduler = _optional_json(folder / "scheduler" / "scheduler_config.json", folder)
    loaded = Loaded(family, {}, scheduler_prediction=scheduler.get("prediction_type"))

    unet_dir = folder / "unet"
    unet_config = _converted(unet_dir, lambda: unet_config_from_diffusers(read_json(unet_dir / "config.json", folder)))
    if "text_encoder" in parts:
        text_states = [read_weights(folder / spec.diffusers_folder, dtype, device) for spec in family.text_encoders]
        text_encoder = load_text_encoder(family, text_states, folder,
                                         [spec.diffusers_folder + "/" for spec in family.text_encoders], trimmed=True)
        check_context_width(folder, family, unet_config.context_dim, text_encoder)
        loaded.parts["text_encoder"] = text_encoder
    if "unet" in parts:
        unet_state = read_weights(unet_dir, dtype, device)
        loaded.parts["unet"] = fill(build_on_meta(lambda: UNet(unet_config)),
                                    _converted(unet_dir, lambda: unet_state_from_diffusers(unet_state, unet_config)),
                                    unet_dir, lambda k: f"(original name) {k}")
    if "vae" in parts:
        loaded.parts["vae"] = load_vae_folder(folder / "vae", dtype=dtype, device=device, scale_factor=None)
    return loaded


def load_vae_folder(folder: Path, *, dtype: torch.dtype, device, scale_factor: float | None) -> AutoencoderKL:
    config_json = read_json(folder / "config.json", folder)
    if scale_factor is not None:  # a replacement VAE keeps the model family's latent scale
        config_json = {**config_json, "scaling_factor": scale_factor}
    config = _converted(folder, lambda: vae_config_from_diffusers(config_json))
    state = read_weights(folder, dtype, device)
    return fill(build_on_meta(lambda: AutoencoderKL(config)),
                _converted(folder, lambda: vae_state_from_diffusers(state, config)),
                folder, lambda k: f"(original name) {k}")


def _family(folder: Path, index: dict) -> Family:
    if "text_encoder_2" in index or (folder / "text_encoder_2").is_dir():
        if not (folder / "text_encoder").is_dir():
            raise ModelLoadError(folder, "an SDXL refiner (no text_encoder/); refiners are not supported yet")
        return SDXL
    config = read_json(folder / "text_encoder" / "config.json", folder)
    # OpenAI's CLIP-L (SD1) uses quick_gelu; OpenCLIP-H (SD2) uses gelu.
    return SD1 if config.get("hidden_act", "quick_gelu") == "quick_gelu" else SD2


def read_json(path: Path, model: Path) -> dict:
    if not path.is_file():
        raise ModelLoadError(model, f"{path.relative_to(model) if path.is_relative_to(model) else path} is missing: "
                                    "not a complete diffusers model folder")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelLoadError(model, f"{path.name} is {path.stat().st_size} bytes, too large for a config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(model, f"{path.name} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(model, f"{path.name} is not a JSON object")
    return data


def _optional_json(path: Path, model: Path) -> dict:
    return read_json(path, model) if path.is_file() else {}


def read_weights(component: Path, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """All tensors of one component folder (single or sharded .safetensors), in `dtype`."""
    if not component.is_dir():
        raise ModelLoadError(component, "component folder is missing: not a complete diffusers model folder")
    files = weight_files(component)
    state: dict[str, torch.Tensor] = {}
    for file in (SafetensorsFile(f) for f in files):
        for key in file.keys():
            if key in state:
                raise ModelLoadError(file.path, f"tensor {key!r} appears in two shards")
        state |= {key: tensor.to(device) for key, tensor in file.read_many(file.keys(), dtype).items()}
    return state


def weight_files(component: Path) -> list[Path]:
    for name in WEIGHT_NAMES:
        for variant in ("", ".fp16"):
            single = component / f"{name}{variant}.safetensors"
            if single.is_file():
                return [single]
            index = component / f"{name}{variant}.safetensors.index.json"
            if index.is_file():
                weight_map = read_json(index, component).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise ModelLoadError(index, "weight_map missing or empty")
                shards = sorted(set(weight_map.values()))
                if any(not isinstance(s, str) or "/" in s or "\\" in s or s.startswith(".") for s in shards):
                    raise ModelLoadError(index, "weight_map names a shard outside the folder")
                return [component / s for s in shards]
    pickled = [p for p in component.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickled:
        refuse_pickle(pickled[0])
    raise ModelLoadError(component, "no .safetensors weights in this folder")


def _converted(component: Path, convert):
    with blame(component, "config or weights"):
        return convert()
