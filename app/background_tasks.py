"""The session's asyncio tasks on qasync's loop (app/main.py): blocking work that is not sampling
(loading a model, reading thumbnails, reading a dropped image, writing a pasted one) awaits worker
threads there, so the window stays responsive. An exception a task lets out is reported, not lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)


class BackgroundTasks(QObject):
    failed = Signal(str)        # what went wrong, for the user

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coroutine: Coroutine) -> asyncio.Task:
        """Run `coroutine` on the event loop."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("background task failed", exc_info=error)
            self.failed.emit(f"Something went wrong: {error}")
