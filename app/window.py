"""The main window: a view over the session (app/session.py). It lays the widgets out, binds them
to the session (the form pushed in, the session's signals shown) and keeps what is purely view:
dialogs, the message bar's banners, the status bar, drag and drop, the clipboard.

It imports only Qt and light modules; the engine (torch) first loads in the session's model-loading
and generation threads, so the window opens fast (tests/test_startup.py keeps it so).
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QImage, QKeySequence, QShortcut
from PySide6.QtWidgets import QApplication, QMainWindow, QSplitter, QVBoxLayout, QWidget

from app.icon import app_icon
from app.jobs import Failed, Finished, ReadyModel
from app.session import Session
from app.settings import AppPaths, StoredSettings, open_settings
from app.widgets import dialogs
from app.widgets.controls import ControlsPanel
from app.widgets.history_strip import HistoryStrip
from app.widgets.image_view import ImageDialog
from app.widgets.init_image import dropped_paths
from app.widgets.message_bar import MessageBar
from app.widgets.model_sources import ModelSources
from app.widgets.run_view import RunView
from app.widgets.status_bar import StatusBar
from app.widgets.word_maps import WordStrip
from core.request import GenerationRequest
from core.resources import builtin_model_path

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1280, 800)
_DEFAULT = object()


def _session_attribute(name: str) -> property:
    """The session's state as tests, the self-test and scripts read it through the window."""
    return property(lambda self: getattr(self.session, name), doc=f"The session's `{name}`.")


def _session_action(name: str):
    def act(self, *args, **kwargs):
        return getattr(self.session, name)(*args, **kwargs)
    act.__name__, act.__doc__ = name, f"The session's `{name}`."
    return act


class MainWindow(QMainWindow):
    # Re-sent from the session once the window shows them, so a listener finds the view updated.
    modelLoaded = Signal(str)          # the model's spec
    modelFailed = Signal(str)          # the message shown
    previewShown = Signal(object)      # StepPreview
    jobDone = Signal(object)           # Finished | Stopped | Failed
    historyLoaded = Signal(int)
    initImageChanged = Signal(object)  # Path | None
    closed = Signal()

    # The session's state and actions as tests, the self-test and the scripts reach them.
    model, loading, load_failure = _session_attribute("model"), _session_attribute("loading"), \
        _session_attribute("load_failure")
    job, last_message, shown_steps = _session_attribute("job"), _session_attribute("last_message"), \
        _session_attribute("shown_steps")
    worker, paths = _session_attribute("worker"), _session_attribute("paths")
    generate, cancel, open_model = _session_action("generate"), _session_action("cancel"), \
        _session_action("open_model")
    set_output_dir, reuse_parameters = _session_action("set_output_dir"), _session_action("reuse_parameters")
    drop_paths, use_image_data = _session_action("drop_paths"), _session_action("use_image_data")
    build_request = _session_action("request_for")      # (seed) -> the form's GenerationRequest

    def __init__(self, paths: AppPaths, settings: QSettings | None = None, builtin: Path | None = _DEFAULT):
        super().__init__()
        self.settings = settings if settings is not None else open_settings(paths)
        stored = StoredSettings(self.settings)      # every saved value checked: a bad one must not stop the window
        builtin = builtin_model_path() if builtin is _DEFAULT else builtin
        self.session = Session(paths, self.settings, builtin, stored, self)
        self.confirm_close = lambda unsaved, running: dialogs.ask_close(self, unsaved, running)   # tests replace it
        self.setWindowTitle("Latent Desk")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self._build()
        restored = self.panel.restore(stored)
        self._connect()
        self._restore_window()
        self.model_sources = ModelSources(self)     # the picker's list, "Get models…", the user's model folders
        if stored.unusable:
            log.warning("unusable settings in %s: %s", self.settings.fileName(), stored.unusable)
            self.message_bar.show_message(stored.message(), "warning")
        self.panel.prompt.setFocus()
        self.session.start(restored)

    def save_unsaved(self, item) -> None:
        """Save the history strip's unsaved `item`."""
        self.session.save_unsaved(self.history.entry(item))

    # -- layout and wiring ---------------------------------------------------------------------

    def _build(self) -> None:
        self.panel = ControlsPanel()
        self.run_view = view = RunView()
        self.word_strip = WordStrip.under(view)         # the last picture's word maps (issue #25)
        self.preview, self.progress, self.progress_label, self.timeline = (view.image, view.progress,
                                                                           view.caption, view.timeline)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.panel)
        self.splitter.addWidget(view)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setCollapsible(0, False)
        self.splitter.setSizes([420, 860])
        self.message_bar = MessageBar()
        self.history = HistoryStrip(self.session.image_history)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        for widget, stretch in ((self.panel.toolbar, 0), (self.message_bar, 0), (self.splitter, 1), (self.history, 0)):
            layout.addWidget(widget, stretch)
        self.setCentralWidget(central)
        self.setStatusBar(StatusBar())
        bar = self.statusBar()
        self.output_button, self.model_label, self.device_label = bar.output_button, bar.model_label, bar.device_label
        self.resize(*DEFAULT_SIZE)

    def _connect(self) -> None:
        """The widgets bind themselves to the session; here, what crosses them: dialogs, banners,
        shortcuts. Each view slot is connected before the window's own signal that re-sends it."""
        p, s, current = self.panel, self.session, self.session.current_model
        for view in (p, self.run_view, self.word_strip, self.statusBar(), p.init_well.inpaint):
            view.bind(s)
        p.live.clicked.connect(lambda on: self.settings.setValue("form/live", on))   # a choice, remembered
        p.model_picker.openFileRequested.connect(self.choose_model_file)
        p.model_picker.openFolderRequested.connect(self.choose_model_folder)
        p.init_well.browseRequested.connect(self.choose_init_image)
        p.init_well.pasteRequested.connect(self.paste)
        p.init_well.cleared.connect(lambda: self.initImageChanged.emit(None))
        p.init_well.inpaint.paintRequested.connect(self.run_view.show_mask_page)
        self.history.viewRequested.connect(self.view_image)
        self.history.viewImageRequested.connect(self._show_image)
        self.history.saveRequested.connect(s.save_unsaved)
        self.history.useAsInitRequested.connect(lambda path: s.open_init_image(path, offer=False))
        self.history.reuseRequested.connect(s.reuse_parameters)
        self.history.message.connect(self.message_bar.show_message)
        self.output_button.openRequested.connect(self.open_output_dir)
        self.output_button.chooseRequested.connect(self.choose_output_dir)
        s.message.connect(self.message_bar.show_message)
        s.offer.connect(self.message_bar.show_message)
        s.restoreOffered.connect(self._offer_restore)
        s.restoreRequested.connect(self._restore)
        s.noModelToRun.connect(self._explain_no_model)
        s.jobDone.connect(self._show_run_ended)
        s.modelReady.connect(self._show_model)
        current.none_available.connect(self._show_no_model)
        current.failed.connect(self._show_failed)
        for of_session, of_window in ((s.modelLoaded, self.modelLoaded), (s.previewShown, self.previewShown),
                                      (s.jobDone, self.jobDone), (s.historyLoaded, self.historyLoaded),
                                      (s.initImageChanged, self.initImageChanged)):
            of_session.connect(of_window)       # last: every view slot above has run when it arrives
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self, lambda: s.generate())
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, s.cancel)
        QShortcut(QKeySequence.StandardKey.Paste, self, self.paste)
        QShortcut(QKeySequence("Ctrl+O"), self, self.choose_model_file)
        QShortcut(QKeySequence("Ctrl+L"), self, self.panel.prompt.setFocus)

    # -- the model's banners -------------------------------------------------------------------

    def _show_model(self, ready: ReadyModel) -> None:
        if self.message_bar.kind == "info" and "model" in self.message_bar.text():
            self.message_bar.dismiss()      # "not installed, open one" is answered
        if ready.preview_note:      # the model works; only its Tiny preview does not
            self.message_bar.show_message(ready.preview_note, "warning")

    def _show_failed(self, spec: str, message: str) -> None:
        self._show_load_failure()
        self.modelFailed.emit(message)

    def _show_load_failure(self) -> None:
        spec, message = self.session.load_failure
        self.message_bar.show_message(message, "error", [("Try again", lambda: self.session.open_model(spec)),
                                                         ("Open model file…", self.choose_model_file)])

    def _show_no_model(self) -> None:
        self.message_bar.show_message(
            f"The built-in model is not installed. Open a model, or put models in {self.session.paths.models_dir}.",
            "info", [("Get models…", self.model_sources.open_dialog), ("Open model file…", self.choose_model_file),
                     ("Open diffusers folder…", self.choose_model_folder)])

    def _explain_no_model(self) -> None:
        if self.session.load_failure and not self.session.loading:
            self._show_load_failure()       # why there is no model, not only that there is none
            return
        what = "The model is still loading" if self.session.loading else "No model is loaded"
        self.message_bar.show_message(f"{what}; the image can be made once one is ready.", "warning")

    def choose_model_file(self) -> None:
        if path := dialogs.choose_model_file(self, self.session.paths.models_dir):
            self.session.open_model(path)

    def choose_model_folder(self) -> None:
        if path := dialogs.choose_model_folder(self, self.session.paths.models_dir):
            self.session.open_model(path)

    def _show_run_ended(self, message) -> None:
        if isinstance(message, Finished) and message.save_error:
            self.message_bar.show_message(
                f"{message.save_error.rstrip('.')}. Nothing is lost: the images not saved stay in the history "
                "strip, marked \"not saved\"; right-click one to save or copy it.", "error")
        elif isinstance(message, Failed):
            self.message_bar.show_message(message.message, "error")

    # -- images: viewing, the output folder, the init image, restoring settings ----------------

    def view_image(self, path: Path) -> None:
        if (image := QImage(str(path))).isNull():
            self.message_bar.show_message(f"{path.name} cannot be read any more.", "error")
            return
        self._show_image(image, path.name)

    def _show_image(self, image: QImage, title: str) -> None:
        dialog = ImageDialog(image, title, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()

    def open_output_dir(self) -> None:
        self.session.paths.output_dir.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.session.paths.output_dir)))

    def choose_output_dir(self) -> None:
        if folder := dialogs.choose_output_dir(self, self.session.paths.output_dir):
            self.session.set_output_dir(Path(folder))

    def choose_init_image(self) -> None:
        if path := dialogs.choose_init_image(self):
            self.session.open_init_image(Path(path))

    def _offer_restore(self, path: Path, request: GenerationRequest, warnings: list[str]) -> None:
        prompt = request.prompt if len(request.prompt) <= 60 else request.prompt[:57] + "…"
        self.message_bar.show_message(
            f"{path.name} was made with “{prompt}”, {request.steps} steps, seed {request.seed}. "
            "Restore its settings?", "info", [("Restore", lambda: self._restore(request, warnings))])

    def _restore(self, request: GenerationRequest, warnings: list[str]) -> None:
        self.panel.init_well.inpaint.apply_request(request)
        changed = warnings + self.panel.apply_request(request)
        if changed:
            self.message_bar.show_message(" ".join(changed), "warning")

    def paste(self) -> None:
        mime = QApplication.clipboard().mimeData()
        if mime is not None and mime.hasUrls() and any(u.isLocalFile() for u in mime.urls()):
            self.session.drop_paths([Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()])
        elif mime is not None and mime.hasImage():
            self.session.use_image_data(QImage(mime.imageData()))
        else:
            self.statusBar().showMessage("The clipboard holds no image", 4000)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        if paths := dropped_paths(event):
            self.session.drop_paths(paths)
        elif event.mimeData().hasImage():
            self.session.use_image_data(QImage(event.mimeData().imageData()))
        event.acceptProposedAction()

    # -- settings and closing ------------------------------------------------------------------

    def _restore_window(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        splitter = self.settings.value("window/splitter")
        if isinstance(splitter, QByteArray) and not splitter.isEmpty():
            self.splitter.restoreState(splitter)

    def save_settings(self) -> None:
        self.panel.save(self.settings)
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/splitter", self.splitter.saveState())
        self.settings.sync()

    def closeEvent(self, event) -> None:
        unsaved = self.session.image_history.unsaved(live=False)
        running = self.session.job is not None and self.session.job.save   # a Live run is no one's work yet
        if unsaved or running:
            answer = self.confirm_close(len(unsaved), running)
            if answer == "cancel" or (answer == "save" and not self.session.save_all_now(unsaved)):
                event.ignore()
                return
        self.save_settings()
        self.hide()     # a step or a VAE decode may take seconds to end: the window goes now, not then
        self.session.shutdown()         # cancels a run in flight and waits for the thread to end
        super().closeEvent(event)
        self.closed.emit()
