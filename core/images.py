"""Images in and out of the engine: files users drop in, sizes, and tensors.

    load_image(path)                 ->  upright RGB 8-bit PIL image, or LatentDeskError
    to_rgb(image)                    ->  any Pillow mode flattened to RGB 8-bit
    fit_image(image, width, height)  ->  scale to cover, centre-crop (img2img "crop and resize")
    default_size_for(image)          ->  (w, h) for img2img when the user gives none
    image_to_tensor(image)           ->  (1, 3, H, W) float32 in [-1, 1]
    tensor_to_images(x)              ->  list of RGB images from (B, 3, H, W) in about [-1, 1]

Which sizes the VAE can take is one rule for the whole engine: check_size, in core/limits.py.

Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` is left False on purpose: a truncated
file is refused, never padded with grey.
"""

from __future__ import annotations

import math
import os
import re
import struct

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import LatentDeskError
from core.limits import MAX_SIDE, MIN_SIDE, check_size
from core.metadata.png_text import without_extras

# Checked from the header before any pixel is decoded: an 8192x8192 RGB image is
# already 200 MB decoded, and a 20000x20000 1-bit PNG bomb is only 48 kB on disk.
MAX_PIXELS = MAX_SIDE * MAX_SIDE
# Only the formats people use for pictures. Pillow knows ~40 more; obscure
# decoders (EPS even runs Ghostscript) are attack surface for hostile files.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"
# What Pillow's decoders raise on malformed data; its own `Image.open` treats the
# first four as "not this format". DecompressionBombError is not an OSError.
DECODE_ERRORS = (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError, EOFError,
                 KeyError, ZeroDivisionError, MemoryError, Image.DecompressionBombError)
WHITE = (255, 255, 255)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as a user sees it in a viewer: upright, first frame, RGB 8-bit.

    EXIF orientation is applied (phone photos), an animation gives its first frame,
    and transparency is composited onto white, since that is what viewers show and
    what the user expects to be edited. Any problem raises LatentDeskError naming
    the file and what is wrong.
    """
    name = str(path)
    if not os.path.exists(path):
        raise LatentDeskError(f"{name}: no such file")
    if not os.path.isfile(path):  # a folder, or a device / pipe that could block forever
        raise LatentDeskError(f"{name}: not a file")
    if os.path.getsize(path) == 0:
        raise LatentDeskError(f"{name}: the file is empty")
    try:
        upright = _decode(path, name)
    except UnidentifiedImageError:
        raise LatentDeskError(f"{name}: not an image Latent Desk can read "
                              f"(it reads {FORMAT_NAMES}), or the file is damaged") from None
    except DECODE_ERRORS as exc:
        upright = _decode_without_extras(path, name, exc)
    try:
        return to_rgb(upright)
    except LatentDeskError as exc:
        raise LatentDeskError(f"{name}: {exc}") from None


def load_mask(path: str | os.PathLike) -> Image.Image:
    """An inpainting mask as 8-bit grey, white = repaint: its luminance, or, for an image with
    transparency, its transparent parts (what an editor's eraser leaves: Krita's and Photoshop's way of
    marking what to redo). 16-bit and float grey are scaled as `to_rgb` scales them. Errors as load_image's."""
    name = str(path)
    if not os.path.isfile(path):
        raise LatentDeskError(f"{name}: no such file" if not os.path.exists(path) else f"{name}: not a file")
    try:
        image = _decode(path, name)
    except UnidentifiedImageError:
        raise LatentDeskError(f"{name}: not an image Latent Desk can read (it reads {FORMAT_NAMES})") from None
    except DECODE_ERRORS as exc:
        image = _decode_without_extras(path, name, exc)
    if image.mode.startswith("I") or image.mode == "F":
        return _grey_to_8bit(image)
    try:
        if image.has_transparency_data:
            alpha = image.convert("RGBA").getchannel("A")
            if alpha.getextrema()[0] < 255:
                return ImageOps.invert(alpha)
        return image.convert("L")
    except ValueError as exc:
        raise LatentDeskError(f"{name}: masks in colour mode {image.mode} are not supported ({exc})") from None


def _decode(source, name: str) -> Image.Image:
    """The first frame, decoded and upright; LatentDeskError for a size we refuse, Pillow's own errors else."""
    with Image.open(source, formats=FORMATS) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise LatentDeskError(f"{name}: the image is {width}x{height} pixels "
                                  f"({width * height / 1e6:.1f} megapixels); {_limit()}")
        if width == 0 or height == 0:
            raise LatentDeskError(f"{name}: the image is {width}x{height} pixels, it has nothing in it")
        image.seek(0)
        image.load()
        return ImageOps.exif_transpose(image)


def _decode_without_extras(path, name: str, exc: BaseException) -> Image.Image:
    """Pillow refuses a whole PNG when a compressed text chunk or ICC profile inflates past 1 MiB (its
    guard against zlib bombs), though nothing is wrong with the picture; decode it again with those
    chunks left out (core/metadata/png_text.py). Any other failure is `exc`, retold."""
    if not isinstance(exc, ValueError):
        raise _unreadable(name, exc) from None
    try:
        with open(path, "rb") as file:
            view = without_extras(file)
            if view is not None:
                return _decode(view, name)
    except DECODE_ERRORS:
        pass
    raise _unreadable(name, exc) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any Pillow image to RGB with 8 bits a channel.

    - alpha (LA, RGBA, PA, palette or colour-key transparency) is composited onto white;
    - 16-bit grey (I;16*) and 32-bit integer grey (I, which Pillow gives for 16-bit
      PGM and TIFF files) are taken as 0..65535 and scaled by 255/65535, rounded
      (a tRNS colour key on 16-bit grey, which nobody uses, is ignored);
    - 32-bit float grey (F) is taken as 0..1, the convention of float TIFFs, and clipped;
    - CMYK, YCbCr, 1-bit, palette and the rest convert as Pillow converts them.
    """
    if image.mode.startswith("I") or image.mode == "F":
        image = _grey_to_8bit(image)
    try:
        if image.has_transparency_data:
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:  # e.g. premultiplied "La": nothing in a file decodes to it
        raise LatentDeskError(f"images in colour mode {image.mode} are not supported ({exc})") from None


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    # Pillow's own convert("L") clips these at 255: a 16-bit photo would come out white.
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scaled = np.clip(np.nan_to_num(values), 0.0, 1.0) * 255.0
    else:
        scaled = np.clip(values, 0, 65535) * (255.0 / 65535.0)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


def _unreadable(name: str, exc: BaseException) -> LatentDeskError:
    if isinstance(exc, Image.DecompressionBombError):
        # Pillow refuses more than twice its MAX_IMAGE_PIXELS before we see the size;
        # its message carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
        return LatentDeskError(f"{name}: the image is {size}; {_limit()}")
    if "truncated" in str(exc).lower():
        return LatentDeskError(f"{name}: the image data is incomplete; the file is truncated "
                               "(an interrupted download or copy?)")
    # An OSError's str() repeats the path; its strerror ("Permission denied") does not.
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return LatentDeskError(f"{name}: cannot be read, the file is damaged or unreadable ({reason})")


def _limit() -> str:
    return (f"Latent Desk opens images up to {MAX_PIXELS / 1e6:.1f} megapixels "
            f"({MAX_SIDE}x{MAX_SIDE}); scale it down in an image editor first")


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height keeping the aspect ratio (Lanczos), then centre-crop.

    This is "crop and resize", AUTOMATIC1111's default for img2img: nothing is
    stretched and nothing is padded; what overhangs on the long side is cut off
    equally at both ends.
    """
    check_size(width, height)
    if image.size == (width, height):
        return image.copy()
    w, h = image.size
    scale = max(width / w, height / h)
    # Resampling just the centred source box is the same as resize-then-crop, without
    # building the oversized intermediate (an 8192x8 strip would cover 512x512 as 524288x512),
    # and keeps the centring exact to a fraction of a pixel.
    box_w, box_h = width / scale, height / scale
    left, top = (w - box_w) / 2, (h - box_h) / 2
    return image.resize((width, height), Image.Resampling.LANCZOS, box=(left, top, left + box_w, top + box_h))


def default_size_for(image: Image.Image, max_side: int | None = None, multiple: int = 8) -> tuple[int, int]:
    """The img2img size when the user gives none: the image's own, made usable.

    A side longer than `max_side` (default: the largest `check_size` accepts)
    first scales the image down keeping its aspect; then each side is rounded DOWN
    to a multiple of `multiple`, and is at least 64.
    """
    limit = MAX_SIDE if max_side is None else max_side
    w, h = image.size
    if max(w, h) > limit:
        w, h = (limit, h * limit // w) if w >= h else (w * limit // h, limit)
    smallest = -(-MIN_SIDE // multiple) * multiple
    return max(smallest, w - w % multiple), max(smallest, h - h % multiple)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a (1, 3, H, W) float32 tensor in [-1, 1], as the VAE encoder expects."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image (see load_image / to_rgb), got mode {image.mode}")
    pixels = torch.from_numpy(np.array(image, dtype=np.float32))  # (H, W, 3) in 0..255
    return (pixels / 255 * 2 - 1).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in about [-1, 1] to RGB images, clamped and rounded to nearest as diffusers does.

    `(x / 2 + 0.5).clamp(0, 1) * 255`, then `.round()`: the exact inverse of
    `image_to_tensor` for 8-bit images.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float32)
    if torch.isnan(x).any():
        # The classic cause is a VAE overflowing in float16 (SDXL's original VAE does).
        raise LatentDeskError("the decoded image contains NaN values; try running the VAE in float32 "
                              "or use a VAE fixed for float16")
    pixels = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(np.ascontiguousarray(p.permute(1, 2, 0).numpy())) for p in pixels]


def psnr(image: Image.Image, reference: Image.Image) -> float:
    """10·log10(255² / mean squared error) over every pixel and channel of two 8-bit images; inf when identical."""
    a = np.asarray(image, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare images of shapes {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)
