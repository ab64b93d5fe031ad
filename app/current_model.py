"""The model the session generates with, and opening another: which one opens at start, loading
off the GUI thread, a newer choice superseding a load in flight, closing the current model when
both would not fit in memory, and remembering what was opened.

Loading awaits worker threads on qasync's loop (app/main.py), so the window stays responsive; the
engine (torch) is first imported by that thread, never while the window opens.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Signal

from app import models
from app.jobs import ReadyModel
from app.models import BUILTIN, spec_label
from app.settings import HashCache, read
from core.errors import LatentDeskError

log = logging.getLogger(__name__)

MAX_RECENT = 8


class CurrentModel(QObject):
    loading_started = Signal(str)          # spec
    loaded = Signal(object, object)        # the ReadyModel, and the one it replaced (or None)
    released = Signal(str, str)            # the closed model's name, the spec that needed its room
    failed = Signal(str, str)              # spec, the message for the user
    none_available = Signal()              # nothing to open at start: no built-in model, no other
    choices_changed = Signal()             # the models to pick from changed: list them again
    shared_added = Signal(list)            # specs a running folder scan found (for the list to add)

    def __init__(self, settings: QSettings, models_dir: Path, builtin: Path | None, spawn,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.settings, self.models_dir, self.builtin = settings, models_dir, builtin
        self._spawn = spawn                  # runs a coroutine on the session's loop
        self.hashes = HashCache(settings)
        self.ready: ReadyModel | None = None
        self.loading: str | None = None      # the spec being loaded
        self.failure: tuple[str, str] | None = None     # (spec, message) of the last failed load
        self.precision = "auto"              # the networks' format for the next load (core/precision.py AUTO)
        self.shared: list[str] = []          # checkpoints found in the user's shared folders (app/model_folders.py)
        self._serial = 0
        self._cancel = threading.Event()

    @property
    def builtin_present(self) -> bool:
        return self.builtin is not None and models.quietly(Path.is_file, self.builtin)

    def choices(self) -> list[str]:
        """The models folder's models, those found in shared folders, then those opened before that
        still exist (duplicates kept: the picker drops them). The shared ones are not looked at
        again here: there may be thousands, and the scan has just seen them."""
        recent = [s for s in read(self.settings, "models/recent", "").split("\n")
                  if s and models.quietly(Path.exists, Path(s))]
        return [str(p) for p in models.scan_models(self.models_dir)] + self.shared + recent

    def set_shared(self, specs: list[str]) -> None:
        """A finished scan's finds: the list is filled again only when they differ from those added
        while it ran (a folder was removed): filling it with thousands of models takes a moment."""
        changed = set(specs) != set(self.shared)
        self.shared = list(specs)
        if changed:
            self.choices_changed.emit()

    def add_shared(self, specs: list[str]) -> None:
        """Found by a scan that still runs (one that started again finds the ones known already)."""
        known = set(self.shared)
        if new := [spec for spec in specs if spec not in known]:
            self.shared.extend(new)
            self.shared_added.emit(new)

    def refresh(self) -> None:
        """The models folder changed (a download finished): the picker lists it again."""
        self.choices_changed.emit()

    async def open_at_start(self) -> None:
        """The model used last, if it is still there; else the built-in one; else the first found."""
        last = read(self.settings, "model", "")
        if last and (last == BUILTIN and self.builtin_present
                     or last != BUILTIN and models.quietly(Path.exists, Path(last))):
            await self.load(last)
        elif self.builtin_present:
            await self.load(BUILTIN)
        elif specs := list(dict.fromkeys(self.choices())):
            await self.load(specs[0])
        else:
            self.none_available.emit()

    def open(self, spec: str) -> None:
        self._spawn(self.load(spec))

    def reload(self) -> None:
        """Load the current (or loading) model again, e.g. in another precision."""
        spec = self.loading or (self.ready.spec if self.ready else None)
        if spec is not None:
            self.open(spec)

    async def load(self, spec: str) -> None:
        path = self.builtin if spec == BUILTIN else Path(spec)
        self._serial += 1
        serial = self._serial
        self._cancel.set()             # a load still running for an older choice stops reading
        self._cancel = cancel = threading.Event()
        self.loading = spec
        self.loading_started.emit(spec)
        try:
            precision = await asyncio.to_thread(models.resolve_precision, path, self.precision)
            if self.ready is not None and path is not None and \
                    await asyncio.to_thread(models.needs_room, path, precision, self.ready):
                if serial != self._serial:
                    return
                self._release(spec)
            known = self.hashes.get(path) if path is not None else None
            loaded = await asyncio.to_thread(models.load, path, spec, known, precision, cancel, self.models_dir)
        except Exception as e:      # noqa: BLE001 - any failure must end in "failed, because …", never "Loading…"
            # ImportError, FileNotFoundError from a dependency's data: the engine itself first loads
            # here, so a broken install (or bundle) shows up as this model failing to open.
            log.error("could not open the model %s", spec, exc_info=e)
            if serial == self._serial:
                self._failed(spec, e)
            return
        if serial != self._serial:
            return          # the user picked another model meanwhile
        self.loading = None
        self.failure = None
        self.hashes.put(path, loaded.hash)
        previous, self.ready = self.ready, loaded
        self._remember(spec)
        self.loaded.emit(loaded, previous)

    def _release(self, spec: str) -> None:
        """Close the loaded model so that `spec` fits in memory: two would not (a run with it stops)."""
        name = self.ready.diffusion.name
        self.ready = None
        self.released.emit(name, spec)

    def _failed(self, spec: str, error: Exception) -> None:
        self.loading = None
        reason = str(error) if isinstance(error, LatentDeskError) else f"{type(error).__name__}: {error}"
        if isinstance(error, MemoryError):
            reason = "there is not enough memory to load it"
        message = f"Could not open the model {spec_label(spec)}: {reason}"
        self.failure = (spec, message)
        self.failed.emit(spec, message)

    def _remember(self, spec: str) -> None:
        self.settings.setValue("model", spec)
        if spec != BUILTIN:
            recent = [s for s in read(self.settings, "models/recent", "").split("\n") if s and s != spec]
            self.settings.setValue("models/recent", "\n".join([spec, *recent][:MAX_RECENT]))
