"""The right-hand column: the picture being made (each step's preview, then the result), a progress
bar with its caption (step, speed, time left, guidance), and the timeline that replays the last run.
It shows what the session reports about a run; it starts nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QHBoxLayout, QLabel, QMenu, QProgressBar, QVBoxLayout, QWidget

from app.jobs import Failed, Finished, StepPreview, Stopped
from app.models import spec_label
from app.widgets.image_view import ImageView
from app.widgets.timeline import Timeline
from core.eta import pace

if TYPE_CHECKING:
    from app.session import Session

READY_TEXT = "Type a prompt and press Generate (Ctrl+Enter).\n\nDrop an image here to start from it."
NO_MODEL_TEXT = "No model loaded. Open a .safetensors file or a diffusers folder (Ctrl+O)."
NOT_INSTALLED_TEXT = ("No model yet.\n\nThe built-in model is not installed: open a .safetensors file or a "
                      "diffusers folder (Ctrl+O),\nor drop a model file on this window.")


class RunView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.image = ImageView(READY_TEXT)
        self.image.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.progress = QProgressBar()
        self.progress.setFixedHeight(6)
        self.progress.setTextVisible(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.caption = QLabel(objectName="Caption")
        self.caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.timeline = Timeline()
        self.timeline.frameChosen.connect(self.image.set_image)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 8)
        column.setSpacing(6)
        column.addWidget(self.image, 1)
        bar = QHBoxLayout()
        bar.setContentsMargins(24, 0, 24, 0)
        bar.addWidget(self.progress)
        column.addLayout(bar)
        column.addWidget(self.caption)
        column.addWidget(self.timeline)

    def bind(self, session: Session) -> None:
        """Show the session's runs, and while there is no model, why; the picture's menu acts on it."""
        self._session = session
        current = session.current_model
        current.loading_started.connect(
            lambda spec: session.model is None and self.image.set_placeholder(f"Loading {spec_label(spec)}…"))
        current.failed.connect(lambda *_: session.model is None and self.image.set_placeholder(NO_MODEL_TEXT))
        current.none_available.connect(lambda: self.image.set_placeholder(NOT_INSTALLED_TEXT))
        current.released.connect(self.timeline.clear)
        session.modelReady.connect(lambda *_: self.image.set_placeholder(READY_TEXT))
        session.runStarted.connect(lambda request, _: self.started(request.steps))
        session.previewShown.connect(self.show_step)
        session.jobDone.connect(self.ended)
        self.image.customContextMenuRequested.connect(self._menu)

    def _menu(self, pos) -> None:
        image, session = self.image.image(), self._session
        if image is None:
            return
        menu = QMenu(self)
        menu.addAction("Copy image", lambda: QApplication.clipboard().setImage(image))
        if live := session.image_history.unsaved(live=True):
            menu.addAction("Save the Live result", lambda: session.save_unsaved(live[0]))
        if (path := session.last_result) is not None:
            menu.addAction("Use as init image", lambda: session.open_init_image(path, offer=False))
        menu.exec(self.image.mapToGlobal(pos))

    def ended(self, message: Finished | Stopped | Failed) -> None:
        if isinstance(message, Finished):
            self.finished(message)
        elif isinstance(message, Stopped):
            self.stopped(message.steps_done)
        else:
            self.failed()

    def started(self, steps: int) -> None:
        self.timeline.clear()
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.caption.setText("Starting…")

    def show_step(self, preview: StepPreview) -> None:
        if preview.image is not None:
            self.image.set_image(preview.image)
        done = preview.i + 1
        self.progress.setRange(0, preview.total)
        self.progress.setValue(done)
        # Timed from the end of step 0, which also paid the warm-up: its i steps since then, of total - 1.
        speed = pace(preview.i, preview.total - 1, preview.seconds_after_first).text()
        text = f"step {done}/{preview.total}" + (f"  ·  {speed}" if speed else "")
        self.caption.setText(f"{text}  ·  guidance {preview.guidance:g}")

    def finished(self, message: Finished) -> None:
        self.progress.setValue(self.progress.maximum())
        self.caption.setText(f"done: {len(message.steps)} steps in {message.seconds:.1f} s  ·  "
                             f"seed {message.request.seed}")
        if message.images:
            self.image.set_image(message.images[0])
        self.timeline.set_run(message.frames, message.images[0] if message.images else None)

    def stopped(self, steps_done: int) -> None:
        self.progress.setValue(0)
        self.caption.setText(f"cancelled after {steps_done} steps")

    def failed(self) -> None:
        self.progress.setValue(0)
        self.caption.setText("")
