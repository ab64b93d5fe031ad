"""img2img's starting picture and inpainting's mask as files: checking a dropped file the way the engine
will read it, the size to generate at, writing a pasted picture or a painted mask to a file. All
blocking; the session runs them in worker threads, but for `write_mask` (a small greyscale PNG, written
when a run starts). (The well that shows the picture is `app/widgets/init_image.py`, the mask painter
`app/widgets/mask_painter.py`.)"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

from PySide6.QtGui import QImage

from core.metadata.png_files import mask_beside, read_parameters
from core.request import GenerationRequest

# The init image is decoded at most this large for the well: big enough that the well's smaller
# thumbnail (app/widgets/init_image.py WELL_THUMB_SIZE) is scaled down, never up.
INIT_IMAGE_DECODE_SIZE = 256
KEEP_PASTED = 50
KEEP_MASKS = 20         # a run in flight reads its own mask file: the newest few are kept, older ones go
OUTPAINT_MULTIPLE = 8   # core/inpaint.py extend_canvas grows the canvas to a multiple of this (the VAE's factor)


class InitPicture(NamedTuple):
    thumb: QImage                 # for the well
    size: tuple[int, int]         # the picture's own size, as the engine reads it (EXIF rotation applied)
    parameters: str | None        # its generation settings, if it carries them
    picture: QImage               # the whole picture, as the engine reads it: what the mask is painted on
    mask: QImage | None           # the mask saved beside it ("00042-mask.png"), as 8-bit grey
    transparent: bool             # it has transparent parts, which can be the mask (Krita's and Photoshop's way)


@dataclass(frozen=True)
class InpaintChoice:
    """The inpainting settings the window holds, besides the painted mask (core/request.py's fields)."""

    enabled: bool = False
    mask_blur: int = 4
    masked_content: str = "original"
    inpaint_area: str = "whole"
    padding: int = 32
    outpaint: tuple[int, int, int, int] = (0, 0, 0, 0)    # left, top, right, bottom px; all 0 = none


def read_init_image(path: Path) -> InitPicture:
    """The picture, its thumbnail, size, settings and mask; LatentDeskError if the engine could not read it either."""
    from app.preview import (
        pil_to_qimage,  # the engine's modules: imported off the GUI thread, when first needed
    )
    from core.images import load_image

    image = load_image(path)
    picture = pil_to_qimage(image)
    thumb = image.copy()
    thumb.thumbnail((INIT_IMAGE_DECODE_SIZE, INIT_IMAGE_DECODE_SIZE))
    mask_file = mask_beside(path)
    return InitPicture(pil_to_qimage(thumb), image.size, read_parameters(path), picture,
                       read_mask(mask_file) if mask_file is not None else None, has_transparent_parts(path))


def read_mask(path: Path) -> QImage:
    """A mask file as the engine reads it (core/images.py load_mask: white, or transparent, = repaint),
    as an 8-bit grey QImage; LatentDeskError if it cannot be read."""
    from core.images import load_mask

    mask = load_mask(path)
    return QImage(mask.tobytes(), mask.width, mask.height, mask.width, QImage.Format.Format_Grayscale8).copy()


def has_transparent_parts(path: Path) -> bool:
    """Whether the picture has pixels that are not fully opaque (only its alpha is decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if not image.has_transparency_data:
                return False
            return image.convert("RGBA").getchannel("A").getextrema()[0] < 255
    except Exception:      # noqa: BLE001 - load_image read it already; a mask offer is only a nicety
        return False


def size_for(image_size: tuple[int, int], native: int) -> tuple[int, int]:
    """The image's aspect, no side above the family's native size, multiples of 8."""
    from core.images import default_size_for  # loaded already, by read_init_image

    return default_size_for(SimpleNamespace(size=image_size), max_side=native)


def outpainted_size(size: tuple[int, int], sides: tuple[int, int, int, int]) -> tuple[int, int]:
    """The canvas outpainting makes of a picture of `size`: each side grown, the whole rounded up to a
    multiple of 8, as core/inpaint.py extend_canvas grows it (the request's size must be this)."""
    left, top, right, bottom = sides
    up = OUTPAINT_MULTIPLE
    return -(-(size[0] + left + right) // up) * up, -(-(size[1] + top + bottom) // up) * up


def write_pasted(image: QImage, folder: Path, serial: int) -> Path | None:
    """Save a pasted picture as a PNG in `folder` (keeping the newest KEEP_PASTED); None on failure."""
    folder.mkdir(parents=True, exist_ok=True)
    _keep_newest(folder, "paste-*.png", KEEP_PASTED)
    path = folder / f"paste-{time.strftime('%Y%m%d-%H%M%S')}-{serial}.png"
    return path if image.save(str(path), "PNG") else None


def write_mask(mask: QImage, folder: Path, serial: int) -> Path | None:
    """The painted mask (8-bit grey, white = repaint) as a PNG in `folder` that a run's request names,
    written whole or not at all (a temporary file, then one rename); None on failure. Each run gets its own
    file: the painter may change the mask while the run reads it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _keep_newest(folder, "mask-*.png", KEEP_MASKS)
        path = folder / f"mask-{time.strftime('%Y%m%d-%H%M%S')}-{serial}.png"
        tmp = folder / f".mask-{secrets.token_hex(6)}.png.tmp"
        if not mask.save(str(tmp), "PNG"):
            tmp.unlink(missing_ok=True)
            return None
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path
    except OSError:
        return None


def _keep_newest(folder: Path, pattern: str, keep: int) -> None:
    """Room for one more: the oldest files matching `pattern` go so that `keep` - 1 stay."""
    try:
        old = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
        for stale in old[:max(0, len(old) - keep + 1)]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass


def inpainting_request(request: GenerationRequest, choice: InpaintChoice,
                       picture_size: tuple[int, int] | None) -> GenerationRequest:
    """`request` with the inpainting settings in, when inpainting is on and there is a picture to repaint
    (the mask file is the session's to add, when a run starts). Outpainting generates at the grown
    canvas' size (the request's width and height must be it, core/generate.py)."""
    if not choice.enabled or request.init_image is None:
        return request
    fields = {"mask_blur": choice.mask_blur, "masked_content": choice.masked_content,
              "inpaint_area": choice.inpaint_area, "inpaint_padding": choice.padding}
    if any(choice.outpaint) and picture_size is not None:
        width, height = outpainted_size(picture_size, choice.outpaint)
        fields.update(outpaint=tuple(choice.outpaint), width=width, height=height)
    return replace(request, **fields)


def mask_is_empty(mask: QImage) -> bool:
    """Nothing painted: every pixel 0 (an 8-bit image, as the painter gives it; a row's padding not read)."""
    bits, stride, width = bytes(mask.constBits()), mask.bytesPerLine(), mask.width()
    return all(bits.count(0, y * stride, y * stride + width) == width for y in range(mask.height()))
