"""A loaded latent diffusion model: its three networks and what we know about them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.families import Family


@dataclass(frozen=True)
class DiffusionModel:
    family: Family
    unet: nn.Module            # core.nets.unet.UNet
    vae: nn.Module             # core.nets.vae.AutoencoderKL
    text_encoder: nn.Module    # core.text.encoder.TextEncoder
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


@dataclass
class Loaded:
    """What a file or folder gave: the requested networks and the signals about them."""

    family: Family
    parts: dict[str, torch.nn.Module]
    metadata: dict[str, str] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    scheduler_prediction: str | None = None
