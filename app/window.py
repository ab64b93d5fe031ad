"""The main window: it builds requests from the controls, hands jobs to the worker, and shows
what comes back. It never calls the sampling loop itself (krita-ai-diffusion's rule: the UI
talks to the engine through jobs and messages).

Blocking work that is not sampling (loading a model, reading thumbnails, reading a dropped
image, writing a pasted one) runs as asyncio tasks on qasync's loop, awaiting worker threads,
so the window stays responsive; `app/main.py` sets the loop up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
from collections.abc import Coroutine
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QImage, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import models
from app.history import THUMB, UNSAVED_ROLE, HistoryStrip, Thumb, caption, list_outputs, read_thumbnails
from app.icon import app_icon
from app.init_image import read_init_image, size_for, write_pasted
from app.jobs import Failed, Finished, Job, LoadedModel, PreviewOptions, StepPreview, Stopped
from app.live import LiveMode
from app.settings import AppPaths, HashCache, StoredSettings, absolute_path_or_empty, open_settings, read
from app.widgets.controls import ControlsPanel
from app.widgets.image_view import ImageDialog, ImageView
from app.widgets.init_image import dropped_paths
from app.widgets.message_bar import MessageBar
from app.widgets.model_picker import BUILTIN, spec_label
from app.widgets.timeline import Timeline
from app.worker import GenerationWorker
from core.errors import LatentDeskError
from core.sampling.guidance_scale import GuidanceScale
from core.metadata import read_parameters, remove_stale_temporaries, request_from_infotext, save_png
from core.request import GenerationRequest
from core.resources import builtin_model_path

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1280, 800)
_DEFAULT = object()


class MainWindow(QMainWindow):
    modelLoaded = Signal(str)          # the model's spec
    modelFailed = Signal(str)          # the message shown
    previewShown = Signal(object)      # StepPreview
    jobDone = Signal(object)           # Finished | Stopped | Failed
    historyLoaded = Signal(int)
    initImageChanged = Signal(object)  # Path | None
    closed = Signal()

    def __init__(self, paths: AppPaths, settings: QSettings | None = None, builtin: Path | None = _DEFAULT):
        super().__init__()
        self.settings = settings if settings is not None else open_settings(paths)
        stored = StoredSettings(self.settings)      # every saved value checked: a bad one must not stop the window
        chosen = stored.get("output_dir", "", absolute_path_or_empty)   # the user's own choice wins over the default
        self.paths = dataclasses.replace(paths, output_dir=Path(chosen)) if chosen else paths
        self.builtin = builtin_model_path() if builtin is _DEFAULT else builtin
        self.hashes = HashCache(self.settings)
        self.worker = GenerationWorker(self)
        self.model: LoadedModel | None = None
        self.loading: str | None = None
        self.load_failure: tuple[str, str] | None = None     # (spec, message) of the last failed load
        self.job: Job | None = None                 # the newest job handed to the worker
        self.shown_steps: list[int] = []            # steps of `job` whose preview was shown
        self.last_message = None
        self.preview_options = PreviewOptions()
        self._job_ids = itertools.count(1)
        self._load_serial = 0
        self._load_cancel = threading.Event()
        self._tasks: set[asyncio.Task] = set()
        self._last_result: Path | None = None
        self.confirm_close = self._ask_close     # tests replace it

        self.setWindowTitle("Latent Desk")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self._build()
        self.live = LiveMode(lambda: self.generate(live=True), lambda: self.model is not None
                             and bool(self.panel.values().prompt), self)
        self._connect()
        self._restored = self.panel.restore(stored)
        self._restore_window()
        self._fill_model_picker()
        if stored.unusable:
            log.warning("unusable settings in %s: %s", self.settings.fileName(), stored.unusable)
            self.message_bar.show_message(stored.message(), "warning")
        self.preview_options.set(*self.panel.preview_choice())
        self.panel.prompt.setFocus()
        self.spawn(self.load_history())
        self.spawn(self._open_start_model())
        self.worker.start()

    # -- layout --------------------------------------------------------------------------------

    def _build(self) -> None:
        self.panel = ControlsPanel()
        self.preview = ImageView("Type a prompt and press Generate (Ctrl+Enter).\n\n"
                                 "Drop an image here to start from it.")
        self.preview.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.progress = QProgressBar()
        self.progress.setFixedHeight(6)
        self.progress.setTextVisible(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress_label = QLabel(objectName="Caption")
        self.progress_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        right = QWidget()
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 8)
        column.setSpacing(6)
        column.addWidget(self.preview, 1)
        bar = QHBoxLayout()
        bar.setContentsMargins(24, 0, 24, 0)
        bar.addWidget(self.progress)
        column.addLayout(bar)
        column.addWidget(self.progress_label)
        self.timeline = Timeline()
        column.addWidget(self.timeline)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.panel)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setCollapsible(0, False)
        self.splitter.setSizes([420, 860])
        self.message_bar = MessageBar()
        self.history = HistoryStrip()
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.panel.toolbar)
        layout.addWidget(self.message_bar)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.history)
        self.setCentralWidget(central)
        self.device_label = QLabel(objectName="Muted")
        self.model_label = QLabel(objectName="Muted")
        self.output_button = QToolButton(autoRaise=True, accessibleName="Output folder")
        self.output_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.output_button)
        menu.addAction("Open the output folder", self.open_output_dir)
        menu.addAction("Save images to another folder…", self.choose_output_dir)
        self.output_button.setMenu(menu)
        self._show_output_dir()
        self.statusBar().addPermanentWidget(self.output_button)
        self.statusBar().addPermanentWidget(self.model_label)
        self.statusBar().addPermanentWidget(self.device_label)
        self.resize(*DEFAULT_SIZE)

    def _connect(self) -> None:
        p = self.panel
        p.generate_button.clicked.connect(self.generate)
        p.cancel_button.clicked.connect(self.cancel)
        p.prompt.submitted.connect(self.generate)
        p.negative.submitted.connect(self.generate)
        p.prompt.imagePasted.connect(self.use_image_data)
        p.negative.imagePasted.connect(self.use_image_data)
        p.guidance.valueChanged.connect(self._guidance_moved)
        p.edited.connect(self.live.edited)
        p.live.toggled.connect(self.live.set_enabled)
        p.live.clicked.connect(lambda on: self.settings.setValue("form/live", on))   # a choice, remembered
        p.preview_mode.currentIndexChanged.connect(self._preview_changed)
        p.preview_noisy.toggled.connect(self._preview_changed)
        p.model_picker.modelChosen.connect(self.open_model)
        p.speedups.precisionChanged.connect(self._precision_changed)
        p.model_picker.openFileRequested.connect(self.choose_model_file)
        p.model_picker.retryRequested.connect(self.open_model)
        p.model_picker.openFolderRequested.connect(self.choose_model_folder)
        p.init_well.filesDropped.connect(lambda paths: self.drop_paths(paths))
        p.init_well.imageDropped.connect(self.use_image_data)
        p.init_well.browseRequested.connect(self.choose_init_image)
        p.init_well.pasteRequested.connect(self.paste)
        p.init_well.cleared.connect(lambda: self.initImageChanged.emit(None))
        self.worker.preview_ready.connect(self._show_preview)
        self.worker.message.connect(self._on_message)
        self.history.viewRequested.connect(self.view_image)
        self.history.viewImageRequested.connect(self._show_image)
        self.history.saveRequested.connect(self.save_unsaved)
        self.history.useAsInitRequested.connect(lambda path: self.spawn(self.set_init_image(path, offer=False)))
        self.history.reuseRequested.connect(self.reuse_parameters)
        self.history.message.connect(lambda text, kind: self.message_bar.show_message(text, kind))
        self.preview.customContextMenuRequested.connect(self._preview_menu)
        self.timeline.frameChosen.connect(self.preview.set_image)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self, self.generate)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.cancel)
        QShortcut(QKeySequence.StandardKey.Paste, self, self.paste)
        QShortcut(QKeySequence("Ctrl+O"), self, self.choose_model_file)
        QShortcut(QKeySequence("Ctrl+L"), self, self.panel.prompt.setFocus)

    # -- async helpers -------------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine) -> asyncio.Task:
        """Run `coroutine` on the event loop; an exception it lets out is shown, not lost."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("background task failed", exc_info=error)
            self.message_bar.show_message(f"Something went wrong: {error}", "error")

    # -- models --------------------------------------------------------------------------------

    def _fill_model_picker(self) -> None:
        recent = [s for s in read(self.settings, "models/recent", "").split("\n")
                  if s and models.quietly(Path.exists, Path(s))]
        scanned = [str(p) for p in models.scan_models(self.paths.models_dir)]
        self.panel.model_picker.set_models(self.builtin_present, scanned + recent)

    @property
    def builtin_present(self) -> bool:
        return self.builtin is not None and models.quietly(Path.is_file, self.builtin)

    async def _open_start_model(self) -> None:
        last = read(self.settings, "model", "")
        if last and (last == BUILTIN and self.builtin_present
                     or last != BUILTIN and models.quietly(Path.exists, Path(last))):
            await self.load_model(last)
        elif self.builtin_present:
            await self.load_model(BUILTIN)
        elif specs := self.panel.model_picker.specs():
            await self.load_model(specs[0])
        else:
            self._no_model()

    def _no_model(self) -> None:
        self.preview.set_placeholder("No model yet.\n\nThe built-in model is not installed: open a "
                                     ".safetensors file or a diffusers folder (Ctrl+O),\nor drop a model "
                                     "file on this window.")
        self.model_label.setText("No model")
        self.message_bar.show_message(
            f"The built-in model is not installed. Open a model, or put models in {self.paths.models_dir}.",
            "info", [("Open model file…", self.choose_model_file),
                     ("Open diffusers folder…", self.choose_model_folder)])

    def open_model(self, spec: str) -> None:
        self.spawn(self.load_model(spec))

    def _precision_changed(self, precision: str) -> None:
        """bf16 switched on or off: the model is loaded again with its networks in that format."""
        spec = self.loading or (self.model.spec if self.model else None)
        if spec is not None:
            self.open_model(spec)

    async def load_model(self, spec: str) -> None:
        path = self.builtin if spec == BUILTIN else Path(spec)
        self._load_serial += 1
        serial = self._load_serial
        self._load_cancel.set()             # a load still running for an older choice stops reading
        self._load_cancel = cancel = threading.Event()
        self.loading = spec
        self.model_label.setText(f"Loading {spec_label(spec)}…")
        self.statusBar().showMessage(f"Loading {spec_label(spec)}…")
        if self.model is None:
            self.preview.set_placeholder(f"Loading {spec_label(spec)}…")
        try:
            precision = self.panel.speedups.precision()
            if self.model is not None and path is not None and \
                    await asyncio.to_thread(models.needs_room, path, precision, self.model):
                if serial != self._load_serial:
                    return
                self._release_model(spec)
            known = self.hashes.get(path) if path is not None else None
            loaded = await asyncio.to_thread(models.load, path, spec, known, precision, cancel)
        except Exception as e:      # noqa: BLE001 - any failure must end in "failed, because …", never "Loading…"
            # ImportError, FileNotFoundError from a dependency's data: the engine itself first loads
            # here, so a broken install (or bundle) shows up as this model failing to open.
            log.error("could not open the model %s", spec, exc_info=e)
            if serial == self._load_serial:
                self._model_failed(spec, e)
            return
        if serial != self._load_serial:
            return          # the user picked another model meanwhile
        self.loading = None
        self.load_failure = None
        self.panel.model_picker.set_failed(None)
        self.hashes.put(path, loaded.hash)
        previous, self.model = self.model, loaded
        family = loaded.model.family
        self.panel.set_family(family.default_size, family.default_guidance)
        self.panel.live.setChecked(read(self.settings, "form/live", spec == BUILTIN))
        if (previous is None and not self._restored) or (previous is not None and previous.model.family != family):
            self.panel.apply_family_defaults(family)
        self._remember_model(spec)
        self.panel.model_picker.set_current(spec)
        self.panel.model_info.setText(f"{family.title} · predicts {loaded.model.prediction} · "
                                      f"{family.default_size}px native")
        self.model_label.setText(models.describe(loaded.model))
        self.device_label.setText(models.device_name(loaded.model.device))
        self.statusBar().showMessage(f"{loaded.model.name} is ready", 4000)
        self.preview.set_placeholder("Type a prompt and press Generate (Ctrl+Enter).\n\n"
                                     "Drop an image here to start from it.")
        if self.message_bar.kind == "info" and "model" in self.message_bar.text():
            self.message_bar.dismiss()
        self.panel.preview_mode.setToolTip(models.tiny_decoder_note(loaded))
        if loaded.preview_note:      # the model works; only its Tiny preview does not
            self.message_bar.show_message(loaded.preview_note, "warning")
        self.live.timer.stop()      # the model's defaults just filled the form: that is no edit to react to
        self.modelLoaded.emit(spec)

    def _release_model(self, spec: str) -> None:
        """Close the loaded model so that `spec` fits in memory: two would not (a run with it stops)."""
        name = self.model.model.name
        self.worker.cancel()
        self.model = None
        self.timeline.clear()
        self.message_bar.show_message(f"{name} was closed to make room for {spec_label(spec)}: both do not fit "
                                      "in memory at once.", "info")

    def _model_failed(self, spec: str, error: Exception) -> None:
        self.loading = None
        reason = str(error) if isinstance(error, LatentDeskError) else f"{type(error).__name__}: {error}"
        if isinstance(error, MemoryError):
            reason = "there is not enough memory to load it"
        message = f"Could not open the model {spec_label(spec)}: {reason}"
        self.load_failure = (spec, message)
        self.panel.model_picker.set_failed(spec)
        self._show_load_failure()
        self.statusBar().showMessage("The model could not be opened", 6000)
        self.panel.model_picker.set_current(self.model.spec if self.model else None)
        self.model_label.setText(models.describe(self.model.model) if self.model else "No model")
        if self.model is None:
            self.preview.set_placeholder("No model loaded. Open a .safetensors file or a diffusers folder (Ctrl+O).")
        self.modelFailed.emit(message)

    def _show_load_failure(self) -> None:
        spec, message = self.load_failure
        self.message_bar.show_message(message, "error", [("Try again", lambda: self.open_model(spec)),
                                                         ("Open model file…", self.choose_model_file)])

    def _remember_model(self, spec: str) -> None:
        self.settings.setValue("model", spec)
        if spec != BUILTIN:
            recent = [s for s in read(self.settings, "models/recent", "").split("\n") if s and s != spec]
            self.settings.setValue("models/recent", "\n".join([spec, *recent][:8]))

    def choose_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open model", str(self.paths.models_dir),
                                              "Models (*.safetensors);;All files (*)")
        if path:
            self.open_model(path)

    def choose_model_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open diffusers model folder", str(self.paths.models_dir))
        if path:
            self.open_model(path)

    # -- generating ----------------------------------------------------------------------------

    def build_request(self, seed: int) -> GenerationRequest:
        v = self.panel.values()
        init = self.panel.init_well.path
        return GenerationRequest(prompt=v.prompt, negative_prompt=v.negative_prompt, steps=v.steps,
                                 guidance=v.guidance, sampler=v.sampler, seed=seed, width=v.width,
                                 height=v.height, batch=v.batch, init_image=str(init) if init else None,
                                 strength=v.strength, model=self.model.spec if self.model else BUILTIN,
                                 **v.speedups)

    def generate(self, live: bool = False) -> None:
        """Start a run. One at a time: a run in flight is cancelled and this one starts next.

        A Live run keeps the last seed even in Random mode, so the picture changes only by the edit.
        """
        if self.model is None:
            if self.load_failure and not self.loading:
                self._show_load_failure()       # why there is no model, not only that there is none
                return
            what = "The model is still loading" if self.loading else "No model is loaded"
            self.message_bar.show_message(f"{what}; the image can be made once one is ready.", "warning")
            return
        seed_control = self.panel.seed
        if live and seed_control.random.isChecked() and seed_control.last_used is not None:
            seed = seed_control.last_used
        else:
            seed = seed_control.seed_for_run()
        request = self.build_request(seed)
        self.preview_options.set(*self.panel.preview_choice())
        job = Job(next(self._job_ids), request, self.model, self.paths.output_dir,
                  GuidanceScale(request.guidance), self.preview_options, save=not live)
        replacing = self.job is not None
        self.job, self.shown_steps = job, []
        self.timeline.clear()
        self.panel.seed.set_last_used(seed)
        self.worker.submit(job)
        self.panel.set_busy(True)
        self.progress.setRange(0, request.steps)
        self.progress.setValue(0)
        self.progress_label.setText("Starting…")
        self.statusBar().showMessage("Restarting with the new settings…" if replacing else "Generating…")

    def cancel(self) -> None:
        if self.job is not None:
            self.worker.cancel()
            self.statusBar().showMessage("Cancelling…")

    def _guidance_moved(self, value: float) -> None:
        if self.job is not None:
            self.job.guidance.value = value      # read by the sampler from its next step on

    def _preview_changed(self, *_) -> None:
        self.preview_options.set(*self.panel.preview_choice())

    def _show_preview(self) -> None:
        preview: StepPreview | None = self.worker.mailbox.take()
        if preview is None or self.job is None or preview.job != self.job.id:
            return
        if preview.image is not None:
            self.preview.set_image(preview.image)
        self.shown_steps.append(preview.i)
        done = preview.i + 1
        self.progress.setRange(0, preview.total)
        self.progress.setValue(done)
        text = f"step {done}/{preview.total}"
        if preview.rate:
            eta = int(round((preview.total - done) / preview.rate))
            text += f"  ·  {preview.rate:.2f} it/s  ·  ETA {eta // 60}:{eta % 60:02d}"
        self.progress_label.setText(f"{text}  ·  guidance {preview.guidance:g}")
        self.previewShown.emit(preview)

    def _on_message(self, message) -> None:
        if isinstance(message, Finished):
            self._add_results(message)
        current = self.job is not None and message.job == self.job.id
        if not current:
            return          # a run replaced by a newer Generate; its images (if any) are in the history
        self.last_message, self.job = message, None
        self.panel.set_busy(False)
        if isinstance(message, Finished):
            seconds = message.seconds
            steps = len(message.steps)
            self.progress.setValue(self.progress.maximum())
            self.progress_label.setText(f"done: {steps} steps in {seconds:.1f} s  ·  seed {message.request.seed}")
            if message.images:
                self.preview.set_image(message.images[0])
            self.timeline.set_run(message.frames, message.images[0] if message.images else None)
            saved = ", ".join(p.name for p in message.paths)
            self.statusBar().showMessage(f"Saved {saved}" if saved else "Done", 6000)
            if message.save_error:
                self.message_bar.show_message(
                    f"{message.save_error.rstrip('.')}. Nothing is lost: the images not saved stay in the history strip, "
                    "marked \"not saved\"; right-click one to save or copy it.", "error")
        elif isinstance(message, Stopped):
            self.progress.setValue(0)
            self.progress_label.setText(f"cancelled after {message.steps_done} steps")
            self.statusBar().showMessage("Cancelled", 4000)
        elif isinstance(message, Failed):
            self.progress.setValue(0)
            self.progress_label.setText("")
            self.message_bar.show_message(message.message, "error")
            self.statusBar().showMessage("The run failed", 6000)
        self.jobDone.emit(message)

    def _add_results(self, message: Finished) -> None:
        every_one_saved = len(message.paths) == len(message.images)
        for i, path in enumerate(message.paths):
            # after a failed save the images no longer line up with the paths: read the file back
            image = message.images[i] if every_one_saved else QImage(str(path))
            thumb = image.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
            self.history.add_image(Thumb(path, thumb, caption(path)))
        for unsaved in message.unsaved:
            self.history.add_unsaved(unsaved, live=message.live)
        # "Use as init image" on the shown result: this run's file, never an older run's
        self._last_result = message.paths[0] if message.paths else None

    def save_unsaved(self, item) -> None:
        self.spawn(self._save_unsaved(item))

    async def _save_unsaved(self, item) -> bool:
        unsaved = item.data(UNSAVED_ROLE)
        if unsaved is None:
            return True
        try:
            path = await asyncio.to_thread(save_png, unsaved.image, self.paths.output_dir, unsaved.infotext)
        except LatentDeskError as e:
            self.message_bar.show_message(f"{e} The image stays in the history strip.", "error")
            return False
        if self.history.row(item) >= 0:
            self.history.mark_saved(item, path)
        self._last_result = path
        self.statusBar().showMessage(f"Saved {path.name}", 6000)
        return True

    # -- output folder -------------------------------------------------------------------------

    def _show_output_dir(self) -> None:
        folder = self.paths.output_dir
        self.output_button.setText(f"Saving to {folder.name or folder}")
        self.output_button.setToolTip(f"Every image is saved with its settings to {folder}")

    def open_output_dir(self) -> None:
        self.paths.output_dir.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.paths.output_dir)))

    def choose_output_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save images to", str(self.paths.output_dir))
        if folder:
            self.set_output_dir(Path(folder))

    def set_output_dir(self, folder: Path) -> None:
        """Save from the next run on into `folder` (remembered); the history shows that folder."""
        self.paths = dataclasses.replace(self.paths, output_dir=folder)
        self.settings.setValue("output_dir", str(folder))
        self._show_output_dir()
        for path in self.history.paths():      # the old folder's pictures go; unsaved images stay
            self.history.remove_path(path)
        self.spawn(self.load_history())

    # -- history -------------------------------------------------------------------------------

    async def load_history(self) -> None:
        await asyncio.to_thread(remove_stale_temporaries, self.paths.output_dir)    # a crash's half-written saves
        paths = await asyncio.to_thread(list_outputs, self.paths.output_dir)
        thumbs = await asyncio.to_thread(read_thumbnails, paths)
        known = set(self.history.paths())
        for thumb in thumbs:
            if thumb.path not in known:
                self.history.add_image(thumb, newest=False)
        self.historyLoaded.emit(len(thumbs))

    def view_image(self, path: Path) -> None:
        image = QImage(str(path))
        if image.isNull():
            self.message_bar.show_message(f"{path.name} cannot be read any more.", "error")
            return
        self._show_image(image, path.name)

    def _show_image(self, image: QImage, title: str) -> None:
        dialog = ImageDialog(image, title, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()

    def reuse_parameters(self, path: Path) -> None:
        try:
            text = read_parameters(path)
        except LatentDeskError as e:
            self.message_bar.show_message(str(e), "error")
            return
        request, warnings = request_from_infotext(text, self.build_request(0))
        if text is not None and "Steps:" in text:
            warnings += self.panel.apply_request(request)
        if warnings:
            self.message_bar.show_message(" ".join(warnings), "warning")

    def _preview_menu(self, pos) -> None:
        image = self.preview.image()
        if image is None:
            return
        menu = QMenu(self)
        menu.addAction("Copy image", lambda: QApplication.clipboard().setImage(image))
        if live := self.history.unsaved_items(live=True):
            menu.addAction("Save the Live result", lambda: self.save_unsaved(live[0]))
        if self._last_result is not None:
            path = self._last_result
            menu.addAction("Use as init image", lambda: self.spawn(self.set_init_image(path, offer=False)))
        menu.exec(self.preview.mapToGlobal(pos))

    # -- drops, paste, init image --------------------------------------------------------------

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = dropped_paths(event)
        if paths:
            self.drop_paths(paths)
        elif event.mimeData().hasImage():
            self.use_image_data(QImage(event.mimeData().imageData()))
        event.acceptProposedAction()

    def drop_paths(self, paths: list[Path]) -> None:
        """What a drop (or a pasted file) does: a model opens, an image becomes the init image."""
        path = paths[0]
        if models.is_model_path(path):
            self.open_model(str(path))
        else:
            self.spawn(self.set_init_image(path))

    async def set_init_image(self, path: Path, offer: bool = True) -> None:
        """Make `path` the init image; if it carries generation settings, offer to restore them."""
        try:
            thumb, size, parameters = await asyncio.to_thread(read_init_image, path)
        except LatentDeskError as e:
            self.message_bar.show_message(str(e), "error")
            return
        self.panel.init_well.set_image(path, thumb)
        native = self.model.model.family.default_size if self.model else 512
        width, height = size_for(size, native)
        self.panel.width.setValue(width)
        self.panel.height.setValue(height)
        self.initImageChanged.emit(path)
        if offer and parameters:
            self.offer_restore(path, parameters)

    def offer_restore(self, path: Path, parameters: str) -> None:
        request, warnings = request_from_infotext(parameters, self.build_request(0))
        if request == self.build_request(0):
            return
        prompt = request.prompt if len(request.prompt) <= 60 else request.prompt[:57] + "…"

        def restore() -> None:
            changed = warnings + self.panel.apply_request(request)
            if changed:
                self.message_bar.show_message(" ".join(changed), "warning")

        self.message_bar.show_message(
            f"{path.name} was made with “{prompt}”, {request.steps} steps, seed {request.seed}. "
            "Restore its settings?", "info", [("Restore", restore)])

    def choose_init_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Start from an image", "",
                                              "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff *.gif)")
        if path:
            self.spawn(self.set_init_image(Path(path)))

    def paste(self) -> None:
        mime = QApplication.clipboard().mimeData()
        if mime is not None and mime.hasUrls() and any(u.isLocalFile() for u in mime.urls()):
            self.drop_paths([Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()])
        elif mime is not None and mime.hasImage():
            self.use_image_data(QImage(mime.imageData()))
        else:
            self.statusBar().showMessage("The clipboard holds no image", 4000)

    def use_image_data(self, image: QImage) -> None:
        """A pasted or dragged-in picture: written to a PNG in the data folder, so the request can
        name it like any other file."""
        if image.isNull():
            self.message_bar.show_message("The pasted data is not an image Latent Desk can read.", "error")
            return
        self.spawn(self._save_pasted(image.copy()))

    async def _save_pasted(self, image: QImage) -> None:
        path = await asyncio.to_thread(write_pasted, image, self.paths.pasted_dir, next(self._job_ids))
        if path is None:
            self.message_bar.show_message(f"Could not write the pasted image to {self.paths.pasted_dir}.", "error")
            return
        await self.set_init_image(path, offer=False)

    # -- settings and closing ------------------------------------------------------------------

    def _restore_window(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        splitter = self.settings.value("window/splitter")
        if isinstance(splitter, QByteArray) and not splitter.isEmpty():
            self.splitter.restoreState(splitter)

    def _ask_close(self, unsaved: int, running: bool) -> str:
        """"save", "discard" or "cancel": what to do with unsaved images (and a run) on closing."""
        lost = [f"{unsaved} image{'s are' if unsaved > 1 else ' is'} not saved"] if unsaved else []
        lost += ["an image is being made"] if running else []
        box = QMessageBox(QMessageBox.Icon.Warning, "Quit Latent Desk", f"{' and '.join(lost).capitalize()}.", parent=self)
        save = box.addButton("Save and quit" if unsaved else "Quit", QMessageBox.ButtonRole.AcceptRole)
        discard = box.addButton("Quit without saving", QMessageBox.ButtonRole.DestructiveRole) if unsaved else None
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        clicked = box.clickedButton()
        return "save" if clicked is save else "discard" if clicked is discard else "cancel"

    def _save_all_now(self, items) -> bool:
        """Save `items` before quitting; False (and a message) when one could not be written."""
        for item in items:
            unsaved = item.data(UNSAVED_ROLE)
            try:
                self.history.mark_saved(item, save_png(unsaved.image, self.paths.output_dir, unsaved.infotext))
            except LatentDeskError as e:
                self.message_bar.show_message(f"{e} Quitting was cancelled so the image is not lost.", "error")
                return False
        return True

    def save_settings(self) -> None:
        self.panel.save(self.settings)
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/splitter", self.splitter.saveState())
        self.settings.sync()

    def closeEvent(self, event) -> None:
        unsaved = self.history.unsaved_items(live=False)
        running = self.job is not None and self.job.save     # a Live run in flight is no one's work yet
        if unsaved or running:
            answer = self.confirm_close(len(unsaved), running)
            if answer == "cancel" or (answer == "save" and not self._save_all_now(unsaved)):
                event.ignore()
                return
        self.save_settings()
        self.hide()     # a step or a VAE decode may take seconds to end: the window goes now, not then
        self.worker.shutdown()          # cancels a run in flight and waits for the thread to end
        for task in list(self._tasks):
            task.cancel()
        super().closeEvent(event)
        self.closed.emit()


