"""The history strip: the session's image history (app/history.py) as a row of thumbnails, newest
first; images not on disk yet are marked "not saved". A click (or the arrow keys) puts an image on the main
view, with its word maps when it has them (app/widgets/word_maps.py); the image on view is the one selected.
Each image has a menu (view, use as init image, reuse its parameters, copy, delete; for an unsaved one: save,
discard; for a draft: "Final", the same latents decoded again with the VAE, app/final_decode.py).

Items can be dragged out (onto the init-image well, or another program) as file URLs.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QFile, QMimeData, QSize, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices, QIcon, QImage, QKeyEvent, QPainter, QPixmap
from PySide6.QtWidgets import QApplication, QListView, QListWidget, QListWidgetItem, QMenu, QMessageBox

from app import theme
from app.history import HISTORY_THUMB_SIZE, HistoryEntry, ImageHistory
from core.errors import LatentDeskError
from core.metadata.png_files import read_parameters

PATH_ROLE = Qt.ItemDataRole.UserRole
UNSAVED_ROLE = Qt.ItemDataRole.UserRole + 1     # an app.jobs.Unsaved, for an image not on disk
LIVE_ROLE = Qt.ItemDataRole.UserRole + 2        # True for the newest Live result (one is kept)
ENTRY_ROLE = Qt.ItemDataRole.UserRole + 3       # the app.history.HistoryEntry the item shows
FINAL_ACTION = "Final (decode with the VAE)"


def move_to_trash(path: Path) -> bool:
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
    saveRequested = Signal(object)              # the unsaved HistoryEntry the user wants on disk
    message = Signal(str, str)       # text, kind ("info" | "warning" | "error")

    def __init__(self, history: ImageHistory, parent=None):
        super().__init__(parent)
        self.image_history = history
        self._items: dict[HistoryEntry, QListWidgetItem] = {}
        self.setObjectName("History")
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setIconSize(QSize(HISTORY_THUMB_SIZE, HISTORY_THUMB_SIZE))
        self.setGridSize(QSize(HISTORY_THUMB_SIZE + 10, HISTORY_THUMB_SIZE + 10))
        self.setFixedHeight(HISTORY_THUMB_SIZE + 22)
        self.setHorizontalScrollMode(QListView.ScrollMode.ScrollPerPixel)
        self.setDragEnabled(True)
        self.setSelectionMode(QListView.SelectionMode.SingleSelection)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.DefaultContextMenu)
        self.setAccessibleName("History")
        self.itemActivated.connect(self._view)
        self.itemClicked.connect(self.show_on_view)
        history.viewChanged.connect(self._select)
        history.added.connect(self._add)
        history.removed.connect(self._remove)
        history.saved.connect(self._show)
        # Deleting asks first only where the trash is not available; tests replace this.
        self.confirm_delete = self._ask_delete

    # -- the history, shown ------------------------------------------------------------------

    def _add(self, entry: HistoryEntry, newest: bool) -> None:
        item = QListWidgetItem()
        item.setData(ENTRY_ROLE, entry)
        self._items[entry] = item
        self._show(entry)
        if newest:
            self.insertItem(0, item)
        else:
            self.addItem(item)

    def _show(self, entry: HistoryEntry) -> None:
        item = self._items[entry]
        icon = QPixmap.fromImage(entry.thumb) if entry.unsaved is None else marked_unsaved(entry.thumb)
        item.setIcon(QIcon(icon))
        item.setData(PATH_ROLE, entry.path)
        item.setData(UNSAVED_ROLE, entry.unsaved)
        item.setData(LIVE_ROLE, entry.live)
        item.setToolTip(entry.caption if entry.unsaved is None else
                        f"{'Live result, ' if entry.live else ''}not saved: right-click to save it\n{entry.caption}")

    def _remove(self, entry: HistoryEntry) -> None:
        item = self._items.pop(entry, None)
        if item is not None and (row := self.row(item)) >= 0:
            self.takeItem(row)

    def entry(self, item: QListWidgetItem) -> HistoryEntry:
        return item.data(ENTRY_ROLE)

    def unsaved_items(self, live: bool | None = None) -> list[QListWidgetItem]:
        """Items not on disk; `live` True/False picks only the Live result or only the others."""
        return [self._items[entry] for entry in self.image_history.unsaved(live)]

    def paths(self) -> list[Path]:
        return self.image_history.paths()

    def _view(self, item: QListWidgetItem) -> None:
        if (unsaved := item.data(UNSAVED_ROLE)) is not None:
            self.viewImageRequested.emit(unsaved.preview, "not saved")
        else:
            self.viewRequested.emit(item.data(PATH_ROLE))

    def show_on_view(self, item: QListWidgetItem) -> None:
        """Put the item's whole picture on the main view (the history says which entry is on view)."""
        entry = self.entry(item)
        image = entry.unsaved.preview if entry.unsaved is not None else QImage(str(entry.path))
        if image.isNull():
            self.message.emit(f"{entry.path.name} cannot be read any more.", "error")
            return
        self.image_history.view(entry, image)

    def _select(self, entry: HistoryEntry | None, image) -> None:
        item = self._items.get(entry)
        if item is not None and self.currentItem() is not item:
            self.setCurrentItem(item)
            self.scrollToItem(item)

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self.count() == 0:
            painter = QPainter(self.viewport())
            painter.setPen(QColor(theme.MUTED))
            painter.drawText(self.viewport().rect(), Qt.AlignmentFlag.AlignCenter,
                             "Finished images appear here and are saved to the output folder.  "
                             "Double-click to view, right-click for more, drag one onto the well to vary it.")

    def mimeData(self, items) -> QMimeData:
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(item.data(PATH_ROLE))) for item in items
                      if item.data(PATH_ROLE) is not None])
        return mime

    # -- the per-image menu ------------------------------------------------------------------

    def menu_for_item(self, item: QListWidgetItem) -> QMenu:
        menu = self.menu_for(item.data(PATH_ROLE)) if item.data(UNSAVED_ROLE) is None else self.menu_for_unsaved(item)
        self._add_final(menu, self.entry(item))
        return menu

    def _add_final(self, menu: QMenu, entry: HistoryEntry) -> None:
        """"Final" for a draft whose latents are kept and whose model is loaded (only its VAE fits them)."""
        action = menu.addAction(FINAL_ACTION, lambda: self.image_history.finalRequested.emit(entry))
        action.setEnabled(self.image_history.final_available(entry))
        if entry.draft is None:
            action.setToolTip("Only draft images, the newest few, keep what Final needs.")
        elif not action.isEnabled():
            action.setToolTip("The model that made this draft is no longer loaded.")
        menu.insertAction(menu.actions()[0], action)     # first: it is what a draft is there for
        menu.insertSeparator(menu.actions()[1])
        menu.setToolTipsVisible(True)

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
        entry = self.entry(item)
        menu = QMenu(self)
        menu.addAction("Save", lambda: self.saveRequested.emit(entry))
        menu.addAction("View large", lambda: self._view(item))
        menu.addSeparator()
        menu.addAction("Copy image", lambda: QApplication.clipboard().setImage(entry.unsaved.preview))
        menu.addAction("Copy parameters", lambda: QApplication.clipboard().setText(entry.unsaved.infotext))
        menu.addSeparator()
        menu.addAction("Discard", lambda: self.image_history.remove(entry))
        return menu

    def contextMenuEvent(self, event) -> None:
        item = self.itemAt(event.pos()) if event.reason() != event.Reason.Keyboard else self.currentItem()
        if item is None:
            return
        self.menu_for_item(item).exec(event.globalPos())

    def keyPressEvent(self, event: QKeyEvent) -> None:
        item = self.currentItem()
        if item is not None and event.key() == Qt.Key.Key_Delete:
            if item.data(UNSAVED_ROLE) is not None:
                self.image_history.remove(self.entry(item))      # discarding an unsaved image is what Delete means
            else:
                self.delete(item.data(PATH_ROLE))
            return
        super().keyPressEvent(event)
        if self.currentItem() is not None and self.currentItem() is not item:     # moved with the arrow keys
            self.show_on_view(self.currentItem())

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
            self.image_history.remove_path(path)
            return True
        if not move_to_trash(path):
            if not self.confirm_delete(path):
                return False
            try:
                path.unlink()
            except OSError as e:
                self.message.emit(f"Could not delete {path.name}: {e.strerror or e}", "error")
                return False
        self.image_history.remove_path(path)
        return True

    def _ask_delete(self, path: Path) -> bool:
        answer = QMessageBox.question(self, "Delete image",
                                      f"There is no trash here. Delete {path.name} for good?")
        return answer == QMessageBox.StandardButton.Yes
