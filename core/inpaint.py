"""Inpainting and outpainting: what happens to the picture and the mask around the sampler.

    plan = plan_inpaint(image, mask, width, height, settings)   the picture to repaint, its masks, where it goes
    blend = LatentBlend(init, noise, latent_mask)               keeps the latent outside the mask on the init image
    plan.finish(generated)                                      the result, pasted back: exact outside the mask

White in the mask is repainted. Two kinds of model (the choice is generate()'s):
- An inpainting model (UNet with 9 input channels) sees the mask and the masked picture as extra input
  channels: [noisy latent (4), mask at latent size (1), latent of the picture with the masked part grey
  (4)], as diffusers' StableDiffusionInpaintPipeline builds them (its mask binarised at 0.5, resized to the
  latent by nearest neighbour, and the masked picture = picture where mask < 0.5, else 0 = grey).
- Any other model repaints by img2img with the latent outside the mask put back after every step: the
  init latent noised to the step's next noise level with the run's own starting noise (the same rule as
  diffusers' inpaint pipeline for 4-channel UNets), and the init latent itself after the last.
Either way the decoded result is composited over the init picture in pixels with the feathered mask, so
outside the mask (beyond the feather) every pixel is the init picture's own.

A1111's options, by its names (modules/processing.py, img2img "inpainting_fill" and "inpaint_full_res"):
- masked content: "original" (the picture as it is), "fill" (the masked part filled with the colours
  around it, so the model does not redraw what was there), "latent noise" (random latent there), "latent
  nothing" (zero latent there); the last two want strength near 1.
- mask blur: the mask feathered by a Gaussian of this many pixels before use.
- inpaint area: "whole" picture, or "masked" only: the mask's bounding box plus `padding` pixels, widened
  to the output's aspect ratio, is cut out, generated at the full output size, scaled back and pasted, so
  a small region gets the model's whole resolution.
- outpainting: the canvas grows by (left, top, right, bottom) pixels, the new area filled from the edge
  pixels (smeared and blurred) and masked; then it is an inpainting like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import Tensor

from core.errors import LatentDeskError
from core.images import fit_image
from core.limits import MAX_SIDE
from core.request import GenerationRequest, check_field, check_outpaint

# A1111's "Inpainting fill" numbers for each masked content (its infotext writes the number).
A1111_FILL = {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}
FILL_PASSES = (64, 16, 4, 1)   # blur radii, coarse to fine, of "fill": the far inside gets the broad average


@dataclass(frozen=True)
class InpaintSettings:
    mask_blur: int = 4                      # px (A1111's default)
    masked_content: str = "original"
    inpaint_area: str = "whole"
    padding: int = 32                       # px around the mask, for inpaint_area "masked" (A1111's default)


@dataclass
class InpaintPlan:
    """One inpainting job at the generation size (width x height), and how to put its result back."""

    picture: Image.Image        # RGB, what the VAE encodes (its masked part filled if asked)
    original: Image.Image       # RGB, the same region before any fill: what the result is composited over
    hard_mask: Tensor           # (1, 1, H, W) 0/1 float: the mask the model sees (diffusers' binarised one)
    soft_mask: Image.Image      # L: the feathered mask the result is composited with
    canvas: Image.Image         # RGB, the whole output picture the region is pasted into
    canvas_mask: Image.Image    # L, feathered, at the canvas size
    mask: Image.Image           # L, the mask as given, fitted to the canvas: what is saved beside the image
    box: tuple[int, int, int, int] | None   # the region cut out of the canvas ("masked" area); None: all of it
    notes: tuple[str, ...] = ()

    def latent_mask(self, latent_size: tuple[int, int], soft: bool) -> Tensor:
        """The mask at latent size (1, 1, h, w): nearest-neighbour of the binarised one (diffusers'), or,
        with a feather, the feathered mask averaged over each latent pixel so the blend is soft too."""
        if not soft:
            return F.interpolate(self.hard_mask, size=latent_size)
        feathered = torch.from_numpy(np.asarray(self.soft_mask, dtype=np.float32) / 255.0)[None, None]
        return F.adaptive_avg_pool2d(feathered, latent_size)

    def finish(self, generated: Image.Image) -> Image.Image:
        """The generated region composited over the original with the feathered mask, pasted into the canvas."""
        region = Image.composite(generated.convert("RGB"), self.original, self.soft_mask)
        if self.box is None:
            return region
        left, top, right, bottom = self.box
        canvas = self.canvas.copy()
        back = region.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
        canvas.paste(back, (left, top), self.canvas_mask.crop(self.box))
        return canvas


def plan_inpaint(image: Image.Image, mask: Image.Image, width: int, height: int,
                 settings: InpaintSettings = InpaintSettings()) -> InpaintPlan:
    """The job for an RGB picture and an L mask (white = repaint), generating at width x height.

    The picture is fitted to width x height as img2img fits it (crop and resize), the mask the same way
    (a mask of another size than the picture is first scaled to it, and the note says so).
    """
    check_settings(settings)
    notes = []
    if mask.size != image.size:
        notes.append(f"The mask ({mask.width}x{mask.height}) was scaled to the picture's size "
                     f"({image.width}x{image.height}).")
        mask = mask.resize(image.size, Image.Resampling.BILINEAR)
    canvas = fit_image(image, width, height)
    mask = fit_image(mask.convert("L"), width, height)
    if mask.getextrema()[1] < 128:
        raise LatentDeskError("The mask is empty: nothing in it is white (white marks what to repaint).")
    canvas_mask = feather(mask, settings.mask_blur)
    box = None
    original, hard, soft = canvas, mask, canvas_mask
    if settings.inpaint_area == "masked":
        box = masked_region(mask, settings.padding, (width, height))
        original = canvas.crop(box).resize((width, height), Image.Resampling.LANCZOS)
        hard = mask.crop(box).resize((width, height), Image.Resampling.BILINEAR)
        soft = feather(hard, settings.mask_blur)
    hard_mask = torch.from_numpy((np.asarray(hard, dtype=np.float32) >= 127.5).astype(np.float32))[None, None]
    picture = fill_masked(original, hard) if settings.masked_content == "fill" else original
    return InpaintPlan(picture, original, hard_mask, soft, canvas, canvas_mask, mask, box, tuple(notes))


def check_settings(settings: InpaintSettings) -> None:
    """The request's rules (core/request.py), for a plan made without a request."""
    request = GenerationRequest(mask_blur=settings.mask_blur, masked_content=settings.masked_content,
                                inpaint_area=settings.inpaint_area, inpaint_padding=settings.padding)
    for field in ("mask_blur", "masked_content", "inpaint_area", "inpaint_padding"):
        check_field(field, getattr(request, field), request)


def feather(mask: Image.Image, blur: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask.copy()


def masked_region(mask: Image.Image, padding: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The mask's bounding box plus `padding`, grown to the aspect ratio of `size` and kept inside the mask."""
    left, top, right, bottom = mask.point(lambda v: 255 if v >= 128 else 0).getbbox()
    w, h = mask.size
    left, top, right, bottom = left - padding, top - padding, right + padding, bottom + padding
    aspect = size[0] / size[1]
    box_w, box_h = right - left, bottom - top
    if box_w / box_h < aspect:       # too tall for the output: widen
        grow = aspect * box_h - box_w
        left, right = left - grow / 2, right + grow / 2
    else:
        grow = box_w / aspect - box_h
        top, bottom = top - grow / 2, bottom + grow / 2
    # Slide the box back inside the picture, shrinking it only where it is larger than the picture.
    left, right = _inside(left, right, w)
    top, bottom = _inside(top, bottom, h)
    return round(left), round(top), round(right), round(bottom)


def _inside(low: float, high: float, limit: int) -> tuple[float, float]:
    if high - low >= limit:
        return 0, limit
    if low < 0:
        return 0, high - low
    if high > limit:
        return limit - (high - low), limit
    return low, high


def fill_masked(picture: Image.Image, mask: Image.Image) -> Image.Image:
    """The masked part replaced by the colours around it (A1111's "fill"): each pass blurs the unmasked
    colours, normalised by how much unmasked area the blur saw, from broad to fine, so far inside the
    mask gets the surroundings' average and near its edge the nearby colours."""
    keep = np.asarray(mask, dtype=np.float32)[..., None] < 128
    pixels = np.asarray(picture, dtype=np.float32)
    filled = pixels.copy()
    for radius in FILL_PASSES:
        weights = _blur(keep.astype(np.float32), radius)
        colours = _blur(pixels * keep, radius) / np.maximum(weights, 1e-6)
        filled = np.where(keep, pixels, np.where(weights > 1e-3, colours, filled))
    return Image.fromarray(np.clip(np.rint(filled), 0, 255).astype(np.uint8))


def _blur(values: np.ndarray, radius: int) -> np.ndarray:
    """A (2r+1)² box average with the edges repeated, by running sums: the same few operations a pixel
    whatever the radius (a 129-wide pooling window over an 8192² picture would take minutes)."""
    size = 2 * radius + 1
    padded = np.pad(values.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    for axis in (0, 1):
        sums = np.cumsum(padded, axis=axis)
        sums = np.concatenate([np.zeros_like(sums.take([0], axis=axis)), sums], axis=axis)
        padded = (sums.take(range(size, sums.shape[axis]), axis=axis)
                  - sums.take(range(0, sums.shape[axis] - size), axis=axis))
    return (padded / (size * size)).astype(np.float32)


def extend_canvas(image: Image.Image, mask: Image.Image | None, sides: tuple[int, int, int, int],
                  multiple: int = 8) -> tuple[Image.Image, Image.Image, tuple[int, int, int, int]]:
    """Outpainting's canvas: `image` grown by (left, top, right, bottom) pixels, the new area filled by
    smearing the edge pixels outwards and blurring them (so the model starts from the right colours), and
    the mask: the new area white, plus the given mask's white inside the old picture. Each side grows a
    little more if needed so the canvas is a multiple of `multiple`; the sides used are returned."""
    left, top, right, bottom = check_outpaint(sides)
    right += -(image.width + left + right) % multiple
    bottom += -(image.height + top + bottom) % multiple
    width, height = image.width + left + right, image.height + top + bottom
    if max(width, height) > MAX_SIDE:      # before the grown canvas is allocated
        raise LatentDeskError(f"Outpainting would make a {width}x{height} canvas; the largest side is {MAX_SIDE} px")
    pixels = np.asarray(image.convert("RGB"))
    smeared = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    grown = Image.fromarray(smeared).filter(ImageFilter.GaussianBlur(max(sides) / 4))
    grown.paste(image.convert("RGB"), (left, top))
    new_mask = Image.new("L", grown.size, 255)
    inner = mask.resize(image.size) if mask is not None else Image.new("L", image.size, 0)
    new_mask.paste(inner, (left, top))
    return grown, new_mask, (left, top, right, bottom)


def masked_picture(plan: InpaintPlan) -> Tensor:
    """(1, 3, H, W) in [-1, 1]: the picture with its masked part grey (exactly 0), as an inpainting model
    is trained to see it (diffusers: image * (mask < 0.5))."""
    keep = (plan.hard_mask < 0.5).float()
    pixels = torch.from_numpy(np.asarray(plan.picture, dtype=np.float32) / 255.0 * 2.0 - 1.0)
    return pixels.permute(2, 0, 1)[None] * keep


class LatentBlend:
    """Wraps the denoiser D(x, σ) so the latent outside the mask follows the init picture.

    diffusers blends after each step with the next step's noise level; samplers here call the denoiser
    at that level next, so the blend is done there, in place on the sampler's own latent (every sampler
    keeps using the tensor it passed). The first call is left alone (the start is already the init
    picture noised, or pure noise at strength 1, as in diffusers), and `final` blends the result.
    """

    def __init__(self, denoiser, init: Tensor, noise: Tensor, latent_mask: Tensor):
        self.denoiser, self.init, self.noise = denoiser, init, noise
        self.keep = 1 - latent_mask        # 1 where the init picture stays
        self.calls = 0
        self.last_sigma: float | None = None

    def __getattr__(self, name):          # end_step, last_scale, ...: the wrapped denoiser's
        return getattr(self.denoiser, name)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        level = float(sigma.reshape(-1)[0])
        if self.calls and level != self.last_sigma:
            x.copy_(self._blended(x, level))
        self.calls += 1
        self.last_sigma = level
        return self.denoiser(x, sigma)

    def final(self, x: Tensor) -> Tensor:
        return self._blended(x, 0.0)

    def _blended(self, x: Tensor, sigma: float) -> Tensor:
        noised = self.init + self.noise * sigma
        keep = self.keep.to(x)
        return (noised.to(x) * keep + x * (1 - keep))
