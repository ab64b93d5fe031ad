"""Qt's Python binding must not leak references to Python's singletons.

PySide6 6.12.0 took one reference from True (or None) on every signal emit and never gave it back:
the soak (scripts/soak_live.py) aborted the app after 508 Live runs with "Fatal Python error:
bool_dealloc / none_dealloc". pyproject.toml excludes that release; this test keeps a future pin
from bringing such a bug back, on the signal shapes the window uses."""

from __future__ import annotations

import gc
import sys

import pytest
from PySide6.QtCore import QObject, Signal

EMITS = 200


class Emitter(QObject):
    plain = Signal()
    value = Signal(object)
    text = Signal(str, str)
    number = Signal(int)

    def on_value(self, value) -> None:
        self.last = value


@pytest.mark.parametrize("connected", [False, True])
def test_signal_emits_leave_the_singletons_refcounts_alone(qapp, connected):
    emitter = Emitter()
    if connected:
        emitter.plain.connect(lambda: None)
        emitter.value.connect(emitter.on_value)
        emitter.text.connect(lambda text, kind: None)
        emitter.number.connect(lambda n: None)
    emits = [emitter.plain.emit, lambda: emitter.value.emit((1, None)), lambda: emitter.text.emit("a", "b"),
             lambda: emitter.number.emit(3)]
    gc.collect()
    before = {name: sys.getrefcount(obj) for name, obj in (("None", None), ("True", True), ("False", False))}
    for emit in emits:
        for _ in range(EMITS):
            emit()
    gc.collect()
    after = {name: sys.getrefcount(obj) for name, obj in (("None", None), ("True", True), ("False", False))}
    # a few references may come and go with the interpreter's own work; a leak is one per emit
    assert all(abs(after[name] - before[name]) < EMITS // 4 for name in before), (before, after)
