"""img2img's starting picture as files: checking a dropped file the way the engine will read it,
the size to generate at, and writing a pasted picture to a file. All blocking; the session runs
them in worker threads. (The well that shows the picture is `app/widgets/init_image.py`.)"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from PySide6.QtGui import QImage

from core.metadata.png_files import read_parameters

# The init image is decoded at most this large for the well: big enough that the well's smaller
# thumbnail (app/widgets/init_image.py WELL_THUMB_SIZE) is scaled down, never up.
INIT_IMAGE_DECODE_SIZE = 256
KEEP_PASTED = 50


def read_init_image(path: Path) -> tuple[QImage, tuple[int, int], str | None]:
    """A thumbnail, the image's size and its generation settings (if any); LatentDeskError if
    the engine could not read it either."""
    from app.preview import (
        pil_to_qimage,  # the engine's modules: imported off the GUI thread, when first needed
    )
    from core.images import load_image

    image = load_image(path)
    size = image.size
    image.thumbnail((INIT_IMAGE_DECODE_SIZE, INIT_IMAGE_DECODE_SIZE))
    return pil_to_qimage(image), size, read_parameters(path)


def size_for(image_size: tuple[int, int], native: int) -> tuple[int, int]:
    """The image's aspect, no side above the family's native size, multiples of 8."""
    from core.images import default_size_for  # loaded already, by read_init_image

    return default_size_for(SimpleNamespace(size=image_size), max_side=native)


def write_pasted(image: QImage, folder: Path, serial: int) -> Path | None:
    """Save a pasted picture as a PNG in `folder` (keeping the newest KEEP_PASTED); None on failure."""
    folder.mkdir(parents=True, exist_ok=True)
    old = sorted(folder.glob("paste-*.png"), key=lambda p: p.stat().st_mtime)
    for stale in old[:max(0, len(old) - KEEP_PASTED + 1)]:
        stale.unlink(missing_ok=True)
    path = folder / f"paste-{time.strftime('%Y%m%d-%H%M%S')}-{serial}.png"
    return path if image.save(str(path), "PNG") else None
