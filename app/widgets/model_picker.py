"""The model picker: the built-in model, the models folder, the user's shared folders, models opened
before, and the "Open model file…" / "Open diffusers folder…" / "Get models…" / "Add model folder…"
actions, in one combo box."""

from __future__ import annotations

import functools

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox

from app.models import BUILTIN, spec_label

OPEN_FILE, OPEN_FOLDER, RETRY = "open-file", "open-folder", "retry"
GET_MODELS, ADD_FOLDER = "get-models", "add-folder"
ACTIONS = (OPEN_FILE, OPEN_FOLDER, RETRY, GET_MODELS, ADD_FOLDER)

# The list is filled again whenever a download finishes or a folder scan finds more, and a shared
# folder may hold thousands of models: their names are worked out once (half of a refill's time).
label = functools.lru_cache(maxsize=65_536)(spec_label)


class ModelPicker(QComboBox):
    modelChosen = Signal(str)          # "builtin" or a path
    openFileRequested = Signal()
    openFolderRequested = Signal()
    retryRequested = Signal(str)       # the spec whose load failed
    getModelsRequested = Signal()
    addFolderRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAccessibleName("Model")
        self.setToolTip("The model that makes the images. Drop a .safetensors file on the window to open it.")
        self._current: str | None = None
        self._failed: str | None = None
        self._listed: set[str] = set()      # the models listed after the built-in one
        self.activated.connect(self._activated)

    def set_models(self, builtin_present: bool, specs: list[str]) -> None:
        """Fill the list: built-in first, then `specs` (paths), then the open actions."""
        self.blockSignals(True)
        self.clear()
        self.addItem("Built-in model" if builtin_present else "Built-in model (not installed)", BUILTIN)
        if not builtin_present:
            self.model().item(0).setEnabled(False)
        self._listed = set()
        for spec in specs:
            if spec not in self._listed:
                self._listed.add(spec)
                self._insert_model(self.count(), spec)
        self.insertSeparator(self.count())
        self.addItem("Open model file…", OPEN_FILE)
        self.addItem("Open diffusers folder…", OPEN_FOLDER)
        self.addItem("Get models…", GET_MODELS)
        self.addItem("Add model folder…", ADD_FOLDER)
        self.blockSignals(False)
        self.set_failed(self._failed)
        self._select(self._current)

    def add_models(self, specs: list[str]) -> None:
        """Add those of `specs` not listed yet after the listed models, without filling the list
        again: a folder scan sends its finds in batches, and the list may already be thousands long."""
        new = [spec for spec in dict.fromkeys(specs) if spec not in self._listed and spec != BUILTIN]
        self.blockSignals(True)
        for spec in new:
            self._insert_model(self._models_end(), spec)
            self._listed.add(spec)
        self.blockSignals(False)

    def _models_end(self) -> int:
        """Where the separator before the actions is: after the built-in model and the listed ones."""
        return 1 + len(self._listed)

    def _insert_model(self, index: int, spec: str) -> None:
        self.insertItem(index, label(spec), spec)
        self.setItemData(index, spec, Qt.ItemDataRole.ToolTipRole)

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
        if spec is not None and spec != BUILTIN and spec not in self._listed:
            self.add_models([spec])
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
                {OPEN_FILE: self.openFileRequested, OPEN_FOLDER: self.openFolderRequested,
                 GET_MODELS: self.getModelsRequested, ADD_FOLDER: self.addFolderRequested}[data].emit()
        elif data is not None and data != self._current:
            self.modelChosen.emit(data)
