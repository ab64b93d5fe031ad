"""The history strip: every saved image as a thumbnail, newest first, read back from the output
folder on start so it survives restarts; and every image that is *not* saved yet (its save failed,
or Live mode made it), marked "not saved", until the user saves, copies or discards it.

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
from app.jobs import Unsaved
from core.errors import LatentDeskError
from core.metadata import read_parameters

THUMB = 88
MAX_ITEMS = 300
PATH_ROLE = Qt.ItemDataRole.UserRole
UNSAVED_ROLE = Qt.ItemDataRole.UserRole + 1     # an app.jobs.Unsaved, for an image not on disk
LIVE_ROLE = Qt.ItemDataRole.UserRole + 2        # True for the newest Live result (one is kept)


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


def marked_unsaved(image: QImage) -> QPixmap:
    """The thumbnail with a "not saved" band across its foot."""
    pixmap = QPixmap.fromImage(image)
    painter = QPainter(pixmap)
    band = pixmap.rect().adjusted(0, pixmap.height() - max(14, pixmap.height() // 5), 0, 0)
    painter.fillRect(band, QColor(theme.DANGER))
    painter.setPen(QColor("white"))
    painter.drawText(band, Qt.AlignmentFlag.AlignCenter, "not saved")
    painter.end()
    return pixmap


class HistoryStrip(QListWidget):
    viewRequested = Signal(Path)
    viewImageRequested = Signal(QImage, str)    # an unsaved image, and its title
    useAsInitRequested = Signal(Path)
    reuseRequested = Signal(Path)
    saveRequested = Signal(QListWidgetItem)     # an unsaved item the user wants on disk
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
        self.itemActivated.connect(self._view)
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
        saved = [i for i in range(self.count()) if self.item(i).data(UNSAVED_ROLE) is None]
        for row in reversed(saved[MAX_ITEMS:]):     # the oldest saved go; an unsaved image never does
            self.takeItem(row)

    def add_unsaved(self, unsaved: Unsaved, live: bool = False) -> QListWidgetItem:
        """An image not on disk; a Live result replaces the previous Live result."""
        if live:
            for item in self.unsaved_items():
                if item.data(LIVE_ROLE):
                    self.takeItem(self.row(item))
        thumb = unsaved.preview.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                                       Qt.TransformationMode.SmoothTransformation)
        item = QListWidgetItem(QIcon(marked_unsaved(thumb)), "")
        item.setData(UNSAVED_ROLE, unsaved)
        item.setData(LIVE_ROLE, live)
        first = unsaved.infotext.split("\n", 1)[0][:120]
        item.setToolTip(f"{'Live result, ' if live else ''}not saved: right-click to save it\n{first}")
        self.insertItem(0, item)
        return item

    def unsaved_items(self, live: bool | None = None) -> list[QListWidgetItem]:
        """Items not on disk; `live` True/False picks only the Live result or only the others."""
        items = [self.item(i) for i in range(self.count()) if self.item(i).data(UNSAVED_ROLE) is not None]
        return [item for item in items if live is None or bool(item.data(LIVE_ROLE)) == live]

    def mark_saved(self, item: QListWidgetItem, path: Path) -> None:
        unsaved: Unsaved = item.data(UNSAVED_ROLE)
        thumb = unsaved.preview.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                                       Qt.TransformationMode.SmoothTransformation)
        item.setIcon(QIcon(QPixmap.fromImage(thumb)))
        item.setData(UNSAVED_ROLE, None)
        item.setData(LIVE_ROLE, False)
        item.setData(PATH_ROLE, path)
        item.setToolTip(caption(path))

    def _view(self, item: QListWidgetItem) -> None:
        if (unsaved := item.data(UNSAVED_ROLE)) is not None:
            self.viewImageRequested.emit(unsaved.preview, "not saved")
        else:
            self.viewRequested.emit(item.data(PATH_ROLE))

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self.count() == 0:
            painter = QPainter(self.viewport())
            painter.setPen(QColor(theme.MUTED))
            painter.drawText(self.viewport().rect(), Qt.AlignmentFlag.AlignCenter,
                             "Finished images appear here and are saved to the output folder.  "
                             "Double-click to view, right-click for more, drag one onto the well to vary it.")

    def paths(self) -> list[Path]:
        return [path for i in range(self.count()) if (path := self.item(i).data(PATH_ROLE)) is not None]

    def remove_path(self, path: Path) -> None:
        for i in range(self.count()):
            if self.item(i).data(PATH_ROLE) == path:
                self.takeItem(i)
                return

    def mimeData(self, items) -> QMimeData:
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(item.data(PATH_ROLE))) for item in items
                      if item.data(PATH_ROLE) is not None])
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

    def menu_for_unsaved(self, item: QListWidgetItem) -> QMenu:
        unsaved: Unsaved = item.data(UNSAVED_ROLE)
        menu = QMenu(self)
        menu.addAction("Save", lambda: self.saveRequested.emit(item))
        menu.addAction("View large", lambda: self._view(item))
        menu.addSeparator()
        menu.addAction("Copy image", lambda: QApplication.clipboard().setImage(unsaved.preview))
        menu.addAction("Copy parameters", lambda: QApplication.clipboard().setText(unsaved.infotext))
        menu.addSeparator()
        menu.addAction("Discard", lambda: self.takeItem(self.row(item)))
        return menu

    def contextMenuEvent(self, event) -> None:
        item = self.itemAt(event.pos()) if event.reason() != event.Reason.Keyboard else self.currentItem()
        if item is None:
            return
        menu = self.menu_for(item.data(PATH_ROLE)) if item.data(UNSAVED_ROLE) is None else self.menu_for_unsaved(item)
        menu.exec(event.globalPos())

    def keyPressEvent(self, event: QKeyEvent) -> None:
        item = self.currentItem()
        if item is not None and event.key() == Qt.Key.Key_Delete:
            if item.data(UNSAVED_ROLE) is not None:
                self.takeItem(self.row(item))      # discarding an unsaved image is what Delete means
            else:
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
