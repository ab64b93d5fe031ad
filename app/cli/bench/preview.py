"""Per-step previews as the window makes them (app/preview.py), without Qt: what "preview on" costs.

    fast_preview(model) -> on_step    every step: the linear latent→RGB map fitted to this VAE
    vae_preview(model)  -> on_step    every step: the predicted clean latent x0 through the VAE

Each ends where the app hands pixels to Qt: an 8-bit (H, W, 3) array on the CPU. The app's default,
"Auto", mixes the two and keeps VAE decodes under 8 % of the sampling time, so its cost lies between
these two; measuring both ends bounds it without running the window.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from core.generate import StepInfo
from core.model import DiffusionModel
from core.nets.latent_rgb import fit_latent_to_rgb


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in about [-1, 1] -> (H, W, 3) uint8: the copy the app makes for its QImage."""
    image = torch.nan_to_num(image.detach().to("cpu", torch.float32), nan=-1.0)
    pixels = ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())


def fast_preview(model: DiffusionModel) -> Callable[[StepInfo], np.ndarray]:
    latent_rgb = fit_latent_to_rgb(model.vae)   # the app fits this once, when the model loads

    def on_step(step: StepInfo) -> np.ndarray:
        return to_pixels(latent_rgb(step.denoised[0]))
    return on_step


def vae_preview(model: DiffusionModel) -> Callable[[StepInfo], np.ndarray]:
    def on_step(step: StepInfo) -> np.ndarray:
        with torch.no_grad():
            return to_pixels(model.vae.decode_latents(step.denoised[:1])[0])
    return on_step
