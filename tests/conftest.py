"""Fixtures shared by the window's tests: a tiny random model, qasync's loop on pytest-qt's
QApplication, throwaway folders, and a window opened on them (see tests/test_app.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import qasync

from app.settings import AppPaths, open_settings
from app.window import MainWindow
from tests.tiny_models import write_single_file

# Read when pytest-qt creates the QApplication (the first test), not at import: no display needed.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_single_file("sd1", tmp_path_factory.mktemp("models") / "tiny.safetensors")


@pytest.fixture(scope="session")
def event_loop_on_qt(qapp):
    """qasync's loop on the QApplication pytest-qt made: the window's asyncio tasks advance
    whenever qtbot spins Qt's event loop, as they do under `app/main.py`. One for the whole session:
    a second loop made after the first was closed never ran the window's tasks (a model never loaded)."""
    loop = qasync.QEventLoop(qapp, already_running=True)
    asyncio.set_event_loop(loop)
    yield loop
    loop.stop()
    asyncio.events._set_running_loop(None)
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture
def folders(tmp_path) -> AppPaths:
    return AppPaths(tmp_path / "data", tmp_path / "out", tmp_path / "settings.ini")


@pytest.fixture
def open_window(qtbot, event_loop_on_qt, folders, tiny_model):
    """open_window(model=tiny, paths=folders, small=True) -> a shown MainWindow, model loaded."""

    def make(model: Path | None = tiny_model, paths: AppPaths = folders, small: bool = True) -> MainWindow:
        settings = open_settings(paths)
        if model is not None:
            settings.setValue("model", str(model))
        window = MainWindow(paths, settings, builtin=None)
        window.confirm_close = lambda unsaved, running: "discard"    # a modal question would block teardown
        qtbot.addWidget(window)
        window.show()
        if model is not None:
            qtbot.waitUntil(lambda: window.model is not None, timeout=60_000)
        if small:
            p = window.panel
            p.width.setValue(64)
            p.height.setValue(64)
            p.steps.setValue(6)
            p.sampler.setCurrentText("Euler")
            p.seed.set_seed(1234)
        return window

    return make
