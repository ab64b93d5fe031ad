"""A loaded latent diffusion model: its three networks and what we know about them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from core.families import Family
from core.nets.unet import UNet
from core.nets.vae import AutoencoderKL
from core.text.encoder import TextEncoder


@dataclass(frozen=True)
class DiffusionModel:
    family: Family
    unet: UNet
    vae: AutoencoderKL
    text_encoder: TextEncoder
    prediction: str            # "epsilon" or "v": what the UNet's output means
    prediction_source: str     # which signal decided it, for the UI and bug reports
    source: Path               # the file or folder it came from

    @property
    def name(self) -> str:
        return self.source.stem if self.source.is_file() else self.source.name

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def replace(self, **components) -> DiffusionModel:
        """The same model with some parts swapped, e.g. `model.replace(vae=load_vae(path))`."""
        return dataclasses.replace(self, **components)
