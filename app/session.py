"""The session: everything the window shows, owned in one place, and what the user's actions do to
it (krita-ai-diffusion's `model.py` plays this part there).

    the model       `current_model` (app/current_model.py): the one generated with, and loading another
    more models     `downloads` (app/downloads.py) from the catalogue; `model_folders` (app/model_folders.py),
                    the user's own folders of models, scanned in the background, and the LoRAs and
                    embeddings found there and in the models folder (its `addons`, handed to every job)
    the form        `form`: the GenerationRequest the controls hold, pushed in on every change
    the run         generate / cancel / Live runs; the worker's previews and final messages
    the images      `image_history` (app/history.py): saved and unsaved images; the output folder
    the init image  dropped, pasted or chosen pictures, and the settings a PNG carries
    inpainting      `inpaint` (the settings) and `mask` (the painted mask, 8-bit grey), pushed in by the
                    inpaint panel and the mask painter; a run's mask is written to a file its request names

The session never touches a widget: the widgets bind to it (`bind(session)`: the form pushed in,
the signals below shown), and the window wires what crosses them. It never calls the sampling loop either: it hands jobs to the
worker thread (app/worker.py) and reads its messages (app/jobs.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtGui import QImage

from app import models
from app.background_tasks import BackgroundTasks
from app.current_model import CurrentModel
from app.downloads import Downloads
from app.final_decode import FinalDecodes
from app.history import HistoryEntry, ImageHistory, list_outputs, read_thumbnails
from app.init_image_files import (
    InpaintChoice,
    inpainting_request,
    mask_is_empty,
    read_init_image,
    read_mask,
    size_for,
    write_mask,
    write_pasted,
)
from app.jobs import Finished, Job, PreviewMode, PreviewOptions, ReadyModel
from app.live import LiveMode
from app.model_folders import ModelFolders
from app.model_presets import preset_in_force, remember
from app.models import BUILTIN, spec_label
from app.seeds import SeedMode, seed_for_run
from app.settings import AppPaths, StoredSettings, absolute_path_or_empty, read
from app.worker import GenerationWorker
from core.errors import LatentDeskError
from core.metadata.infotext import request_from_infotext
from core.metadata.png_files import mask_beside, read_parameters, remove_stale_temporaries, save_png_and_mask
from core.request import GenerationRequest
from core.sampling.guidance_scale import GuidanceScale

DEFAULT_NATIVE_SIZE = 512       # the size an init image is fitted to while no model says otherwise


class Session(QObject):
    message = Signal(str, str)          # text, kind ("info" | "warning" | "error"), for the message bar
    status = Signal(str, int)           # text, milliseconds to show it (0: until the next one)
    modelReady = Signal(object, bool, bool)  # ReadyModel; fill the form with its family's defaults; Live on
    modelLoaded = Signal(str)           # the spec, once the form follows the new model
    noModelToRun = Signal()             # Generate without a model: the window says why there is none
    seedDrawn = Signal(object)          # int: a seed drawn for a run, for the seed box (past a C int)
    runStarted = Signal(object, bool)   # the GenerationRequest, and whether it replaced a run in flight
    previewShown = Signal(object)       # StepPreview of the current run
    jobDone = Signal(object)            # Finished | Stopped | Failed: the current run's final message
    historyLoaded = Signal(int)         # thumbnails read from the output folder
    outputDirChanged = Signal(object)   # Path
    initImageRead = Signal(object, object, int, int)   # Path, its thumbnail QImage, width and height to use
    initImageChanged = Signal(object)   # Path
    restoreOffered = Signal(object, object, list)      # Path, its GenerationRequest, warnings
    restoreRequested = Signal(object, list)            # a GenerationRequest for the form to show, warnings
    pictureRead = Signal(object, object)   # the init image's Path and whole QImage, for the mask painter; None, None
    maskRead = Signal(object)           # a mask (8-bit grey QImage, white = repaint) for the painter to take
    offer = Signal(str, str, list)      # text, kind, [(button, action)]: a message with choices
    inpaintChanged = Signal(object)     # InpaintChoice (the painter shows outpainting's grown canvas)
    presetChanged = Signal(object, str, object)        # the model's core.presets.Preset (None: standard), what
                                                       # said so, and its Family (None: change no setting)

    def __init__(self, paths: AppPaths, settings: QSettings, builtin: Path | None, stored: StoredSettings,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.settings = settings
        chosen = stored.get("output_dir", "", absolute_path_or_empty)   # the user's own choice wins
        self.paths = dataclasses.replace(paths, output_dir=Path(chosen)) if chosen else paths
        self.tasks = BackgroundTasks(self)
        self.current_model = CurrentModel(settings, self.paths.models_dir, builtin, self.tasks.spawn, self)
        self.downloads = Downloads(self.paths.models_dir, parent=self)
        self.model_folders = ModelFolders(settings, self, self.paths.models_dir)
        self.worker = GenerationWorker(self)
        self.image_history = ImageHistory(self)
        self.live = LiveMode(lambda: self.generate(live=True), self._can_run_live, self)
        self.form = GenerationRequest()
        self.preset = None          # the loaded model's few-step preset (core/presets.py), None for a standard one
        self.seed_mode = SeedMode.RANDOM
        self.last_seed: int | None = None
        self.preview_options = PreviewOptions()
        self.word_maps = False                      # each run also sums where each word was attended (Job.word_maps)
        self.job: Job | None = None                 # the newest job handed to the worker
        self.shown_steps: list[int] = []            # steps of `job` whose preview was shown
        self.last_message = None                    # the last run's final message
        self.last_result: Path | None = None        # the file of the image shown last ("Use as init image")
        self.inpaint = InpaintChoice()
        self.mask: QImage | None = None             # the painted mask, at the init image's size
        self.picture: tuple[Path, tuple[int, int]] | None = None   # the init image read last, and its size
        self._serials = itertools.count(1)          # job ids, and pasted files' names
        self.final_decodes = FinalDecodes(self, self._serials)    # "Final" for a draft in the history strip
        self._form_restored = False

        self.tasks.failed.connect(lambda text: self.message.emit(text, "error"))
        self.current_model.loaded.connect(self._model_loaded)
        self.current_model.released.connect(self._model_released)
        self.worker.preview_ready.connect(self._take_preview)
        self.worker.message.connect(self._on_message)
        self.image_history.viewChanged.connect(self._viewing)
        self.downloads.finished.connect(lambda *_: self.current_model.refresh())   # in the picker at once
        self.model_folders.found.connect(self.current_model.add_shared)
        self.model_folders.scan_finished.connect(self.current_model.set_shared)    # a removed folder's go

    def start(self, form_restored: bool) -> None:
        """Read the history, open the start model, start the worker thread. Last in the window's
        constructor: a constructor that raised with the thread running would abort the process."""
        self._form_restored = form_restored
        self.tasks.spawn(self.load_history())
        self.tasks.spawn(self.current_model.open_at_start())
        self.model_folders.scan()
        self.worker.start()

    def shutdown(self) -> None:
        """Cancel what runs and end the worker thread (a QThread destroyed while running aborts)."""
        self.worker.shutdown()
        self.tasks.cancel_all()
        self.model_folders.stop()
        self.downloads.shutdown()       # their partial files stay: the next start resumes them

    # -- the model -----------------------------------------------------------------------------

    @property
    def model(self) -> ReadyModel | None:
        return self.current_model.ready

    @property
    def loading(self) -> str | None:
        return self.current_model.loading

    @property
    def load_failure(self) -> tuple[str, str] | None:
        return self.current_model.failure

    def open_model(self, spec: str) -> None:
        self.current_model.open(spec)

    def change_precision(self, precision: str) -> None:
        """bf16 switched on or off: the model is loaded again with its networks in that format."""
        self.current_model.precision = precision
        self.current_model.reload()

    def _model_loaded(self, ready: ReadyModel, previous: ReadyModel | None) -> None:
        family = ready.diffusion.family
        first_without_form = previous is None and not self._form_restored
        apply_defaults = first_without_form or (previous is not None and previous.diffusion.family != family)
        # A few-step model (Turbo, Lightning, LCM) is ruined by a regular model's settings, and a regular one
        # by its: the type's settings go in whenever either side of a switch has one (app/model_presets.py).
        preset, source = preset_in_force(self.settings, ready.spec, None if ready.spec == BUILTIN else Path(ready.spec))
        switched_kind = preset is not None or (previous is not None and self.preset is not None)
        self.preset = preset
        # Live is on by default where it is instant (the built-in model, 1-4-step models); once the user has
        # chosen, the choice wins.
        live_on = read(self.settings, "form/live", ready.spec == BUILTIN or bool(preset and preset.live))
        self.modelReady.emit(ready, apply_defaults and not switched_kind, live_on)
        self.presetChanged.emit(preset, source, family if switched_kind else None)
        self.live.timer.stop()      # the model's defaults just filled the form: that is no edit to react to
        self.modelLoaded.emit(ready.spec)

    def choose_model_type(self, kind: str) -> None:
        """The user says what the loaded model is ("This is a Turbo model"): kept for it, its settings applied."""
        if self.model is None:
            return
        remember(self.settings, self.model.spec, kind)
        path = None if self.model.spec == BUILTIN else Path(self.model.spec)
        self.preset, source = preset_in_force(self.settings, self.model.spec, path)
        self.presetChanged.emit(self.preset, source, self.model.diffusion.family)

    def _model_released(self, name: str, spec: str) -> None:
        self.worker.cancel()
        self.message.emit(f"{name} was closed to make room for {spec_label(spec)}: both do not fit in memory "
                          "at once.", "info")

    # -- the form ------------------------------------------------------------------------------

    def set_form(self, request: GenerationRequest, seed_mode: SeedMode) -> None:
        """What the controls hold now (its seed is the box's number; the model is filled in here)."""
        self.form, self.seed_mode = request, seed_mode
        if request.init_image is None and self.picture is not None:      # the well was cleared
            self.picture = None
            self.pictureRead.emit(None, None)

    def set_inpaint(self, choice: InpaintChoice) -> None:
        self.inpaint = choice
        self.inpaintChanged.emit(choice)

    def set_mask(self, mask: QImage | None) -> None:
        """The painted mask, as the painter holds it after each edit (8-bit grey, the init image's size)."""
        self.mask = mask

    def request_for(self, seed: int) -> GenerationRequest:
        """The form's request (with the inpainting settings, but no mask file yet: generate() writes it)."""
        request = dataclasses.replace(self.form, seed=seed, model=self.model.spec if self.model else BUILTIN)
        size = self.picture[1] if self.picture and str(self.picture[0]) == request.init_image else None
        return inpainting_request(request, self.inpaint, size)

    def set_preview_choice(self, mode: PreviewMode, noisy: bool) -> None:
        self.preview_options.set(mode, noisy)       # read by the worker at every step

    def set_word_maps(self, on: bool) -> None:
        self.word_maps = on         # from the next run on

    def _viewing(self, entry: HistoryEntry | None, image: QImage | None) -> None:
        if image is not None:       # a picture of the history on the main view: "Use as init image" takes its file
            self.last_result = entry.path

    def set_guidance(self, value: float) -> None:
        if self.job is not None:
            self.job.guidance.value = value      # read by the sampler from its next step on

    # -- runs ----------------------------------------------------------------------------------

    def generate(self, live: bool = False) -> None:
        """Start a run. One at a time: a run in flight is cancelled and this one starts next."""
        if self.model is None:
            self.noModelToRun.emit()
            return
        seed, drawn = seed_for_run(self.seed_mode, self.form.seed, self.last_seed, live)
        if drawn:
            self.seedDrawn.emit(seed)
        request = self.request_for(seed)
        if self.inpaint.enabled and request.is_img2img and (request := self._with_mask(request)) is None:
            return
        job = Job(next(self._serials), request, self.model, self.paths.output_dir,
                  GuidanceScale(request.guidance), self.preview_options, save=not live,
                  addons=self.model_folders.addons, word_maps=self.word_maps)
        replacing = self.job is not None
        self.job, self.shown_steps, self.last_seed = job, [], seed
        self.worker.submit(job)
        self.runStarted.emit(request, replacing)

    def _with_mask(self, request: GenerationRequest) -> GenerationRequest | None:
        """`request` naming a file with the painted mask (each run its own: the painter may change the mask
        while the run reads it); None, and a message, when there is none to give. An empty mask goes too:
        the engine says what is wrong with it. Outpainting needs no painted mask: the new area is one."""
        if self.mask is None or (request.outpaint is not None and mask_is_empty(self.mask)):
            if request.outpaint is not None:
                return request
            self.message.emit("There is no mask yet: paint over what to repaint (Paint mask).", "warning")
            return None
        folder = self.paths.data_dir / "masks"
        if (path := write_mask(self.mask, folder, next(self._serials))) is None:
            self.message.emit(f"Could not write the mask to {folder}.", "error")
            return None
        return dataclasses.replace(request, mask=str(path))

    def cancel(self) -> None:
        if self.job is not None:
            self.worker.cancel()
            self.status.emit("Cancelling…", 0)

    def _can_run_live(self) -> bool:
        return self.model is not None and bool(self.form.prompt)

    def _take_preview(self) -> None:
        preview = self.worker.mailbox.take()
        if preview is None or self.job is None or preview.job != self.job.id:
            return
        self.shown_steps.append(preview.i)
        self.previewShown.emit(preview)

    def _on_message(self, message) -> None:
        if self.final_decodes.take(message):
            return
        entries = []
        if isinstance(message, Finished):
            entries = self.image_history.add_results(message)
            # "Use as init image" on the shown result: this run's file, never an older run's
            self.last_result = message.paths[0] if message.paths else None
            # the history holds the latents and word maps, bounded; not the last message
            message = message._replace(drafts=(), attention=())
        if self.job is None or message.job != self.job.id:
            return          # a run replaced by a newer Generate; its images (if any) are in the history
        if isinstance(message, Finished):       # its first image is on view (the run view shows it on jobDone)
            self.image_history.view(self.image_history.first_image_entry(message, entries))
        if isinstance(message, Finished) and message.notes:
            self.message.emit(" ".join(message.notes), "info")       # e.g. a mask scaled to the picture
        self.last_message, self.job = message, None
        self.jobDone.emit(message)

    # -- images: saving, the history, the output folder ----------------------------------------

    def save_unsaved(self, entry: HistoryEntry) -> None:
        self.tasks.spawn(self._save_unsaved(entry))

    async def _save_unsaved(self, entry: HistoryEntry) -> bool:
        unsaved = entry.unsaved
        if unsaved is None:
            return True
        try:
            path = await asyncio.to_thread(save_png_and_mask, unsaved.image, self.paths.output_dir, unsaved.infotext,
                                           unsaved.mask)
        except LatentDeskError as e:
            self.message.emit(f"{e} The image stays in the history strip.", "error")
            return False
        if entry in self.image_history:
            self.image_history.mark_saved(entry, path)
        self.last_result = path
        self.status.emit(f"Saved {path.name}", 6000)
        return True

    def save_all_now(self, entries: list[HistoryEntry]) -> bool:
        """Save `entries` before quitting (blocking); False (and a message) when one could not be written."""
        for entry in entries:
            try:
                unsaved = entry.unsaved
                path = save_png_and_mask(unsaved.image, self.paths.output_dir, unsaved.infotext, unsaved.mask)
            except LatentDeskError as e:
                self.message.emit(f"{e} Quitting was cancelled so the image is not lost.", "error")
                return False
            self.image_history.mark_saved(entry, path)
        return True

    def set_output_dir(self, folder: Path) -> None:
        """Save from the next run on into `folder` (remembered); the history shows that folder."""
        self.paths = dataclasses.replace(self.paths, output_dir=folder)
        self.settings.setValue("output_dir", str(folder))
        self.outputDirChanged.emit(folder)
        self.image_history.remove_saved()     # the old folder's pictures go; unsaved images stay
        self.tasks.spawn(self.load_history())

    async def load_history(self) -> None:
        await asyncio.to_thread(remove_stale_temporaries, self.paths.output_dir)    # a crash's half-written saves
        paths = await asyncio.to_thread(list_outputs, self.paths.output_dir)
        thumbs = await asyncio.to_thread(read_thumbnails, paths)
        known = set(self.image_history.paths())
        for thumb in thumbs:
            if thumb.path not in known:
                self.image_history.add_saved(thumb, newest=False)
        self.historyLoaded.emit(len(thumbs))

    # -- the init image and restoring settings -------------------------------------------------

    def drop_paths(self, paths: list[Path]) -> None:
        """What a drop (or a pasted file) does: a model opens, an image becomes the init image."""
        path = paths[0]
        if models.is_model_path(path):
            self.open_model(str(path))
        else:
            self.open_init_image(path)

    def open_init_image(self, path: Path, offer: bool = True) -> None:
        """`set_init_image` in the background. `offer` False for one of our own images: its settings
        are the ones just used."""
        self.tasks.spawn(self.set_init_image(path, offer))

    async def set_init_image(self, path: Path, offer: bool = True) -> None:
        """Make `path` the init image; if it carries generation settings, offer to restore them."""
        try:
            read = await asyncio.to_thread(read_init_image, path)
        except LatentDeskError as e:
            self.message.emit(str(e), "error")
            return
        native = self.model.diffusion.family.default_size if self.model else DEFAULT_NATIVE_SIZE
        width, height = size_for(read.size, native)
        self.picture = (path, read.size)
        self.initImageRead.emit(path, read.thumb, width, height)
        self.initImageChanged.emit(path)
        self.pictureRead.emit(path, read.picture)       # the painter: a blank mask at the picture's size
        if read.mask is not None:                       # an inpainted image of ours: the mask it was made with
            self.maskRead.emit(read.mask)
            self.status.emit(f"The mask of {path.name} is back in the mask painter.", 6000)
        elif read.transparent:
            self.offer.emit(f"{path.name} has transparent parts. Repaint them?", "info",
                            [("Use as mask", lambda: self.use_as_mask(path))])
        if offer and read.parameters:
            self._offer_restore(path, read.parameters)

    def use_as_mask(self, path: Path) -> None:
        """A picture's transparent parts (or, without any, its white) as the mask to repaint."""
        self.tasks.spawn(self._read_mask(path))

    async def _read_mask(self, path: Path) -> None:
        try:
            mask = await asyncio.to_thread(read_mask, path)
        except LatentDeskError as e:
            self.message.emit(str(e), "error")
            return
        self.maskRead.emit(mask)

    def _offer_restore(self, path: Path, parameters: str) -> None:
        request, warnings = request_from_infotext(parameters, self.request_for(0))
        if request != self.request_for(0):
            self.restoreOffered.emit(path, request, warnings)

    def reuse_parameters(self, path: Path) -> None:
        try:
            text = read_parameters(path)
        except LatentDeskError as e:
            self.message.emit(str(e), "error")
            return
        request, warnings = request_from_infotext(text, self.request_for(0))
        if text is not None and "Steps:" in text:
            self.restoreRequested.emit(request, warnings)
            if (mask := mask_beside(path)) is not None:
                self.use_as_mask(mask)
        elif warnings:
            self.message.emit(" ".join(warnings), "warning")

    def use_image_data(self, image: QImage) -> None:
        """A pasted or dragged-in picture: written to a PNG in the data folder, so the request can
        name it like any other file."""
        if image.isNull():
            self.message.emit("The pasted data is not an image Latent Desk can read.", "error")
            return
        self.tasks.spawn(self._save_pasted(image.copy()))

    async def _save_pasted(self, image: QImage) -> None:
        path = await asyncio.to_thread(write_pasted, image, self.paths.pasted_dir, next(self._serials))
        if path is None:
            self.message.emit(f"Could not write the pasted image to {self.paths.pasted_dir}.", "error")
            return
        await self.set_init_image(path, offer=False)
