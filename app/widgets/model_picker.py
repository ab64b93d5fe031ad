"""The model picker: the built-in model, the models folder, models opened before, and the
"Open model file…" / "Open diffusers folder…" actions, in one combo box."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox

from app.models import BUILTIN, spec_label

OPEN_FILE, OPEN_FOLDER, RETRY = "open-file", "open-folder", "retry"
ACTIONS = (OPEN_FILE, OPEN_FOLDER, RETRY)


class ModelPicker(QComboBox):
    modelChosen = Signal(str)          # "builtin" or a path
    openFileRequested = Signal()
    openFolderRequested = Signal()
    retryRequested = Signal(str)       # the spec whose load failed

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAccessibleName("Model")
        self.setToolTip("The model that makes the images. Drop a .safetensors file on the window to open it.")
        self._current: str | None = None
        self._failed: str | None = None
        self.activated.connect(self._activated)

    def set_models(self, builtin_present: bool, specs: list[str]) -> None:
        """Fill the list: built-in first, then `specs` (paths), then the open actions."""
        self.blockSignals(True)
        self.clear()
        self.addItem("Built-in model" if builtin_present else "Built-in model (not installed)", BUILTIN)
        if not builtin_present:
            self.model().item(0).setEnabled(False)
        seen = set()
        for spec in specs:
            if spec not in seen:
                seen.add(spec)
                self.addItem(spec_label(spec), spec)
                self.setItemData(self.count() - 1, spec, Qt.ItemDataRole.ToolTipRole)
        self.insertSeparator(self.count())
        self.addItem("Open model file…", OPEN_FILE)
        self.addItem("Open diffusers folder…", OPEN_FOLDER)
        self.blockSignals(False)
        self.set_failed(self._failed)
        self._select(self._current)

    def set_failed(self, spec: str | None) -> None:
        """Offer "Try again" for `spec`, the model whose load just failed (None: nothing failed)."""
        self._failed = spec
        self.blockSignals(True)
        if (index := self.findData(RETRY)) >= 0:
            self.removeItem(index)
        if spec is not None:
            self.insertItem(self.findData(OPEN_FILE), f"Try again: {spec_label(spec)}", RETRY)
        self.blockSignals(False)
        self._select(self._current)

    def specs(self) -> list[str]:
        return [self.itemData(i) for i in range(self.count())
                if self.itemData(i) not in (None, BUILTIN, *ACTIONS)]

    def set_current(self, spec: str | None) -> None:
        """Show `spec` as the chosen model (adding it if new) without asking to load it."""
        if spec is not None and spec != BUILTIN and self.findData(spec) < 0:
            self.blockSignals(True)
            self.insertItem(self.findData(OPEN_FILE) - 1, spec_label(spec), spec)
            self.blockSignals(False)
        self._current = spec
        self._select(spec)

    def _select(self, spec: str | None) -> None:
        self.blockSignals(True)
        index = self.findData(spec) if spec is not None else -1
        self.setCurrentIndex(index)
        if index < 0:
            self.setPlaceholderText("No model — open one")
        self.blockSignals(False)

    def _activated(self, index: int) -> None:
        data = self.itemData(index)
        if data in ACTIONS:
            self._select(self._current)     # an action, not a choice: keep showing the current model
            if data == RETRY:
                self.retryRequested.emit(self._failed)
            else:
                (self.openFileRequested if data == OPEN_FILE else self.openFolderRequested).emit()
        elif data is not None and data != self._current:
            self.modelChosen.emit(data)
