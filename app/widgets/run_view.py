"""The right-hand column: the picture being made (each step's preview, then the result), a progress
bar with its caption (step, speed, time left, guidance), and the timeline that replays the last run.
It shows what the session reports about a run; it starts nothing. Its "Mask" page paints the inpainting
mask on the init image (app/widgets/mask_painter.py); the painted mask goes to the session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QApplication,
    QButtonGroup,
    QHBoxLayout,
    QLabel,
    QMenu,
    QProgressBar,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import theme
from app.init_image_files import InpaintChoice, outpainted_size
from app.jobs import Failed, Finished, StepPreview, Stopped
from app.models import spec_label
from app.widgets.image_view import ImageView
from app.widgets.mask_painter import MaskCanvas, MaskTools
from app.widgets.timeline import Timeline
from core.eta import pace

if TYPE_CHECKING:
    from app.session import Session

READY_TEXT = "Type a prompt and press Generate (Ctrl+Enter).\n\nDrop an image here to start from it."
NO_MODEL_TEXT = "No model loaded. Open a .safetensors file or a diffusers folder (Ctrl+O)."
MASK_KEYS = "  [ ] brush size · E eraser · Ctrl+Z undo"
# The page switch and the painter's tools: a checked button is the accent colour (the theme leaves it plain).
CHECKED_STYLE = f"QToolButton:checked {{ background: {theme.ACCENT}; border-color: {theme.ACCENT}; color: white; }}"
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
        self.canvas = MaskCanvas()
        self.mask_tools = MaskTools(self.canvas)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.image)
        self.pages.addWidget(self.canvas)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 8)
        column.setSpacing(6)
        column.addWidget(self._page_switch())
        column.addWidget(self.mask_tools)
        column.addWidget(self.pages, 1)
        bar = QHBoxLayout()
        bar.setContentsMargins(24, 0, 24, 0)
        bar.addWidget(self.progress)
        column.addLayout(bar)
        column.addWidget(self.caption)
        column.addWidget(self.timeline)

    def _page_switch(self) -> QWidget:
        bar = QWidget()
        bar.setStyleSheet(CHECKED_STYLE)
        self.mask_tools.setStyleSheet(CHECKED_STYLE)
        row = QHBoxLayout(bar)
        row.setContentsMargins(16, 8, 16, 0)
        row.setSpacing(0)
        self.result_tab = QToolButton(text="Result", checkable=True, checked=True,
                                      toolTip="The picture being made, then the result")
        self.mask_tab = QToolButton(text="Mask", checkable=True, enabled=False,
                                    toolTip="Paint on the init image what to repaint (inpainting)")
        group = QButtonGroup(bar)
        for tab in (self.result_tab, self.mask_tab):
            group.addButton(tab)
            row.addWidget(tab)
        self.mask_hint = QLabel(MASK_KEYS, objectName="Muted")
        row.addWidget(self.mask_hint)
        row.addStretch(1)
        self.result_tab.clicked.connect(self.show_result_page)
        self.mask_tab.clicked.connect(self.show_mask_page)
        self.show_result_page()
        return bar

    def show_result_page(self) -> None:
        self.result_tab.setChecked(True)
        self.pages.setCurrentWidget(self.image)
        self.mask_tools.hide()
        self.mask_hint.hide()

    def show_mask_page(self) -> None:
        """The painter, when there is a picture to paint on."""
        if not self.canvas.has_image():
            return
        self.mask_tab.setChecked(True)
        self.pages.setCurrentWidget(self.canvas)
        self.mask_tools.show()
        self.mask_hint.show()
        self.canvas.setFocus()

    def _show_picture(self, path, image) -> None:
        self.canvas.set_picture(image)
        self._show_extension(self._session.inpaint)
        self.mask_tab.setEnabled(image is not None)
        if image is None:
            self.show_result_page()

    def _take_mask(self, mask) -> None:
        self.canvas.layer.load(mask)
        self.show_mask_page()

    def _show_extension(self, choice: InpaintChoice) -> None:
        """Outpainting's grown canvas around the picture, and the size the run will make."""
        sides = choice.outpaint if choice.enabled else (0, 0, 0, 0)
        self.canvas.set_extension(sides)
        picture = self.canvas.layer.image
        if any(sides) and not picture.isNull():
            width, height = outpainted_size((picture.width(), picture.height()), sides)
            self.mask_hint.setText(f"{MASK_KEYS}  ·  the run makes {width} × {height}")
        else:
            self.mask_hint.setText(MASK_KEYS)

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
        session.pictureRead.connect(self._show_picture)
        session.maskRead.connect(self._take_mask)
        session.inpaintChanged.connect(self._show_extension)
        layer = self.canvas.layer
        layer.changed.connect(lambda: session.set_mask(None if layer.image.isNull() else layer.grey()))
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
        self.show_result_page()     # the run's previews, then its result
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
