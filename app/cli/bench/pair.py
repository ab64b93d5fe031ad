"""One set of random weights, two implementations: diffusers' modules and ours, converted from them.

    build_pair(spec, seed, device, dtype) -> ModelPair(ours: DiffusionModel, theirs: {"unet", "vae", "text_encoder"})

Ours is made the way a diffusers folder is opened (core/loading/diffusers_folder.py): our config and key
converters, then our modules built on the meta device and filled. The tensors are cloned first, so
the two sides share no storage and neither can warm the other's caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from app.cli.bench.reference import diffusers_networks
from app.cli.bench.specs import BenchSpec
from core.families import SD1
from core.loading.convert_unet import unet_config_from_diffusers, unet_state_from_diffusers
from core.loading.convert_vae import vae_config_from_diffusers, vae_state_from_diffusers
from core.loading.weights import build_on_meta, fill
from core.model import DiffusionModel
from core.nets.unet import UNet
from core.nets.vae import AutoencoderKL
from core.text.encoder import TextEncoder

SOURCE = Path("benchmark-random-weights")   # DiffusionModel wants a source; nothing is read from it


@dataclass
class ModelPair:
    spec: BenchSpec
    ours: DiffusionModel
    theirs: dict[str, torch.nn.Module]   # diffusers' unet, vae; transformers' text_encoder


def build_pair(spec: BenchSpec, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ModelPair:
    theirs = diffusers_networks(spec, seed)
    unet_config = unet_config_from_diffusers(dict(theirs["unet"].config))
    vae_config = vae_config_from_diffusers(dict(theirs["vae"].config))
    unet = fill(build_on_meta(lambda: UNet(unet_config)),
                unet_state_from_diffusers(cloned(theirs["unet"]), unet_config), SOURCE, str)
    vae = fill(build_on_meta(lambda: AutoencoderKL(vae_config)),
               vae_state_from_diffusers(cloned(theirs["vae"]), vae_config), SOURCE, str)
    # A diffusers folder's text_encoder/ holds exactly these tensors, already cut to the layers SD1 uses.
    text_encoder = TextEncoder.from_state_dicts(SD1.text_encoders, [cloned(theirs["text_encoder"])], trimmed=True)
    ours = DiffusionModel(SD1, moved(unet, device, dtype), moved(vae, device, dtype),
                          moved(text_encoder, device, dtype).eval(), "epsilon", "benchmark", SOURCE)
    theirs = {name: moved(module, device, dtype).requires_grad_(False) for name, module in theirs.items()}
    return ModelPair(spec, ours, theirs)


def moved(module: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """Cast only when it changes something: diffusers warns on every dtype cast, needed or not."""
    module = module.to(device)
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)


def cloned(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: tensor.detach().clone() for key, tensor in module.state_dict().items()}
