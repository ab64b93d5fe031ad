"""The window's status bar, bound to the session: passing messages (loading, ready, generating, saved,
cancelled) on the left; where images are saved, the model and the device on the right."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import QLabel, QStatusBar

from app import models
from app.jobs import Failed, Finished, ReadyModel, Stopped
from app.models import spec_label
from app.widgets.output_folder import OutputFolderButton

if TYPE_CHECKING:
    from app.session import Session


class StatusBar(QStatusBar):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.output_button = OutputFolderButton()
        self.model_label = QLabel(objectName="Muted")
        self.device_label = QLabel(objectName="Muted")
        for widget in (self.output_button, self.model_label, self.device_label):
            self.addPermanentWidget(widget)

    def bind(self, session: Session) -> None:
        current = session.current_model
        self.output_button.show_folder(session.paths.output_dir)
        session.outputDirChanged.connect(self.output_button.show_folder)
        session.status.connect(self.showMessage)
        current.loading_started.connect(self._loading)
        current.failed.connect(lambda *_: self._failed(session.model))
        current.none_available.connect(lambda: self.model_label.setText("No model"))
        session.modelReady.connect(self._ready)
        session.runStarted.connect(lambda _, replacing: self.showMessage(
            "Restarting with the new settings…" if replacing else "Generating…"))
        session.jobDone.connect(self._ended)

    def _loading(self, spec: str) -> None:
        self.model_label.setText(f"Loading {spec_label(spec)}…")
        self.showMessage(f"Loading {spec_label(spec)}…")

    def _ready(self, ready: ReadyModel) -> None:
        self.model_label.setText(models.describe(ready.diffusion))
        self.device_label.setText(models.device_name(ready.diffusion.device))
        self.showMessage(f"{ready.diffusion.name} is ready", 4000)

    def _failed(self, ready: ReadyModel | None) -> None:
        self.showMessage("The model could not be opened", 6000)
        self.model_label.setText(models.describe(ready.diffusion) if ready else "No model")

    def _ended(self, message: Finished | Stopped | Failed) -> None:
        if isinstance(message, Finished):
            saved = ", ".join(p.name for p in message.paths)
            self.showMessage(f"Saved {saved}" if saved else "Done", 6000)
        elif isinstance(message, Stopped):
            self.showMessage("Cancelled", 4000)
        else:
            self.showMessage("The run failed", 6000)
