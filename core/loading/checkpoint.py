"""Loading the checkpoints people have: single `.safetensors` files and diffusers folders.

    load_model(path)                   ->  DiffusionModel (UNet + VAE + text encoder, family, prediction)
    replace_parts(model, path, parts)  ->  the model with e.g. the UNet or text encoder of another checkpoint
    load_vae(path)                     ->  AutoencoderKL from a standalone VAE file or folder

A single file uses the original LDM key layout; the family (SD1.x / SD2.x / SDXL)
is read off which text encoders it carries, and every network's config off the
tensor shapes (the key prefixes of each family are in core/families.py). Any problem raises `ModelLoadError` naming the
file and the reason; nothing half-built survives it, since nothing is kept
until every part has loaded.
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from core.errors import LatentDeskError, ModelLoadError
from core.families import FAMILIES, UNET_PREFIX, VAE_PREFIX, Family
from core.loading import diffusers_folder, embedded_config
from core.loading.assemble import blame, check_context_width, load_text_encoder
from core.loading.convert_unet import check_stated_unet, unet_config_from_shapes
from core.loading.convert_vae import (
    check_stated_vae,
    diffusers_vae_config_from_shapes,
    fix_attention_shapes,
    vae_config_from_shapes,
    vae_shapes_from_diffusers,
    vae_state_from_diffusers,
)
from core.loading.footprint import check_load_fits
from core.loading.loaded_parts import LoadedParts
from core.loading.prediction import PREDICTIONS, decide_prediction
from core.loading.safetensors_io import SafetensorsFile
from core.loading.weights import build_on_meta, fill
from core.model import DiffusionModel
from core.nets.unet import UNet
from core.nets.vae import AutoencoderKL

# Families are tried most specific first: SDXL's first encoder looks like SD1's.
DETECTION_ORDER = ("sdxl", "sd2", "sd1")
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


PARTS = ("text_encoder", "unet", "vae")


def load_model(path: str | Path, *, prediction: str | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a Stable Diffusion model; `prediction` ("epsilon" / "v") overrides detection."""
    path = Path(path)
    if prediction is not None and prediction not in PREDICTIONS:
        raise LatentDeskError(f"prediction type must be one of {PREDICTIONS}, not {prediction!r}")
    loaded = load_parts(path, PARTS, dtype=dtype, device=device)
    unet = loaded.parts["unet"]
    chosen, source = decide_prediction(prediction, loaded.metadata, loaded.keys, loaded.scheduler_prediction,
                                       loaded.family, unet)
    return DiffusionModel(loaded.family, unet, loaded.parts["vae"], loaded.parts["text_encoder"], chosen, source,
                          path)


def replace_parts(model: DiffusionModel, path: str | Path, parts: tuple[str, ...]) -> DiffusionModel:
    """`model` with some networks taken from another checkpoint of the same family (only those are read)."""
    path = Path(path)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise LatentDeskError(f"unknown model parts {sorted(unknown)}; choose from {PARTS}")
    loaded = load_parts(path, parts, dtype=model.dtype, device=model.device)
    if loaded.family.name != model.family.name:
        raise ModelLoadError(path, f"is {loaded.family.title}, the model is {model.family.title}")
    swapped = model.replace(**loaded.parts)
    check_context_width(path, swapped.family, swapped.unet.config.context_dim, swapped.text_encoder)
    if swapped.unet.config.out_channels != swapped.vae.config.z_channels:
        raise ModelLoadError(path, f"the UNet makes {swapped.unet.config.out_channels}-channel latents, the VAE "
                                   f"reads {swapped.vae.config.z_channels}")
    return swapped


def load_parts(path: Path, parts, *, dtype: torch.dtype, device) -> LoadedParts:
    try:
        check_load_fits(path, dtype, torch.device(device))
        if path.is_dir():
            return diffusers_folder.load_parts(path, parts, dtype=dtype, device=device)
        return _single_file_parts(path, parts, dtype, device)
    except torch.OutOfMemoryError:
        gc.collect()
        raise ModelLoadError(path, "not enough memory to load this model") from None
    except OSError as e:   # a folder or file that cannot be listed or read (permissions, a drive gone)
        raise ModelLoadError(e.filename or path, f"cannot be read ({e.strerror or e})") from None


def _single_file_parts(path: Path, parts, dtype: torch.dtype, device) -> LoadedParts:
    file = SafetensorsFile(path)
    family = detect_family(file)
    embedded = embedded_config.read(path, file.metadata)
    if embedded is not None:
        if embedded.family.name != family.name:
            raise ModelLoadError(path, f"metadata says {embedded.family.name} but the tensors are laid out as "
                                       f"{family.name}")
        family = embedded.family

    def read_component(prefix: str) -> dict[str, torch.Tensor]:
        read = file.read_many([k for k in file.keys() if k.startswith(prefix)], dtype)
        return {k[len(prefix):]: v.to(device) for k, v in read.items()}

    def shapes(prefix: str) -> dict[str, tuple[int, ...]]:
        return {k[len(prefix):]: s for k, s in file.shapes.items() if k.startswith(prefix)}

    if embedded is not None:   # stated, so held against the tensors before anything is built or read
        unet_config, vae_config = embedded.unet, embedded.vae
        _derived(path, f"UNet ({UNET_PREFIX}*)", lambda: check_stated_unet(unet_config, shapes(UNET_PREFIX)))
        _derived(path, f"VAE ({VAE_PREFIX}*)", lambda: check_stated_vae(vae_config, shapes(VAE_PREFIX)))
    else:
        unet_config = _derived(path, f"UNet ({UNET_PREFIX}*)",
                               lambda: unet_config_from_shapes(shapes(UNET_PREFIX), family.heads_for))
        vae_config = _derived(path, f"VAE ({VAE_PREFIX}*)",
                              lambda: vae_config_from_shapes(shapes(VAE_PREFIX), family.latent_scale))
    loaded = LoadedParts(family, {}, file.metadata, file.keys())
    # 1. Text encoders first: they tell us the context width the UNet must have.
    if "text_encoder" in parts:
        text_encoder = load_text_encoder(family, [read_component(s.prefix) for s in family.text_encoders], path,
                                         [s.prefix + "*" for s in family.text_encoders],
                                         stated=[embedded.text_encoder] if embedded is not None else None)
        check_context_width(path, family, unet_config.context_dim, text_encoder)
        loaded.parts["text_encoder"] = text_encoder
    # 2. UNet and VAE.
    if "unet" in parts:
        loaded.parts["unet"] = fill(build_on_meta(lambda: UNet(unet_config)), read_component(UNET_PREFIX), path,
                                    lambda k: UNET_PREFIX + k)
    if "vae" in parts:
        vae_state = {k: v for k, v in read_component(VAE_PREFIX).items() if k.startswith(VAE_PARTS)}
        loaded.parts["vae"] = fill(build_on_meta(lambda: AutoencoderKL(vae_config)), fix_attention_shapes(vae_state),
                                   path, lambda k: VAE_PREFIX + k)
    return loaded


def detect_family(file: SafetensorsFile) -> Family:
    keys = file.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if not has(UNET_PREFIX):
        raise ModelLoadError(file.path, f"not a Stable Diffusion checkpoint: no UNet tensors ({UNET_PREFIX}*); "
                                        f"{_what_it_looks_like(keys)}")
    if UNET_PREFIX + "input_blocks.0.0.weight" not in file.entries:
        raise ModelLoadError(file.path, "unknown architecture: the model has no SD-style UNet "
                                        f"({UNET_PREFIX}input_blocks.0.0.weight is missing); SD3, Flux and "
                                        "other transformer models are not supported")
    if has("conditioner.embedders.0.model."):
        raise ModelLoadError(file.path, "this is an SDXL refiner; load the SDXL base model instead "
                                        "(refiners are not supported yet)")
    for name in DETECTION_ORDER:
        family = FAMILIES[name]
        if all(has(spec.prefix) for spec in family.text_encoders):
            return family
    raise ModelLoadError(file.path, "unknown architecture: a UNet without a text encoder Latent Desk recognises "
                                    "(expected CLIP under cond_stage_model.* or conditioner.embedders.*)")


def _derived(path: Path, what: str, derive):
    with blame(path, what):
        return derive()


def _what_it_looks_like(keys: list[str]) -> str:
    if any("lora_" in k or ".lora_down." in k or ".lora_A." in k for k in keys):
        return "it looks like a LoRA, which is applied on top of a model, not loaded as one"
    if any(k.startswith(("encoder.conv_in", VAE_PREFIX, "decoder.conv_in")) for k in keys):
        return "it looks like a standalone VAE; open it as the model's VAE instead"
    if not keys:
        return "the file holds no tensors"
    return f"its first tensor is {keys[0]!r}"


# --- standalone VAE ---------------------------------------------------------------------------------

def load_vae(path: str | Path, *, scale_factor: float, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> AutoencoderKL:
    """A VAE file or folder that replaces a model's own (scale factor stays the model family's)."""
    path = Path(path)
    if path.is_dir():
        return diffusers_folder.load_vae_folder(path, dtype=dtype, device=device, scale_factor=scale_factor)
    file = SafetensorsFile(path)
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in file.keys()) else ""
    shapes = {k[len(prefix):]: s for k, s in file.shapes.items() if k.startswith(prefix)}
    if not any(k.startswith(("encoder.", "decoder.")) for k in shapes):
        raise ModelLoadError(path, "not a VAE: no encoder.* / decoder.* tensors")
    # 1. The config, read off the shapes and checked against all of them: nothing read or built yet.
    diffusers_layout = any(".down_blocks." in k or ".up_blocks." in k for k in shapes)
    if diffusers_layout:
        config = _derived(path, "VAE", lambda: diffusers_vae_config_from_shapes(shapes, scale_factor))
        _derived(path, "VAE", lambda: check_stated_vae(config, vae_shapes_from_diffusers(shapes, config)))
    else:
        # Some VAE files also carry the training-only discriminator (loss.*) or EMA copies: not read.
        shapes = {k: s for k, s in shapes.items() if k.startswith(VAE_PARTS)}
        config = _derived(path, "VAE", lambda: vae_config_from_shapes(shapes, scale_factor))
    # 2. The tensors.
    state = {k[len(prefix):]: v.to(device) for k, v in file.read_many([prefix + k for k in shapes], dtype).items()}
    if diffusers_layout:
        state = _derived(path, "VAE", lambda: vae_state_from_diffusers(state, config))
        return fill(build_on_meta(lambda: AutoencoderKL(config)), state, path, lambda k: k)
    return fill(build_on_meta(lambda: AutoencoderKL(config)), fix_attention_shapes(state), path,
                lambda k: prefix + k)
