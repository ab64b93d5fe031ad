"""The history strip: every saved image as a thumbnail, newest first, read back from the output
folder on start so it survives restarts.

    list_outputs(folder) -> [Path]             the newest PNGs first, capped
    read_thumbnails(paths) -> [(Path, QImage)]  blocking; the window runs it off the GUI thread
    HistoryStrip                               the widget, with the per-image menu

Items can be dragged out (onto the init-image well, or another program) as file URLs.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from PySide6.QtCore import QMimeData, QSize, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices, QIcon, QImage, QImageReader, QKeyEvent, QPainter, QPixmap
from PySide6.QtWidgets import QApplication, QListView, QListWidget, QListWidgetItem, QMenu, QMessageBox

from app import theme
from core.errors import LatentDeskError
from core.metadata import read_parameters

THUMB = 88
MAX_ITEMS = 300
PATH_ROLE = Qt.ItemDataRole.UserRole


def list_outputs(folder: Path, cap: int = MAX_ITEMS) -> list[Path]:
    """PNGs in `folder`, newest first (by modification time, then name); save_png's hidden
    temporary files are skipped."""
    if not folder.is_dir():
        return []
    entries = []
    for path in folder.iterdir():
        if path.suffix.lower() == ".png" and not path.name.startswith("."):
            try:
                entries.append((path.stat().st_mtime_ns, path.name, path))
            except OSError:
                continue
    entries.sort(reverse=True)
    return [path for *_, path in entries[:cap]]


def read_thumbnail(path: Path, size: int = THUMB) -> QImage:
    """A small QImage of `path`, decoded at reduced size where the format allows; null if unreadable."""
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    original = reader.size()
    if original.isValid() and max(original.width(), original.height()) > size:
        reader.setScaledSize(original.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio))
    return reader.read()


class Thumb(NamedTuple):
    path: Path
    image: QImage
    caption: str        # the file name and the first line of its prompt


def read_thumbnails(paths: list[Path]) -> list[Thumb]:
    """Blocking (decodes and reads metadata); the window awaits it in a worker thread."""
    return [Thumb(path, image, caption(path)) for path in paths if not (image := read_thumbnail(path)).isNull()]


def caption(path: Path) -> str:
    try:
        text = read_parameters(path) or ""
    except LatentDeskError:
        text = ""
    first = text.split("\n", 1)[0][:120]
    return f"{path.name}\n{first}" if first else path.name


def move_to_trash(path: Path) -> bool:
    from PySide6.QtCore import QFile
    result = QFile.moveToTrash(str(path))
    return bool(result[0] if isinstance(result, tuple) else result)


class HistoryStrip(QListWidget):
    viewRequested = Signal(Path)
    useAsInitRequested = Signal(Path)
    reuseRequested = Signal(Path)
    message = Signal(str, str)       # text, kind ("info" | "warning" | "error")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("History")
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setGridSize(QSize(THUMB + 10, THUMB + 10))
        self.setFixedHeight(THUMB + 22)
        self.setHorizontalScrollMode(QListView.ScrollMode.ScrollPerPixel)
        self.setDragEnabled(True)
        self.setSelectionMode(QListView.SelectionMode.SingleSelection)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.DefaultContextMenu)
        self.setAccessibleName("History")
        self.itemActivated.connect(lambda item: self.viewRequested.emit(item.data(PATH_ROLE)))
        # Deleting asks first only where the trash is not available; tests replace this.
        self.confirm_delete = self._ask_delete

    def add_image(self, thumb: Thumb, newest: bool = True) -> None:
        item = QListWidgetItem(QIcon(QPixmap.fromImage(thumb.image)), "")
        item.setData(PATH_ROLE, thumb.path)
        item.setToolTip(thumb.caption)
        if newest:
            self.insertItem(0, item)
        else:
            self.addItem(item)
        while self.count() > MAX_ITEMS:
            self.takeItem(self.count() - 1)

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self.count() == 0:
            painter = QPainter(self.viewport())
            painter.setPen(QColor(theme.MUTED))
            painter.drawText(self.viewport().rect(), Qt.AlignmentFlag.AlignCenter,
                             "Finished images appear here and are saved to the output folder.  "
                             "Double-click to view, right-click for more, drag one onto the well to vary it.")

    def paths(self) -> list[Path]:
        return [self.item(i).data(PATH_ROLE) for i in range(self.count())]

    def remove_path(self, path: Path) -> None:
        for i in range(self.count()):
            if self.item(i).data(PATH_ROLE) == path:
                self.takeItem(i)
                return

    def mimeData(self, items) -> QMimeData:
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(item.data(PATH_ROLE))) for item in items])
        return mime

    # -- the per-image menu ------------------------------------------------------------------

    def menu_for(self, path: Path) -> QMenu:
        menu = QMenu(self)
        menu.addAction("View large", lambda: self.viewRequested.emit(path))
        menu.addAction("Use as init image", lambda: self.useAsInitRequested.emit(path))
        menu.addAction("Reuse parameters", lambda: self.reuseRequested.emit(path))
        menu.addSeparator()
        menu.addAction("Copy image", lambda: self.copy_image(path))
        menu.addAction("Copy parameters", lambda: self.copy_parameters(path))
        menu.addAction("Show in folder", lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(path.parent))))
        menu.addSeparator()
        menu.addAction("Delete", lambda: self.delete(path))
        return menu

    def contextMenuEvent(self, event) -> None:
        item = self.itemAt(event.pos()) if event.reason() != event.Reason.Keyboard else self.currentItem()
        if item is None:
            return
        self.menu_for(item.data(PATH_ROLE)).exec(event.globalPos())

    def keyPressEvent(self, event: QKeyEvent) -> None:
        item = self.currentItem()
        if item is not None and event.key() == Qt.Key.Key_Delete:
            self.delete(item.data(PATH_ROLE))
            return
        super().keyPressEvent(event)

    def copy_image(self, path: Path) -> None:
        image = QImage(str(path))
        if image.isNull():
            self.message.emit(f"{path.name} cannot be read any more.", "error")
            return
        QApplication.clipboard().setImage(image)

    def copy_parameters(self, path: Path) -> None:
        try:
            text = read_parameters(path)
        except LatentDeskError as e:
            self.message.emit(str(e), "error")
            return
        if text is None:
            self.message.emit(f"{path.name} carries no generation settings.", "warning")
            return
        QApplication.clipboard().setText(text)

    def delete(self, path: Path) -> bool:
        """To the trash where there is one; otherwise delete for good after asking."""
        if not path.exists():
            self.remove_path(path)
            return True
        if not move_to_trash(path):
            if not self.confirm_delete(path):
                return False
            try:
                path.unlink()
            except OSError as e:
                self.message.emit(f"Could not delete {path.name}: {e.strerror or e}", "error")
                return False
        self.remove_path(path)
        return True

    def _ask_delete(self, path: Path) -> bool:
        answer = QMessageBox.question(self, "Delete image",
                                      f"There is no trash here. Delete {path.name} for good?")
        return answer == QMessageBox.StandardButton.Yes
