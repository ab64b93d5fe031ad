"""The diffusion loop off the GUI thread: one job at a time, in one long-lived QThread.

    worker = GenerationWorker()
    worker.start()
    worker.message.connect(...)        # Finished | Stopped | Failed, one per job, never dropped
    worker.preview_ready.connect(...)  # a StepPreview waits in worker.mailbox
    worker.submit(job)                 # a job already running is cancelled; the new one runs next
    worker.submit_final(final_job)     # a draft's "Final" decode: queued, never cancelled, ahead of Generate's job
    worker.cancel()
    worker.shutdown()                  # cancel, stop the thread and wait for it (before the app exits)

A new Generate while a job runs *cancels* the running job and starts the new one as soon as
the old one stops at its next step boundary: the user wants what they asked for last, and a
queue of stale requests would only delay it. Only the newest pending job is kept.

A "Final" decode (a kept draft through the VAE, app/final_decode.py) is a few seconds that cannot stop half way:
it is queued, not cancelled. A Generate while one runs waits for it; one asked for while a generation runs starts
when that ends. Queued finals go before the pending generation (they are short), and Cancel leaves them alone.

Previews go through a one-slot `Mailbox`: the worker replaces whatever frame the window has not
taken yet, so a slow window shows the newest frame and never works through a backlog.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from PySide6.QtCore import QObject, QThread, Signal

from app.jobs import Failed, FinalJob, Job, Message, StepPreview, Stopped

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
        self._finals: deque[FinalJob] = deque()
        self._current: Job | FinalJob | None = None
        self._stopping = False

    def submit(self, job: Job) -> None:
        with self._cond:
            dropped, self._pending = self._pending, job
            self._cancel_current()
            self._cond.notify()
        self._never_started(dropped)

    def submit_final(self, job: FinalJob) -> None:
        with self._cond:
            self._finals.append(job)
            self._cond.notify()

    def cancel(self) -> None:
        with self._cond:
            dropped, self._pending = self._pending, None
            self._cancel_current()
        self._never_started(dropped)

    def _cancel_current(self) -> None:
        """A generation stops at its next step; a Final decode runs to its end (seconds)."""
        if isinstance(self._current, Job):
            self._current.cancel.set()

    def _never_started(self, job: Job | None) -> None:
        """Every job gets exactly one final message, even one replaced before it began."""
        if job is not None:
            self._worker.message.emit(Stopped(job.id, 0, ()))

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._pending = None
            self._finals.clear()
            self._cancel_current()
            self._cond.notify()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._current is not None or self._pending is not None or bool(self._finals)

    def run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._finals and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                if self._finals:
                    job = self._finals.popleft()
                else:
                    job, self._pending = self._pending, None
                self._current = job
            message = self._run(job)
            with self._cond:
                self._current = None
            self._worker.message.emit(message)

    def _run(self, job: Job | FinalJob) -> Message:
        """One job's final message, whatever happens: an exception that ended this thread would
        leave the window busy for good."""
        try:
            # the engine loads here, off the GUI thread, on first use
            from app.generation import run_final, run_job
            if isinstance(job, FinalJob):
                return run_final(job)
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

    def submit_final(self, job: FinalJob) -> None:
        self._runner.submit_final(job)

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
