"""The large preview: an image scaled smoothly to fit, centred, with a caption underneath; over it, for a while,
another picture of the same size (a word's heat map, app/widgets/word_maps.py); and a dialog that shows one image
large ("View large" in the history)."""

from __future__ import annotations

from PySide6.QtCore import QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QDialog, QSizePolicy, QVBoxLayout, QWidget

from app import theme


class ImageView(QWidget):
    def __init__(self, placeholder: str = "", parent=None):
        super().__init__(parent)
        self._pixmap: QPixmap | None = None
        self._cover: QPixmap | None = None    # drawn instead of the picture; the picture stays what image() gives
        self._placeholder = placeholder
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(200, 200)

    def set_image(self, image: QImage | None) -> None:
        """Show `image`; an overlay goes with the picture it was made from."""
        self._pixmap = QPixmap.fromImage(image) if image is not None and not image.isNull() else None
        self._cover = None
        self.update()

    def set_overlay(self, image: QImage | None) -> None:
        """Show `image` (the picture's size) in the picture's place until set_overlay(None) or another picture."""
        usable = image is not None and self._pixmap is not None and image.size() == self._pixmap.size()
        self._cover = QPixmap.fromImage(image) if usable else None
        self.update()

    def shown_image(self) -> QImage | None:
        """What is drawn: the overlay while there is one, else the picture."""
        return self._cover.toImage() if self._cover is not None else self.image()

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.update()

    def has_image(self) -> bool:
        return self._pixmap is not None

    def image(self) -> QImage | None:
        return self._pixmap.toImage() if self._pixmap is not None else None

    def sizeHint(self) -> QSize:
        return QSize(640, 640)

    def margins(self) -> tuple[int, int, int, int]:
        """Pixels shown around the picture (left, top, right, bottom): the mask painter's grown canvas."""
        return 0, 0, 0, 0

    def frame(self) -> tuple[QRectF, QRectF]:
        """Where the canvas (the picture and its margins) and the picture itself are drawn, in widget
        coordinates: the canvas scaled to fit, centred."""
        area = self.rect().adjusted(16, 16, -16, -16)
        left, top, right, bottom = self.margins()
        width, height = self._pixmap.width() + left + right, self._pixmap.height() + top + bottom
        size = QSize(width, height).scaled(area.size(), Qt.AspectRatioMode.KeepAspectRatio)
        canvas = QRect(0, 0, size.width(), size.height())
        canvas.moveCenter(area.center())
        scale = canvas.width() / width
        picture = QRectF(canvas.x() + left * scale, canvas.y() + top * scale, self._pixmap.width() * scale,
                         self._pixmap.height() * scale)
        return QRectF(canvas), picture

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(theme.BACKGROUND))
        if self._pixmap is None:
            p.setPen(QColor(theme.MUTED))
            p.drawText(self.rect().adjusted(16, 16, -16, -16), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       self._placeholder)
            return
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        canvas, picture = self.frame()
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(0, 0, 0, 90))   # a soft shadow lifts the image off the background
        p.drawRoundedRect(canvas.adjusted(-2, 2, 4, 6), 6, 6)
        self.paint_under(p, canvas, picture)
        shown = self._cover if self._cover is not None else self._pixmap
        p.drawPixmap(picture, shown, QRectF(shown.rect()))
        self.paint_over(p, canvas, picture)

    def paint_under(self, p: QPainter, canvas: QRectF, picture: QRectF) -> None:
        """Drawn before the picture (the mask painter's grown canvas)."""

    def paint_over(self, p: QPainter, canvas: QRectF, picture: QRectF) -> None:
        """Drawn over the picture (the mask painter's mask and brush)."""


class ImageDialog(QDialog):
    def __init__(self, image: QImage, title: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.view = ImageView()
        self.view.set_image(image)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)
        self.resize(min(max(image.width(), 512), 1400), min(max(image.height(), 512), 1000))
