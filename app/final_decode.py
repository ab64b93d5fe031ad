""""Final" for a draft: its kept latents drawn again through the model's VAE, nothing sampled again (issue 22).

A Draft run (GenerationRequest.decoder "taesd") draws its images with the model's tiny decoder, in a fraction of the
VAE's time; the history keeps each draft's final latents (app/history.py, the newest MAX_DRAFTS). "Final" in the
history strip's menu hands them to the worker thread as a `FinalJob` (a VAE decode takes seconds on a CPU, so never
on the GUI thread); its image joins the history and is saved like any run's, with the PNG a run with the VAE would
have written. The worker queues finals and never cancels them (app/worker.py); Generate's runs wait behind them.
"""

from __future__ import annotations

from PySide6.QtCore import QObject

from app.jobs import Failed, FinalJob, Finished
from app.models import spec_label


class FinalDecodes(QObject):
    """The session's Final decodes: started from the history strip, their messages taken before the run's."""

    def __init__(self, session, serials):
        super().__init__(session)
        self._session = session
        self._serials = serials          # the session's job ids: a Final's must never be taken for a run's
        self._waiting: set[int] = set()  # ids handed to the worker whose message has not come back
        history = session.image_history
        history.loaded_spec = lambda: session.model.spec if session.model is not None else None
        history.finalRequested.connect(self.start)

    def start(self, entry) -> None:
        """Decode the draft of history `entry` with the loaded model's VAE, or say why it cannot be."""
        session, draft = self._session, entry.draft
        if draft is None:
            session.message.emit("The latents of this image are not kept: only the newest draft images keep theirs. "
                                 "Generate it again without Draft for the full-quality image.", "warning")
            return
        model = session.model
        if model is None or model.spec != draft.model_spec:
            session.message.emit(f"This draft was made with {spec_label(draft.model_spec)}, which is no longer "
                                 "loaded: open it again to decode the draft with its VAE.", "warning")
            return
        job = FinalJob(next(self._serials), draft, model, session.paths.output_dir)
        self._waiting.add(job.id)
        session.worker.submit_final(job)
        session.status.emit("Decoding the draft with the VAE…", 0)

    def take(self, message) -> bool:
        """True when `message` answers a Final decode (and is dealt with here): it is no run's."""
        if message.job not in self._waiting:
            return False
        self._waiting.discard(message.job)
        session = self._session
        if isinstance(message, Finished):
            session.image_history.add_results(message)
            if message.save_error:
                session.message.emit(f"{message.save_error.rstrip('.')}. The final image stays in the history strip, "
                                     "marked \"not saved\".", "error")
            else:
                session.status.emit(f"Final image saved as {message.paths[0].name}", 6000)
        elif isinstance(message, Failed):
            session.message.emit(message.message, "error")
        return True

    @property
    def running(self) -> bool:
        return bool(self._waiting)
