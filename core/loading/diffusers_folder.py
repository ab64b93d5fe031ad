"""Loading a diffusers model folder (model_index.json, unet/, vae/, text_encoder/, …).

Weights are read from `.safetensors` only; a folder that has only pickled
`.bin` files is refused with a message, never unpickled.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from core.errors import ModelLoadError, shown
from core.families import SD1, SD2, SDXL, Family
from core.limits import MAX_CONFIG_BYTES
from core.loading.assemble import blame, check_context_width, load_text_encoder
from core.loading.convert_unet import check_stated_unet, unet_config_from_diffusers, unet_state_from_diffusers
from core.loading.convert_vae import (
    check_stated_vae,
    vae_config_from_diffusers,
    vae_shapes_from_diffusers,
    vae_state_from_diffusers,
)
from core.loading.loaded_parts import LoadedParts
from core.loading.safetensors_io import PICKLE_SUFFIXES, SafetensorsFile, refuse_pickle
from core.loading.untrusted_json import UnreadableJson, loads
from core.loading.weights import build_on_meta, fill
from core.nets.unet import UNet
from core.nets.vae import AutoencoderKL, VAEConfig

WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
PIPELINES = {
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionXLInpaintPipeline",
    # LCM-distilled SD1.5 models (SimianLuo/LCM_Dreamshaper_v7 on the Hub): an SD UNet plus a guidance embedding.
    "LatentConsistencyModelPipeline", "LatentConsistencyModelImg2ImgPipeline",
}


def load_parts(folder: Path, parts, *, dtype: torch.dtype, device):
    index = read_json(folder / "model_index.json", folder)
    pipeline = index.get("_class_name")
    if not isinstance(pipeline, str) or pipeline not in PIPELINES:
        raise ModelLoadError(folder, f"model_index.json names pipeline {shown(pipeline)}, which is not a Stable "
                                     "Diffusion 1.x/2.x/XL pipeline")
    family = _family(folder, index)
    scheduler = _optional_json(folder / "scheduler" / "scheduler_config.json", folder)
    loaded = LoadedParts(family, {}, scheduler_prediction=scheduler.get("prediction_type"))

    # 1. Each network's config, bounded and held against its files' tensor shapes: nothing read or built yet.
    unet_dir = folder / "unet"
    unet_config = _converted(unet_dir, lambda: unet_config_from_diffusers(read_json(unet_dir / "config.json", folder)))
    if "unet" in parts:
        unet_files = open_weights(unet_dir)
        _converted(unet_dir, lambda: check_stated_unet(
            unet_config, unet_state_from_diffusers(weight_shapes(unet_files), unet_config)))
    if "vae" in parts:
        vae_config, vae_files = _vae_plan(folder / "vae", scale_factor=None)
    # 2. Text encoders: they tell us the context width the UNet must have.
    if "text_encoder" in parts:
        text_states = [read_weights(open_weights(folder / spec.diffusers_folder), dtype, device)
                       for spec in family.text_encoders]
        text_encoder = load_text_encoder(family, text_states, folder,
                                         [spec.diffusers_folder + "/" for spec in family.text_encoders], trimmed=True)
        check_context_width(folder, family, unet_config.context_dim, text_encoder)
        loaded.parts["text_encoder"] = text_encoder
    # 3. UNet and VAE.
    if "unet" in parts:
        unet_state = read_weights(unet_files, dtype, device)
        loaded.parts["unet"] = fill(build_on_meta(lambda: UNet(unet_config)),
                                    _converted(unet_dir, lambda: unet_state_from_diffusers(unet_state, unet_config)),
                                    unet_dir, lambda k: f"(original name) {k}")
    if "vae" in parts:
        loaded.parts["vae"] = _vae(folder / "vae", vae_config, vae_files, dtype, device)
    return loaded


def load_vae_folder(folder: Path, *, dtype: torch.dtype, device, scale_factor: float | None) -> AutoencoderKL:
    return _vae(folder, *_vae_plan(folder, scale_factor), dtype, device)


def _vae_plan(folder: Path, scale_factor: float | None) -> tuple[VAEConfig, list[SafetensorsFile]]:
    """The VAE's config, checked against its files' tensor shapes, and those files (headers read, no tensors)."""
    config_json = read_json(folder / "config.json", folder)
    if scale_factor is not None:  # a replacement VAE keeps the model family's latent scale
        config_json = {**config_json, "scaling_factor": scale_factor}
    config = _converted(folder, lambda: vae_config_from_diffusers(config_json))
    files = open_weights(folder)
    _converted(folder, lambda: check_stated_vae(config, vae_shapes_from_diffusers(weight_shapes(files), config)))
    return config, files


def _vae(folder: Path, config: VAEConfig, files: list[SafetensorsFile], dtype: torch.dtype, device) -> AutoencoderKL:
    state = read_weights(files, dtype, device)
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
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelLoadError(model, f"{path.name} is {path.stat().st_size} bytes, too large for a config file")
        data = loads(path.read_bytes())
    except OSError as e:
        raise ModelLoadError(model, f"{path.name} cannot be read ({e.strerror or e})") from None
    except UnreadableJson as e:
        raise ModelLoadError(model, f"{path.name} is {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(model, f"{path.name} is not a JSON object")
    return data


def _optional_json(path: Path, model: Path) -> dict:
    return read_json(path, model) if path.is_file() else {}


def open_weights(component: Path) -> list[SafetensorsFile]:
    """One component folder's .safetensors files (one, or the shards of an index), headers read and checked."""
    if not component.is_dir():
        raise ModelLoadError(component, "component folder is missing: not a complete diffusers model folder")
    files = [SafetensorsFile(f) for f in weight_files(component)]
    seen: set[str] = set()
    for file in files:
        for key in file.keys():
            if key in seen:
                raise ModelLoadError(file.path, f"tensor {key!r} appears in two shards")
            seen.add(key)
    return files


def weight_shapes(files: list[SafetensorsFile]) -> dict[str, tuple[int, ...]]:
    return {key: shape for file in files for key, shape in file.shapes.items()}


def read_weights(files: list[SafetensorsFile], dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """All tensors of one component's files, in `dtype`."""
    return {key: tensor.to(device) for file in files for key, tensor in file.read_many(file.keys(), dtype).items()}


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
                if not all(isinstance(shard, str) for shard in weight_map.values()):
                    raise ModelLoadError(index, "weight_map names a shard with something other than a file name")
                shards = sorted(set(weight_map.values()))
                if not all(_plain_file_name(shard) for shard in shards):
                    raise ModelLoadError(index, "weight_map names a shard outside the folder")
                return [component / shard for shard in shards]
    pickled = [p for p in component.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickled:
        refuse_pickle(pickled[0])
    raise ModelLoadError(component, "no .safetensors weights in this folder")


def _plain_file_name(name: str) -> bool:
    """A name that stays inside the folder on every system: no separator, drive, root or `..`.

    Checked with both path flavours whatever this machine is: on Windows `C:x.safetensors` is
    relative to drive C's current folder and `\\\\server\\share` is a network path, so a shard index
    made anywhere must not name them.
    """
    return (name not in ("", ".", "..") and not name.startswith(".")
            and all(flavour(name).name == name and not flavour(name).anchor
                    for flavour in (PurePosixPath, PureWindowsPath)))


def _converted(component: Path, convert):
    with blame(component, "config or weights"):
        return convert()
