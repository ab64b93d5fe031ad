"""Where the window's models come from, beyond opening a file: the "Get models" dialog, the user's
own model folders, the model picker's list kept current as downloads finish and folder scans find
models, and the one-time offer to get models on a first start.

Kept out of app/window.py, which only creates this (`ModelSources(window)`).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QMainWindow

from app import models
from app.settings import read
from app.widgets import dialogs
from app.widgets.get_models import GetModelsDialog
from core.errors import LatentDeskError

OFFERED_KEY = "models/download_offered"     # the first-start offer was shown once: never again


class ModelSources(QObject):
    def __init__(self, window: QMainWindow):
        """`window`: the MainWindow, whose session, model picker, message bar and `closed` signal this uses."""
        super().__init__(window)
        self.window = window
        self.session, self.picker, self.bar = window.session, window.panel.model_picker, window.message_bar
        self.dialog: GetModelsDialog | None = None
        session, current = self.session, self.session.current_model
        self.show_models()
        current.choices_changed.connect(self.show_models)
        current.shared_added.connect(self.picker.add_models)       # a scan's batch: added, not refilled
        self.picker.getModelsRequested.connect(self.open_dialog)
        self.picker.addFolderRequested.connect(self.add_folder)
        session.downloads.finished.connect(self._downloaded)
        session.model_folders.scan_finished.connect(self._scanned)
        session.modelLoaded.connect(self._offer_once)
        window.closed.connect(self._close_dialog)

    def show_models(self) -> None:
        current = self.session.current_model
        self.picker.set_models(current.builtin_present, current.choices())

    # -- the "Get models" dialog ---------------------------------------------------------------

    def open_dialog(self) -> GetModelsDialog | None:
        """Show the dialog (one; it keeps showing the downloads it started), not modal."""
        if self.dialog is None:
            try:
                entries = self.session.downloads.entries()
            except (LatentDeskError, OSError, ValueError) as e:
                self.bar.show_message(f"The list of models cannot be read: {e}", "error")
                return None
            self.dialog = GetModelsDialog(self.session.downloads, entries, self.window, self.session.model_folders)
            self.dialog.addFolderRequested.connect(self.add_folder)
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.activateWindow()
        return self.dialog

    def _close_dialog(self) -> None:
        if self.dialog is not None:
            self.dialog.close()

    def _downloaded(self, name: str, path: Path) -> None:
        if models.is_model_path(path) and not models.is_preview_decoder_file(path) \
                and path.parent == self.session.paths.models_dir:
            self.bar.show_message(f"{path.name} is downloaded; it is in the model list.", "info",
                                  [("Use it", lambda: self.session.open_model(str(path)))])
        else:
            self.session.status.emit(f"Downloaded {path.name}", 6000)

    # -- the user's own model folders ----------------------------------------------------------

    def add_folder(self) -> None:
        parent = self.dialog if self.dialog is not None and self.dialog.isVisible() else self.window
        if not (chosen := dialogs.choose_shared_models_folder(parent)):
            return
        folder = Path(chosen)
        if self.session.model_folders.add(folder):
            self.session.status.emit(f"Looking for models in {folder}…", 0)
        else:
            self.session.status.emit(f"{folder} is among the model folders already", 4000)

    def _scanned(self, found: list[str]) -> None:
        if self.session.model_folders.any_set():
            count = len(found)
            self.session.status.emit(f"Found {count} model{'s' if count != 1 else ''} in your model folders", 6000)

    # -- the first start -----------------------------------------------------------------------

    def offer_due(self) -> bool:
        """Nothing but the built-in model so far: no model in the models folder, none opened from
        elsewhere, no model folder of the user's, and the offer not made before."""
        settings, session = self.session.settings, self.session
        return not (read(settings, OFFERED_KEY, False) or read(settings, "models/recent", "")
                    or session.model_folders.any_set() or models.scan_models(session.paths.models_dir))

    def _offer_once(self) -> None:
        """After the start model is in (its own banners first): offer more models, once. A banner,
        not a dialog: the built-in model works without any, and nothing should wait for an answer."""
        self.session.modelLoaded.disconnect(self._offer_once)
        if self.bar.text() or not self.offer_due():
            return      # the bar says something that matters more; the offer waits for another start
        self.session.settings.setValue(OFFERED_KEY, True)
        self.bar.show_message(
            "The built-in model is ready. More models (larger, sharper, other styles) can be downloaded, "
            "or used from folders you already have (A1111, ComfyUI).", "info",
            [("Get models…", self.open_dialog), ("Add model folder…", self.add_folder)])
