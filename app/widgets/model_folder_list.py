"""The user's model folders as a list with a Remove button each, under the "Get models" dialog's
catalogue: adding a folder is one click, so taking one away must be too (nothing on disk is touched;
its models leave the model menu once the folders are scanned again)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.model_folders import ModelFolders


class ModelFolderList(QWidget):
    def __init__(self, folders: ModelFolders, parent: QWidget | None = None):
        super().__init__(parent)
        self.folders = folders
        self.rows = QVBoxLayout(self)
        self.rows.setContentsMargins(0, 0, 0, 0)
        folders.folders_changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        while (item := self.rows.takeAt(0)) is not None:
            if item.widget() is not None:
                item.widget().deleteLater()
        shown = self.folders.folders()
        if shown:
            self.rows.addWidget(QLabel("Your model folders (their models are listed, not copied):", objectName="Muted"))
        for folder in shown:
            self.rows.addWidget(self._row(folder))
        self.setVisible(bool(shown))

    def _row(self, folder: Path) -> QWidget:
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel(str(folder), wordWrap=True), 1)
        remove = QPushButton("Remove", accessibleName=f"Remove model folder {folder}",
                             toolTip="Stop listing this folder's models; nothing on disk changes")
        remove.clicked.connect(lambda: self.folders.remove(folder))
        layout.addWidget(remove)
        return row
