"""The app icon, drawn with QPainter so it is sharp at every size and needs no file: a rounded
square with a violet→teal gradient, and noise dots resolving into a white spark — diffusion in
one picture."""

from __future__ import annotations

import math
import random

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QLinearGradient, QPainter, QPainterPath, QPixmap

SIZES = (16, 24, 32, 48, 64, 128, 256)


def draw_icon(size: int) -> QPixmap:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    p = QPainter(pixmap)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = float(size)
    gradient = QLinearGradient(0, 0, s, s)
    gradient.setColorAt(0.0, QColor("#7c6cf2"))
    gradient.setColorAt(1.0, QColor("#2bb3a8"))
    p.setBrush(gradient)
    p.setPen(Qt.PenStyle.NoPen)
    p.drawRoundedRect(QRectF(0, 0, s, s), s * 0.22, s * 0.22)

    if size >= 32:   # the noise: scattered dots, denser towards the left, fading into the spark
        rng = random.Random(7)
        for _ in range(40):
            x, y = rng.uniform(0.1, 0.55) * s, rng.uniform(0.12, 0.88) * s
            p.setBrush(QColor(255, 255, 255, rng.randint(40, 120)))
            r = s * rng.uniform(0.012, 0.03)
            p.drawEllipse(QPointF(x, y), r, r)

    # The spark: a four-pointed star with concave sides.
    cx, cy, outer, inner = s * 0.62, s * 0.5, s * 0.3, s * 0.075
    star = QPainterPath()
    for k in range(8):
        angle = math.pi / 4 * k - math.pi / 2
        radius = outer if k % 2 == 0 else inner
        point = QPointF(cx + radius * math.cos(angle), cy + radius * math.sin(angle))
        star.moveTo(point) if k == 0 else star.lineTo(point)
    star.closeSubpath()
    p.setBrush(QColor("white"))
    p.drawPath(star)
    p.end()
    return pixmap


def app_icon() -> QIcon:
    icon = QIcon()
    for size in SIZES:
        icon.addPixmap(draw_icon(size))
    return icon
