"""The guidance scale as one live value: the GUI's slider writes it, the sampler thread reads it.

Kept apart from core/sampling/guidance.py so that the window can hold one without importing torch
(the app shows its window before the engine has loaded).
"""

from __future__ import annotations

import math
import threading

from core.errors import LatentDeskError


class GuidanceScale:
    """A float the GUI thread sets and the sampler thread reads.

    The lock makes the hand-over explicit rather than relying on the GIL (free-threaded Python
    has none); reads and writes are whole floats either way.
    """

    def __init__(self, value: float):
        self._lock = threading.Lock()
        self._value = self._checked(value)

    @property
    def value(self) -> float:
        with self._lock:
            return self._value

    @value.setter
    def value(self, value: float) -> None:
        value = self._checked(value)
        with self._lock:
            self._value = value

    @staticmethod
    def _checked(value: float) -> float:
        if not math.isfinite(value):
            raise LatentDeskError(f"The guidance scale must be a number, not {value!r}.")
        return float(value)
