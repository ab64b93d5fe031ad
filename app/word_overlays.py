"""A word's heat map over a picture as the window shows it: QImage in, QImage out, drawn by the engine's
`heat_overlay` (core/attention_maps.py), so the window shows what `latentdesk generate --attention-maps` writes.

The word strip (app/widgets/word_maps.py) imports this module when it first draws a map: word maps exist only
after a run, so numpy and torch are loaded by then, and the window still opens without them (tests/test_startup.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from PySide6.QtGui import QImage

from app.preview import pil_to_qimage
from core.attention_maps import WordMap, heat_overlay


def qimage_to_pil(image: QImage) -> Image.Image:
    """An RGB PIL copy of `image` (any format; alpha dropped, as the saved PNG has none)."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height, stride = rgb.width(), rgb.height(), rgb.bytesPerLine()
    # Qt pads each line to 4 bytes: read whole lines, then cut each to its pixels.
    lines = np.frombuffer(rgb.constBits(), dtype=np.uint8, count=stride * height).reshape(height, stride)
    return Image.fromarray(np.ascontiguousarray(lines[:, :3 * width]).reshape(height, width, 3), mode="RGB")


def word_overlay(picture: Image.Image, word_map: WordMap, opacity: float) -> QImage:
    """`word_map` laid over `picture` at `opacity` (0..1), as a QImage that owns its pixels."""
    return pil_to_qimage(heat_overlay(picture, word_map, opacity))
