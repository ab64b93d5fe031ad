"""The init-image well (img2img): drop or paste a picture, see its thumbnail, set the strength and the
inpainting settings (`app/widgets/inpaint_panel.py`), clear it. The well only shows and forwards; the
session checks and loads the file (`app/init_image_files.py`)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QPixmap
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QToolButton,
    QWidget,
)

from app.widgets.inpaint_panel import InpaintPanel

WELL_THUMB_SIZE = 84    # px, the side of the well's thumbnail
MIN_STRENGTH = 0.05     # the slider's lowest: 0 would give back the image untouched


def dropped_paths(event) -> list[Path]:
    mime = event.mimeData()
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []


class InitImageWell(QFrame):
    filesDropped = Signal(list)       # [Path]
    imageDropped = Signal(QImage)     # raw image data (e.g. from a browser)
    browseRequested = Signal()
    pasteRequested = Signal()
    cleared = Signal()                # the user cleared it (the ✕ button)
    pathChanged = Signal()            # set or cleared, by the user or the program: the request changed

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("InitWell")
        self.setAcceptDrops(True)
        self.path: Path | None = None
        self.thumb = QLabel(alignment=Qt.AlignmentFlag.AlignCenter)
        self.thumb.setFixedSize(WELL_THUMB_SIZE, WELL_THUMB_SIZE)
        self.caption = QLabel(objectName="Muted", wordWrap=True)
        self.browse = QPushButton("Browse…", toolTip="Start from an image file (img2img)")
        self.paste = QPushButton("Paste", toolTip="Start from the image on the clipboard (Ctrl+V)")
        self.clear_button = QToolButton(text="✕", toolTip="Clear the init image (back to text-to-image)")
        self.strength = QSlider(Qt.Orientation.Horizontal)
        self.strength.setRange(round(MIN_STRENGTH * 100), 100)
        self.strength.setSingleStep(5)
        self.strength.setPageStep(10)
        self.strength.setAccessibleName("Strength")
        self.strength.setToolTip("How much to change the image: 1 ignores it, 0.1 keeps nearly all of it")
        self.strength_label = QLabel(objectName="GuidanceValue")
        self.strength.valueChanged.connect(lambda v: self.strength_label.setText(f"{v / 100:.2f}"))
        self.strength.setValue(75)
        self.inpaint = InpaintPanel()
        self.browse.clicked.connect(self.browseRequested)
        self.paste.clicked.connect(self.pasteRequested)
        self.clear_button.clicked.connect(self._clear_clicked)

        buttons = QHBoxLayout()
        buttons.addWidget(self.browse)
        buttons.addWidget(self.paste)
        buttons.addStretch(1)
        buttons.addWidget(self.clear_button)
        self.strength_row = QWidget()
        strength = QHBoxLayout(self.strength_row)
        strength.setContentsMargins(0, 0, 0, 0)
        strength.addWidget(QLabel("Strength"))
        strength.addWidget(self.strength, 1)
        strength.addWidget(self.strength_label)
        grid = QGridLayout(self)
        grid.setContentsMargins(8, 6, 8, 6)
        grid.setVerticalSpacing(4)
        grid.addWidget(self.thumb, 0, 0, 2, 1)
        grid.addWidget(self.caption, 0, 1)
        grid.addLayout(buttons, 1, 1)
        grid.addWidget(self.strength_row, 2, 0, 1, 2)
        grid.addWidget(self.inpaint, 3, 0, 1, 2)
        self.clear()

    def set_image(self, path: Path, image: QImage) -> None:
        self.path = path
        thumb = QPixmap.fromImage(image).scaled(WELL_THUMB_SIZE, WELL_THUMB_SIZE, Qt.AspectRatioMode.KeepAspectRatio,
                                                Qt.TransformationMode.SmoothTransformation)
        self.thumb.setPixmap(thumb)
        self.caption.setText(f"{path.name}\n{image.width()}×{image.height()}")
        self.caption.setToolTip(str(path))
        self.clear_button.setEnabled(True)
        self._show_image_parts(True)
        self.pathChanged.emit()

    def clear(self) -> None:
        self.path = None
        self.thumb.clear()
        self.caption.setText("Drop or paste an image here to start from it (img2img)")
        self.caption.setToolTip("")
        self.clear_button.setEnabled(False)
        self._show_image_parts(False)
        self.pathChanged.emit()

    def strength_value(self) -> float:
        return self.strength.value() / 100

    def set_strength(self, value: float) -> None:
        self.strength.setValue(round(min(max(value, MIN_STRENGTH), 1.0) * 100))

    def _show_image_parts(self, on: bool) -> None:
        """Compact while empty: the thumbnail and the strength slider appear with an image."""
        self.thumb.setVisible(on)
        self.strength_row.setVisible(on)
        self.inpaint.setVisible(on)

    def _clear_clicked(self) -> None:
        self.clear()
        self.cleared.emit()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            self._set_dragging(True)
            event.acceptProposedAction()

    def dragLeaveEvent(self, event) -> None:
        self._set_dragging(False)

    def dropEvent(self, event: QDropEvent) -> None:
        self._set_dragging(False)
        paths = dropped_paths(event)
        if paths:
            self.filesDropped.emit(paths)
        elif event.mimeData().hasImage():
            self.imageDropped.emit(QImage(event.mimeData().imageData()))
        event.acceptProposedAction()

    def _set_dragging(self, on: bool) -> None:
        self.setProperty("dragging", on)
        self.style().unpolish(self)
        self.style().polish(self)
