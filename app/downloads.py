"""Downloads of catalogue entries into the models folder, in the background (no widgets here: the
"Get models" dialog, app/widgets/get_models.py, shows what this reports).

Each download runs `core.fetch.download.fetch` in a thread of its own with its own cancel Event, so
several entries may download at once (concurrently: the user starts each one, and a long SDXL
download should not hold back a small TAESD file behind it). The thread's progress reaches the
GUI thread through this object's private signals, which Qt queues into the thread this object
lives in; the public signals are therefore always sent on the GUI thread.

A cancelled download keeps its partial file (fetch does), so starting it again resumes it.
core.fetch.download is imported in the thread: it may import torch, and the window opens without it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal

if TYPE_CHECKING:
    from core.fetch.catalogue import CatalogueEntry

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1       # fetch may report every chunk; the window needs ten updates a second at most
def _exists(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


class Downloads(QObject):
    progress = Signal(str, object)     # the entry's name, core.fetch.download.DownloadProgress
    finished = Signal(str, object)     # the entry's name, the downloaded file's Path
    failed = Signal(str, str)          # the entry's name, the message for the user (one line)
    cancelled = Signal(str)            # the entry's name; its partial file stays for a resume
    started = Signal(str)              # the entry's name

    # Sent from the download threads; connected to this object's own slots, so Qt queues them.
    _progressed = Signal(str, object)
    _ended = Signal(str, object, object)      # name, Path | None, Exception | None

    def __init__(self, models_dir: Path, endpoint: str | None = None, token: str | None = None,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.models_dir = models_dir
        self.endpoint, self.token = endpoint, token     # None: fetch's defaults (the Hub, HF_TOKEN)
        self.catalogue: list[CatalogueEntry] | None = None   # None: the shipped resources/catalogue.json
        self.last_progress: dict[str, object] = {}      # the latest DownloadProgress of each running one
        self.errors: dict[str, str] = {}                # the last failure of each entry, for a reopened dialog
        self._running: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._stopped: set[str] = set()                 # cancelled by the user this session: "Resume"
        self._progressed.connect(self._on_progress)
        self._ended.connect(self._on_ended)

    # -- what the dialog asks ------------------------------------------------------------------

    def entries(self) -> list[CatalogueEntry]:
        """The catalogue the dialog lists (raises LatentDeskError when the file is unusable)."""
        if self.catalogue is None:
            from core.fetch.catalogue import load_catalogue

            self.catalogue = load_catalogue()
        return self.catalogue

    def is_running(self, name: str) -> bool:
        return name in self._running

    def running(self) -> list[str]:
        return list(self._running)

    def installed(self, entry: CatalogueEntry) -> bool:
        return entry.name not in self._running and _exists(entry.path_in(self.models_dir))

    def resumable(self, entry: CatalogueEntry) -> bool:
        """Cancelled (or stopped by a failure) with part of the file kept: a start resumes it."""
        if entry.name in self._stopped:
            return True
        target = entry.path_in(self.models_dir)
        return _exists(target.with_name(f".{target.name}.part"))     # core.fetch.download's part file

    # -- actions -------------------------------------------------------------------------------

    def start(self, entry: CatalogueEntry) -> None:
        """Download `entry` in the background (nothing happens when it is running already)."""
        if entry.name in self._running:
            return
        cancel = threading.Event()
        self.errors.pop(entry.name, None)
        thread = threading.Thread(target=self._download, args=(entry, cancel), name=f"download {entry.name}",
                                  daemon=True)     # a download never holds the app open; its part file stays
        self._running[entry.name] = (thread, cancel)
        self.started.emit(entry.name)
        thread.start()

    def cancel(self, name: str) -> None:
        if name in self._running:
            self._running[name][1].set()

    def shutdown(self, wait_s: float = 2.0) -> None:
        """Stop every download (their partial files stay) and give the threads a moment to end."""
        for _, cancel in self._running.values():
            cancel.set()
        deadline = time.monotonic() + wait_s
        for name, (thread, _) in list(self._running.items()):
            thread.join(max(0.0, deadline - time.monotonic()))
            if not thread.is_alive():
                del self._running[name]     # ended: its queued "cancelled" may never be delivered now

    # -- the download thread -------------------------------------------------------------------

    def _download(self, entry: CatalogueEntry, cancel: threading.Event) -> None:
        name, last = entry.name, [0.0]

        def report(progress) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S or (progress.total and progress.done >= progress.total):
                last[0] = now
                self._send(self._progressed, name, progress)

        try:
            from core.fetch.download import fetch  # here, in the thread: it may import the engine

            folder = entry.folder_in(self.models_dir)
            folder.mkdir(parents=True, exist_ok=True)
            path = fetch(entry.repo, entry.file, folder, revision=entry.revision or "main",
                         save_as=entry.save_as or None, endpoint=self.endpoint, token=self.token,
                         cancel=cancel, on_progress=report)
        except Exception as error:      # noqa: BLE001 - every failure ends as "failed, because …" in the dialog
            self._send(self._ended, name, None, error)
        else:
            self._send(self._ended, name, Path(path), None)

    @staticmethod
    def _send(signal, *args) -> None:
        try:
            signal.emit(*args)
        except RuntimeError:    # the window closed and took this object with it; the part file stays
            pass

    # -- back on the GUI thread ----------------------------------------------------------------

    def _on_progress(self, name: str, progress) -> None:
        if name in self._running:
            self.last_progress[name] = progress
            self.progress.emit(name, progress)

    def _on_ended(self, name: str, path: Path | None, error: Exception | None) -> None:
        self._running.pop(name, None)
        self.last_progress.pop(name, None)
        if error is None:
            self._stopped.discard(name)
            self.finished.emit(name, path)
        elif getattr(error, "reason", None) == "cancelled":
            self._stopped.add(name)
            self.cancelled.emit(name)
        else:
            message = describe_error(error)
            log.warning("download of %s failed: %s", name, message, exc_info=error)
            self.errors[name] = message
            self.failed.emit(name, message)


def describe_error(error: Exception) -> str:
    """One line for the dialog: DownloadError's own message (written for the user), with what to do
    when a login is missing; anything else by its type, so a bug still reads as a failed download."""
    from core.errors import LatentDeskError

    text = " ".join(str(error).split()) if isinstance(error, LatentDeskError) else \
        f"{type(error).__name__}: {' '.join(str(error).split())}"
    if getattr(error, "reason", None) == "unauthorized" and "HF_TOKEN" not in text:
        text += (" Accept the model's licence on its Hugging Face page, then set HF_TOKEN to an access token"
                 " (huggingface.co/settings/tokens) and start Latent Desk again.")
    return text
