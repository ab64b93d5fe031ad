"""The status bar's output-folder button: where images are saved, and a menu to open that folder or
choose another."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QMenu, QToolButton


class OutputFolderButton(QToolButton):
    openRequested = Signal()
    chooseRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent, autoRaise=True, accessibleName="Output folder")
        self.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self)
        menu.addAction("Open the output folder", self.openRequested.emit)
        menu.addAction("Save images to another folder…", self.chooseRequested.emit)
        self.setMenu(menu)

    def show_folder(self, folder: Path) -> None:
        self.setText(f"Saving to {folder.name or folder}")
        self.setToolTip(f"Every image is saved with its settings to {folder}")
