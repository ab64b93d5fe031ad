"""Live mode: the picture follows the form. Each edit (prompt, negative prompt, a slider, steps,
sampler, size, seed, strength) restarts a short timer; when the user pauses, the session generates,
and a run still in flight is cancelled by it (newest wins, as with the Generate button).

On by default for models that generate in about a second (the built-in one); the user's own
choice, once made, is remembered.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer

DEBOUNCE_MS = 400     # long enough not to fire between keystrokes, short enough to feel immediate


class LiveMode(QObject):
    def __init__(self, generate: Callable[[], None], ready: Callable[[], bool], parent=None,
                 delay_ms: int = DEBOUNCE_MS):
        super().__init__(parent)
        self._generate, self._ready = generate, ready
        self.enabled = False
        self.timer = QTimer(self, singleShot=True, interval=delay_ms)
        self.timer.timeout.connect(self._fire)

    def set_enabled(self, on: bool) -> None:
        self.enabled = on
        if not on:
            self.timer.stop()

    def edited(self, *_) -> None:
        """Any edit: (re)start the countdown."""
        if self.enabled:
            self.timer.start()

    def _fire(self) -> None:
        if self.enabled and self._ready():
            self._generate()
