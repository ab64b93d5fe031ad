"""Folders of models the user already has (A1111 or ComfyUI roots, or plain folders), shared with
Latent Desk in place: nothing is copied, and they are remembered in the settings.

Scanning them may mean tens of thousands of files on a slow disk, so it runs in a thread of its own
(core.fetch.folders.scan is lazy) and the checkpoints it finds reach the GUI thread in batches (a few
a second, 500 at most each): the window never waits for a disk. LATENTDESK_MODEL_DIRS's folders are scanned too.
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
from core.fetch.folders import ENV_VAR, env_model_folders, folders_under, scan

log = logging.getLogger(__name__)

KEY = "models/folders"          # the user's folders, one a line
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

    _batch = Signal(int, list)   # from the scan thread: its serial, a batch
    _done = Signal(int, int)     # its serial, the count

    def __init__(self, settings: QSettings, parent: QObject | None = None):
        super().__init__(parent)
        self.settings = settings
        self.scanning = False
        self._found: list[str] = []      # what the running scan has sent so far
        self._serial = 0
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch.connect(self._on_batch)
        self._done.connect(self._on_done)

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
        """Look for checkpoints in every root again, in the background; a scan still running stops."""
        self.stop()
        self._serial += 1
        self._cancel = threading.Event()
        self._found = []
        if not self.any_set():
            self.scan_finished.emit([])
            return
        self.scanning = True
        self._thread = threading.Thread(target=self._scan, args=(self._serial, self.folders(), self._cancel),
                                        name="model folders scan", daemon=True)
        self._thread.start()

    def stop(self, wait_s: float = 0.0) -> None:
        self._cancel.set()
        if self._thread is not None and wait_s:
            self._thread.join(wait_s)

    def _scan(self, serial: int, roots: list[Path], cancel: threading.Event) -> None:
        """The thread: `roots` (the user's folders) and LATENTDESK_MODEL_DIRS's, A1111 and ComfyUI
        installs among them read as such (finding those stats a few folders: done here, too)."""
        count, batch, sent = 0, [], time.monotonic()
        try:
            folders = [folder for root in roots for folder in folders_under(root)] + env_model_folders()
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
            log.exception("scanning the model folders %s failed", roots)
        finally:
            if not cancel.is_set():
                if batch:
                    self._send(self._batch, serial, batch)
                self._send(self._done, serial, count)

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
