"""The window's "Get models" dialog, driven as a user drives it, against a stand-in Hub on 127.0.0.1
(tests/hub_server.py): progress moves, Cancel keeps the part and Resume asks only for the rest, the
finished model is in the picker at once and opens, a missing or gated file says so in one line while
the window goes on working, and a first start offers the dialog once, never twice.

The catalogue is the tests' own (a JSON file read by the real loader), pointing at the stand-in's
repos, and the tiny model's bytes are what it serves, so the downloaded file really opens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.settings import open_settings
from app.widgets.model_picker import GET_MODELS
from app.widgets.model_sources import OFFERED_KEY
from app.window import MainWindow
from core.fetch.catalogue import load_catalogue
from tests.hub_server import hub_server  # noqa: F401 - a fixture

SETTINGS = {"sampler": "Euler", "steps": 6, "guidance": 7, "width": 64, "height": 64}


def catalogue_entry(name: str, repo: str, file: str, size: int, **changes) -> dict:
    return {"name": name, "title": f"Test model {name}", "kind": "checkpoint", "family": "sd1", "repo": repo,
            "file": file, "revision": "main", "save_as": f"{name}.safetensors", "size_bytes": size,
            "licence": "Test licence", "licence_url": "https://example.com/licence", "about": "Good for tests.",
            "settings": SETTINGS, "source": "tests/test_get_models_window.py"} | changes


@pytest.fixture
def catalogue(tmp_path, hub_server, tiny_model):  # noqa: F811 - the fixture
    """Three entries: a real (tiny) model, one whose file the Hub lacks, and a gated one."""
    data = tiny_model.read_bytes()
    hub_server.add_file("test/tiny", "tiny.safetensors", data)
    hub_server.add_file("test/gated", "gated.safetensors", data, gated=True)
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps([catalogue_entry("tiny", "test/tiny", "tiny.safetensors", len(data)),
                                catalogue_entry("missing", "test/tiny", "not-there.safetensors", 1000),
                                catalogue_entry("gated", "test/gated", "gated.safetensors", len(data))]))
    return load_catalogue(path)


@pytest.fixture(autouse=True)
def no_login(monkeypatch):
    """The Hub login of whoever runs the tests must not reach the stand-in (a gated file must refuse)."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def with_catalogue(window: MainWindow, entries, hub) -> MainWindow:
    window.session.downloads.catalogue = entries
    window.session.downloads.endpoint = hub.url
    return window


def open_dialog_from_picker(window: MainWindow):
    picker = window.panel.model_picker
    picker.activated.emit(picker.findData(GET_MODELS))      # as a click on "Get models…" in the list
    dialog = window.model_sources.dialog
    assert dialog is not None and dialog.isVisible() and not dialog.isModal()
    return dialog


def test_progress_moves_cancel_keeps_the_part_resume_fetches_the_rest_and_the_model_opens(
        open_window, qtbot, hub_server, catalogue, folders, tiny_model):  # noqa: F811
    window = with_catalogue(open_window(), catalogue, hub_server)
    dialog = open_dialog_from_picker(window)
    row = dialog.row("tiny")
    assert "Test model tiny" in row.title.text() and "19 MB" in row.title.text()
    assert "https://example.com/licence" in row.licence.text() and row.licence.openExternalLinks()
    assert "Euler, 6 steps, guidance 7, 64×64" in row.toolTip()
    assert row.button.text() == "Download"

    hub_server.chunk_delay = 0.02          # ~6 s for the file: time to see it move and to cancel it
    row.button.click()
    qtbot.waitUntil(lambda: row.bar.isVisible() and row.bar.value() > 0, timeout=20_000)
    first = row.bar.value()
    qtbot.waitUntil(lambda: row.bar.value() > first, timeout=20_000)      # it moves
    assert " of " in row.detail.text() and "MB/s" in row.detail.text() and "left" in row.detail.text()
    assert row.cancel_button.isVisible() and not row.button.isVisible()

    with qtbot.waitSignal(window.session.downloads.cancelled, timeout=20_000):
        row.cancel_button.click()
    part = folders.models_dir / ".tiny.safetensors.part"
    kept = part.stat().st_size
    size = tiny_model.stat().st_size
    assert 0 < kept < size and not (folders.models_dir / "tiny.safetensors").exists()
    assert row.button.isVisible() and row.button.text() == "Resume"

    hub_server.chunk_delay = 0.0
    log_before = len(hub_server.log)
    with qtbot.waitSignal(window.session.downloads.finished, timeout=60_000) as done:
        row.button.click()
    path = done.args[1]
    assert path == folders.models_dir / "tiny.safetensors" and path.read_bytes() == tiny_model.read_bytes()
    resumed = [e for e in hub_server.log[log_before:] if e.method == "GET" and "/cdn/" in e.path]
    assert resumed and resumed[0].range_start == kept          # the finished bytes were not asked for again
    assert sum(e.sent for e in resumed) == size - kept
    assert row.button.text() == "Installed" and not row.button.isEnabled()

    # In the picker at once, and it opens.
    assert str(path) in window.panel.model_picker.specs()
    assert window.message_bar.button("Use it") is not None
    with qtbot.waitSignal(window.modelLoaded, timeout=60_000):
        window.message_bar.button("Use it").click()
    assert window.model.spec == str(path)
    dialog.close()


def test_a_missing_file_and_a_gated_one_say_why_in_the_dialog_and_the_window_keeps_working(
        open_window, qtbot, hub_server, catalogue, folders):  # noqa: F811
    window = with_catalogue(open_window(), catalogue, hub_server)
    dialog = window.model_sources.open_dialog()
    for name, words in (("missing", ("not-there.safetensors",)), ("gated", ("log in", "HF_TOKEN"))):
        row = dialog.row(name)
        with qtbot.waitSignal(window.session.downloads.failed, timeout=30_000) as failed:
            row.button.click()
        assert failed.args[0] == name
        message = row.error.text()
        assert row.error.isVisible() and "\n" not in message and all(w in message for w in words), message
        assert "Traceback" not in message and "hf_test_token" not in message
        assert row.button.isVisible() and row.button.isEnabled()
    assert not (folders.models_dir / "missing.safetensors").exists()

    # The window goes on: a run makes its image.
    with qtbot.waitSignal(window.jobDone, timeout=120_000) as done:
        window.panel.generate_button.click()
    assert type(done.args[0]).__name__ == "Finished"
    dialog.close()


def open_with_builtin(qtbot, paths, builtin: Path) -> MainWindow:
    """A window whose built-in model is the tiny one: the first start of a new user."""
    window = MainWindow(paths, open_settings(paths), builtin=builtin)
    window.confirm_close = lambda unsaved, running: "discard"
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.modelLoaded, timeout=60_000):
        window.show()
    return window


def test_a_first_start_offers_get_models_once_in_a_banner(qtbot, event_loop_on_qt, folders, tiny_model,
                                                           hub_server, catalogue):  # noqa: F811
    window = open_with_builtin(qtbot, folders, tiny_model)
    bar = window.message_bar
    qtbot.waitUntil(lambda: bar.button("Get models…") is not None, timeout=5_000)
    assert bar.kind == "info" and "built-in model is ready" in bar.text()
    with_catalogue(window, catalogue, hub_server)
    bar.button("Get models…").click()
    assert window.model_sources.dialog.isVisible()
    window.close()
    assert open_settings(folders).value(OFFERED_KEY) in (True, "true")

    again = open_with_builtin(qtbot, folders, tiny_model)
    qtbot.wait(300)
    assert again.message_bar.button("Get models…") is None and "built-in model is ready" not in again.message_bar.text()
    again.close()


def test_no_offer_when_the_models_folder_has_a_model(qtbot, event_loop_on_qt, folders, tiny_model):
    folders.models_dir.mkdir(parents=True)
    (folders.models_dir / "mine.safetensors").write_bytes(tiny_model.read_bytes())
    window = open_with_builtin(qtbot, folders, tiny_model)
    qtbot.wait(300)
    assert window.message_bar.button("Get models…") is None
    assert open_settings(folders).value(OFFERED_KEY) is None     # not offered, so not marked as offered
    window.close()


def test_with_no_model_at_all_the_banner_offers_get_models(open_window, qtbot):
    window = open_window(model=None)
    qtbot.waitUntil(lambda: "not installed" in window.message_bar.text(), timeout=10_000)
    assert window.message_bar.button("Get models…") is not None


def test_closing_the_window_mid_download_stops_it_and_the_next_start_offers_resume(
        open_window, qtbot, hub_server, catalogue, folders):  # noqa: F811
    window = with_catalogue(open_window(), catalogue, hub_server)
    dialog = window.model_sources.open_dialog()
    hub_server.chunk_delay = 0.02
    dialog.row("tiny").button.click()
    qtbot.waitUntil(lambda: dialog.row("tiny").bar.value() > 0, timeout=20_000)
    window.close()          # cancels the download and waits (briefly) for its thread
    assert not dialog.isVisible() and window.session.downloads.running() == []
    part = folders.models_dir / ".tiny.safetensors.part"
    assert part.stat().st_size > 0 and not (folders.models_dir / "tiny.safetensors").exists()

    again = with_catalogue(open_window(), catalogue, hub_server)
    assert again.model_sources.open_dialog().row("tiny").button.text() == "Resume"
