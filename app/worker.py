"""The diffusion loop off the GUI thread: one job at a time, in one long-lived QThread.

    worker = GenerationWorker()
    worker.start()
    worker.message.connect(...)        # Finished | Stopped | Failed, one per job, never dropped
    worker.preview_ready.connect(...)  # a StepPreview waits in worker.mailbox
    worker.submit(job)                 # a job already running is cancelled; the new one runs next
    worker.cancel()
    worker.shutdown()                  # cancel, stop the thread and wait for it (before the app exits)

A new Generate while a job runs *cancels* the running job and starts the new one as soon as
the old one stops at its next step boundary: the user wants what they asked for last, and a
queue of stale requests would only delay it. Only the newest pending job is kept.

Previews go through a one-slot `Mailbox`: the worker replaces whatever frame the window has not
taken yet, so a slow window shows the newest frame and never works through a backlog.
"""

from __future__ import annotations

import logging
import threading

from PySide6.QtCore import QObject, QThread, Signal

from app.jobs import Failed, Job, Message, StepPreview, Stopped

log = logging.getLogger(__name__)


class Mailbox:
    """Holds the newest StepPreview the window has not shown yet."""

    def __init__(self):
        self._lock = threading.Lock()
        self._item: StepPreview | None = None
        self.dropped = 0          # frames replaced before the window took them

    def put(self, item: StepPreview) -> bool:
        """Store `item`; True when the box was empty, i.e. the window needs telling."""
        with self._lock:
            was_empty = self._item is None
            self.dropped += not was_empty
            self._item = item
            return was_empty

    def take(self) -> StepPreview | None:
        with self._lock:
            item, self._item = self._item, None
            return item


class _Runner(QThread):
    """The thread: waits for a job, runs it, reports, repeats until stopped."""

    def __init__(self, worker: GenerationWorker):
        super().__init__()
        self.setObjectName("generation")
        self._worker = worker
        self._cond = threading.Condition()
        self._pending: Job | None = None
        self._current: Job | None = None
        self._stopping = False

    def submit(self, job: Job) -> None:
        with self._cond:
            dropped, self._pending = self._pending, job
            if self._current is not None:
                self._current.cancel.set()
            self._cond.notify()
        self._never_started(dropped)

    def cancel(self) -> None:
        with self._cond:
            dropped, self._pending = self._pending, None
            if self._current is not None:
                self._current.cancel.set()
        self._never_started(dropped)

    def _never_started(self, job: Job | None) -> None:
        """Every job gets exactly one final message, even one replaced before it began."""
        if job is not None:
            self._worker.message.emit(Stopped(job.id, 0, ()))

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._pending = None
            if self._current is not None:
                self._current.cancel.set()
            self._cond.notify()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._current is not None or self._pending is not None

    def run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job, self._pending = self._pending, None
                self._current = job
            message = self._run(job)
            with self._cond:
                self._current = None
            self._worker.message.emit(message)

    def _run(self, job: Job) -> Message:
        """One job's final message, whatever happens: an exception that ended this thread would
        leave the window busy for good."""
        try:
            from app.generation import run_job  # the engine loads here, off the GUI thread, on first use
            return run_job(job, self._post_preview)
        except Exception as e:      # noqa: BLE001 - the one place nothing may pass
            log.exception("the generation worker failed")
            return Failed(job.id, f"Generation failed unexpectedly ({type(e).__name__}: {e}).")

    def _post_preview(self, preview: StepPreview) -> None:
        if self._worker.mailbox.put(preview):
            self._worker.preview_ready.emit()


class GenerationWorker(QObject):
    """The session's only handle on the engine's sampling loop."""

    message = Signal(object)      # Finished | Stopped | Failed
    preview_ready = Signal()      # take the newest StepPreview from `mailbox`

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.mailbox = Mailbox()
        self._runner = _Runner(self)

    def start(self) -> None:
        """Start the thread. The session does this last in the window's constructor: a constructor that
        raised with the thread running would destroy a running QThread, and Qt aborts the process."""
        self._runner.start()

    def submit(self, job: Job) -> None:
        self._runner.submit(job)

    def cancel(self) -> None:
        self._runner.cancel()

    @property
    def busy(self) -> bool:
        return self._runner.busy

    def shutdown(self) -> None:
        """Cancel what runs, end the thread and wait for it: a QThread destroyed while running aborts."""
        self._runner.stop()
        self._runner.quit()
        self._runner.wait()
