"""Per-step previews, made in the worker thread: latents in, a QImage that owns its pixels out.

    make_previewer(mode, model) -> Previewer | None     the one place a preview mode becomes code
    VaePreview(model)(step, noisy) -> QImage            the predicted clean latent x0 through the VAE
    pixels_to_qimage(x) -> QImage                       (3, H, W) in about [-1, 1] → RGB888, copied

The fast linear latent→RGB map (fitted to the loaded VAE at load time) and Auto mode plug in
here as another `Previewer`; the worker and the window do not change.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from PySide6.QtGui import QImage

from app.jobs import PreviewMode
from core.generate import StepInfo
from core.model import DiffusionModel


class Previewer(Protocol):
    def __call__(self, step: StepInfo, noisy: bool) -> QImage: ...


class VaePreview:
    """Decode the first image of the batch through the model's VAE: exactly what the final
    decode would show if sampling stopped here."""

    def __init__(self, model: DiffusionModel):
        self.vae = model.vae

    def __call__(self, step: StepInfo, noisy: bool) -> QImage:
        latents = step.x[:1] if noisy else step.denoised[:1]
        if noisy:
            # x = x0 + σ·ε has standard deviation √(1 + σ²) (Karras et al. 2022, the VE form); the
            # VAE expects unit-scale latents, so show the variance-preserving x / √(1 + σ²) as DDPM does.
            latents = latents / (1 + step.sigma ** 2) ** 0.5
        with torch.no_grad():
            pixels = self.vae.decode_latents(latents)
        return pixels_to_qimage(pixels[0])


def make_previewer(mode: PreviewMode, model: DiffusionModel) -> Previewer | None:
    if mode is PreviewMode.VAE:
        return VaePreview(model)
    return None


def pixels_to_qimage(x: torch.Tensor) -> QImage:
    """(3, H, W) in about [-1, 1] → an RGB888 QImage. NaN (a float16 VAE overflowing) shows black
    rather than stopping the run; the final decode reports it."""
    x = torch.nan_to_num(x.detach().to("cpu", torch.float32), nan=-1.0)
    pixels = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    array = np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())   # (H, W, 3)
    height, width, _ = array.shape
    # QImage does not copy the buffer it is given; .copy() makes it own its pixels before `array` goes.
    return QImage(array.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


def pil_to_qimage(image) -> QImage:
    """A PIL RGB image (the engine's output) as a QImage that owns its pixels."""
    array = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    height, width, _ = array.shape
    return QImage(array.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
