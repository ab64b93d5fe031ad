"""Folders of models the user already has (A1111 or ComfyUI roots, or plain folders), shared with
Latent Desk in place: nothing is copied, and they are remembered in the settings.

Scanning them may mean tens of thousands of files on a slow disk, so it runs in a thread of its own
(core.fetch.folders.scan is lazy) and the checkpoints it finds reach the GUI thread in batches (a few
a second, 500 at most each): the window never waits for a disk. LATENTDESK_MODEL_DIRS's folders are scanned too.

The same thread then finds the add-ons (core/fetch/addons.py): the LoRAs and embeddings in the
models folder's loras/ and embeddings/, in LATENTDESK_MODEL_DIRS's, and in the A1111/ComfyUI folders of
those kinds. They arrive in one piece (`addons_found`, names for the LoRA panel; `addons`, the AddOns
a job hands to generate): a LoRA list is short next to a checkpoint scan, and the panel sorts it whole.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Signal

from app.models import is_preview_decoder_file
from app.settings import read
from core.fetch.addons import AddOns, addon_folders, find_addons
from core.fetch.folders import ENV_VAR, ModelFolder, env_model_folders, folders_under, scan

log = logging.getLogger(__name__)

KEY = "models/folders"          # the user's folders, one a line
ADDON_KINDS = ("lora", "embedding")
BATCH_INTERVAL_S = 0.25         # how often found models reach the picker while a scan runs ...
BATCH_MOST = 500                # ... and the most at once: adding 500 to the list takes a few milliseconds


def usable_folder(text: str) -> bool:
    """A folder the user chose (absolute, from a dialog); anything else in the settings was damaged
    or hand-edited, and a relative path would mean wherever the app happened to start."""
    return bool(text) and "\0" not in text and Path(text).is_absolute()


class ModelFolders(QObject):
    found = Signal(list)         # checkpoints' paths as text, a batch of the running scan
    scan_finished = Signal(list)  # every checkpoint the scan found (a folder removed: fewer than before)
    folders_changed = Signal()   # a folder added or removed
    addons_found = Signal(list, list)   # the LoRAs' and the embeddings' names, once a scan has found them all

    _batch = Signal(int, list)   # from the scan thread: its serial, a batch
    _done = Signal(int, int)     # its serial, the count
    _addons = Signal(int, object)   # its serial, the AddOns

    def __init__(self, settings: QSettings, parent: QObject | None = None, models_dir: Path | None = None):
        super().__init__(parent)
        self.settings = settings
        self.models_dir = models_dir     # its loras/ and embeddings/ are scanned for add-ons
        self.addons: AddOns | None = None    # the last scan's; None until one has ended
        self.scanning = False
        self._found: list[str] = []      # what the running scan has sent so far
        self._serial = 0
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch.connect(self._on_batch)
        self._done.connect(self._on_done)
        self._addons.connect(self._on_addons)

    # -- the folders ---------------------------------------------------------------------------

    def folders(self) -> list[Path]:
        """The folders the user added, in order; a stored line that is no usable path is dropped
        (and the setting written back without it)."""
        lines = [line for line in read(self.settings, KEY, "").split("\n") if line]
        usable = [line for line in lines if usable_folder(line)]
        if len(usable) != len(lines):
            log.warning("dropped unusable model folders from the settings: %r",
                        [line for line in lines if not usable_folder(line)])
            self._store(usable)
        return [Path(line) for line in dict.fromkeys(usable)]

    def any_set(self) -> bool:
        """Whether there is a folder to scan, without looking at the disk (a sleeping network drive
        would hold up the window): the user's folders, or LATENTDESK_MODEL_DIRS set."""
        return bool(self.folders()) or bool(os.environ.get(ENV_VAR, "").strip(os.pathsep + " "))

    def add(self, folder: Path) -> bool:
        """Remember `folder` and scan again; False when it was there already."""
        folders = self.folders()
        if folder in folders:
            return False
        self._store([*map(str, folders), str(folder)])
        self.scan()
        return True

    def remove(self, folder: Path) -> None:
        self._store([str(f) for f in self.folders() if f != folder])
        self.scan()

    def _store(self, lines: list[str]) -> None:
        if lines:
            self.settings.setValue(KEY, "\n".join(lines))
        else:
            self.settings.remove(KEY)
        self.folders_changed.emit()

    # -- scanning ------------------------------------------------------------------------------

    def scan(self) -> None:
        """Look for checkpoints in every root again, then for add-ons (in the models folder too), in the
        background; a scan still running stops."""
        self.stop()
        self._serial += 1
        self._cancel = threading.Event()
        self._found = []
        checkpoints = self.any_set()
        if not checkpoints:
            self.scan_finished.emit([])     # no checkpoints to wait for; the add-ons come from the thread
        self.scanning = checkpoints
        self._thread = threading.Thread(target=self._scan, args=(self._serial, self.folders(), checkpoints,
                                                                 self._cancel),
                                        name="model folders scan", daemon=True)
        self._thread.start()

    def stop(self, wait_s: float = 0.0) -> None:
        self._cancel.set()
        if self._thread is not None and wait_s:
            self._thread.join(wait_s)

    def _scan(self, serial: int, roots: list[Path], checkpoints: bool, cancel: threading.Event) -> None:
        """The thread: `roots` (the user's folders) and LATENTDESK_MODEL_DIRS's, A1111 and ComfyUI
        installs among them read as such (finding those stats a few folders: done here, too); their
        checkpoints when `checkpoints` (else there is no folder to scan for them), then the add-ons."""
        folders: list[ModelFolder] = []
        try:
            folders = [folder for root in roots for folder in folders_under(root)] + env_model_folders()
        except Exception:      # noqa: BLE001 - an unreadable folder must not end the app
            log.exception("finding the model folders under %s failed", roots)
        if checkpoints:
            self._scan_checkpoints(serial, [f for f in folders if f.kind == "checkpoint"], cancel)
        if not cancel.is_set():
            self._scan_addons(serial, [f for f in folders if f.kind in ADDON_KINDS], cancel)

    def _scan_checkpoints(self, serial: int, folders: list[ModelFolder], cancel: threading.Event) -> None:
        count, batch, sent = 0, [], time.monotonic()
        try:
            for model in scan(folders, cancel=cancel):
                if cancel.is_set():
                    return
                if model.kind != "checkpoint" or is_preview_decoder_file(model.path):
                    continue
                batch.append(str(model.path))
                count += 1
                # The first model shows at once; then a batch a few times a second, or of BATCH_MOST,
                # so the GUI thread never adds many at once nor wakes for every file.
                if count == 1 or len(batch) >= BATCH_MOST or time.monotonic() - sent >= BATCH_INTERVAL_S:
                    self._send(self._batch, serial, batch)
                    batch, sent = [], time.monotonic()
        except Exception:      # noqa: BLE001 - an unreadable folder must not end the app; what was found stays
            log.exception("scanning the model folders %s failed", folders)
        finally:
            if not cancel.is_set():
                if batch:
                    self._send(self._batch, serial, batch)
                self._send(self._done, serial, count)

    def _scan_addons(self, serial: int, shared: list[ModelFolder], cancel: threading.Event) -> None:
        try:
            addons = find_addons(addon_folders(self.models_dir, shared))
        except Exception:      # noqa: BLE001 - as above: no LoRAs listed is better than no window
            log.exception("looking for LoRAs and embeddings failed")
            addons = AddOns(loras={}, embeddings={})
        if not cancel.is_set():
            self._send(self._addons, serial, addons)

    @staticmethod
    def _send(signal, *args) -> None:
        try:
            signal.emit(*args)
        except RuntimeError:    # the window closed and took this object with it
            pass

    def _on_batch(self, serial: int, paths: list[str]) -> None:
        if serial == self._serial:
            self._found.extend(paths)
            self.found.emit(paths)

    def _on_done(self, serial: int, count: int) -> None:
        if serial == self._serial:
            self.scanning = False
            self.scan_finished.emit(self._found)

    def _on_addons(self, serial: int, addons: AddOns) -> None:
        if serial == self._serial:
            self.addons = addons
            self.addons_found.emit(list(addons.loras), list(addons.embeddings))
