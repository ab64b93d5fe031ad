"""Per-step previews, made in the worker thread: latents in, a QImage that owns its pixels out.

    make_previewer(mode, loaded) -> Previewer | None    the one place a preview mode becomes code
    VaePreview(model)(step, noisy) -> QImage            the predicted clean latent x0 through the VAE
    TinyPreview(decoder)(step, noisy) -> QImage         x0 through the model's tiny preview decoder, full size
    FastPreview(latent_rgb)(step, noisy) -> QImage      the linear latent→RGB map fitted at load
    AutoPreview(full, between)(step, noisy) -> QImage|None   full-size previews (the tiny decoder, else the VAE)
                                                        while all previews stay within a time budget; between
                                                        them the fast map, or nothing (the last frame stays)
    pixels_to_qimage(x) -> QImage                       (3, H, W) in about [-1, 1] → RGB888, copied
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from PySide6.QtGui import QImage

from app.jobs import PreviewMode, ReadyModel
from core.generate import StepInfo
from core.model import DiffusionModel
from core.nets.latent_rgb import LatentToRGB

AUTO_SHARE = 0.08   # Auto spends at most this share of the sampling time on previews (the issue: <= 10 %)


class Previewer(Protocol):
    def __call__(self, step: StepInfo, noisy: bool) -> QImage | None: ...


class VaePreview:
    """Decode the first image of the batch through the model's VAE: exactly what the final
    decode would show if sampling stopped here."""

    def __init__(self, model: DiffusionModel):
        self.vae = model.vae

    def __call__(self, step: StepInfo, noisy: bool) -> QImage:
        with torch.no_grad():
            pixels = self.vae.decode_latents(shown_latents(step, noisy))
        return pixels_to_qimage(pixels[0])


class TinyPreview:
    """Decode the first image of the batch through the network trained to imitate this model's VAE:
    full size like the VAE, at a few % of a sampling step."""

    def __init__(self, decoder: torch.nn.Module):
        self.decoder = decoder

    def __call__(self, step: StepInfo, noisy: bool) -> QImage:
        with torch.no_grad():
            pixels = self.decoder(shown_latents(step, noisy))
        return pixels_to_qimage(pixels[0])


class FastPreview:
    """One latent pixel → one RGB pixel by the linear map fitted to this VAE (the view scales it up)."""

    def __init__(self, latent_rgb: LatentToRGB):
        self.latent_rgb = latent_rgb

    def __call__(self, step: StepInfo, noisy: bool) -> QImage:
        return pixels_to_qimage(self.latent_rgb(shown_latents(step, noisy)[0]))


class AutoPreview:
    """A full-size preview (`full`: a VAE or tiny-decoder decode) whenever the previews so far plus the
    next one stay within `share` of the sampling time so far; the `between` previewer otherwise. Every
    preview's time counts, the between-previewer's too: the bar is what previews together add to a run.
    A model whose decode is cheap next to a step gets a full frame at most steps; a large model at 512 px
    gets one every few steps, and the between-previewer's frames between them."""

    def __init__(self, full: Previewer, between: Previewer, share: float = AUTO_SHARE,
                 clock: Callable[[], float] = time.perf_counter):
        self.full, self.between, self.share, self.clock = full, between, share, clock
        self.started = clock()
        self.spent = 0.0                   # seconds in previews of either kind so far
        self.decode_seconds: float | None = None

    def __call__(self, step: StepInfo, noisy: bool) -> QImage:
        now = self.clock()
        sampling = now - self.started - self.spent
        # Without a measured decode yet, try one once a step's time is known: it measures the cost.
        estimate = self.decode_seconds if self.decode_seconds is not None else 0.0
        decode = step.i > 0 and self.spent + estimate <= self.share * sampling
        image = (self.full if decode else self.between)(step, noisy)
        took = self.clock() - now
        self.spent += took
        if decode:
            self.decode_seconds = took
        return image


def shown_latents(step: StepInfo, noisy: bool) -> torch.Tensor:
    """The first image's latents a preview shows: the clean prediction x0, or the noisy state."""
    if not noisy:
        return step.denoised[:1]
    # x = x0 + σ·ε has standard deviation √(1 + σ²) (Karras et al. 2022, the VE form); the
    # VAE expects unit-scale latents, so show the variance-preserving x / √(1 + σ²) as DDPM does.
    return step.x[:1] / (1 + step.sigma ** 2) ** 0.5


def make_previewer(mode: PreviewMode, loaded: ReadyModel) -> Previewer | None:
    """Auto with a tiny decoder (the model's own or TAESD) shows its frames within the time budget and
    keeps the last frame between them, never the VAE: one VAE decode would cost more than the run's other
    previews together (1.6 sampling steps on the built-in model), and the fast map's blur between sharp
    frames flickers. The built-in model's decoder fits the budget at every step; TAESD on SD1.5 at 512 px
    (0.95 s against a ~7 s step on 2 cores) about every other step. Without a tiny decoder, Auto is VAE
    decodes within the budget and the fast map between them. Tiny falls back to the fast map, and both to
    the VAE every step when the model has nothing cheaper."""
    if mode is PreviewMode.OFF:
        return None
    fast = FastPreview(loaded.latent_rgb) if loaded.latent_rgb is not None else None
    if mode is PreviewMode.FAST:
        return fast
    tiny = TinyPreview(loaded.preview_decoder) if loaded.preview_decoder is not None else None
    vae = VaePreview(loaded.diffusion)
    if mode is PreviewMode.VAE:
        return vae
    if tiny is not None:
        return AutoPreview(tiny, keep_last_frame) if mode is PreviewMode.AUTO else tiny
    if mode is PreviewMode.AUTO and fast is not None:
        return AutoPreview(vae, fast)
    return fast if mode is PreviewMode.TINY and fast is not None else vae


def keep_last_frame(step: StepInfo, noisy: bool) -> None:
    """No new image: the window keeps showing the last one."""
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
