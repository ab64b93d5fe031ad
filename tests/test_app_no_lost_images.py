"""No image is ever lost: a failed save keeps every image in the window, Live results wait for the
user to save one, closing asks, and a worker that fails unexpectedly still ends its job."""

from __future__ import annotations

from PySide6.QtCore import Qt

from app import generation
from app.jobs import Failed, Finished
from app.widgets.history_strip import LIVE_ROLE, UNSAVED_ROLE
from core.errors import LatentDeskError
from core.metadata.png_files import read_parameters
from tests.test_app import RUN_TIMEOUT_MS, pngs, run


def disk_full_after(monkeypatch, good: int) -> list:
    """Saving works `good` times, then fails as a full disk does."""
    real, calls = generation.save_png_and_mask, []

    def save(image, folder, infotext, mask=None):
        calls.append(folder)
        if len(calls) > good:
            raise LatentDeskError(f"Could not save the image in {folder}: No space left on device")
        return real(image, folder, infotext, mask)

    monkeypatch.setattr(generation, "save_png_and_mask", save)
    return calls


def test_disk_full_after_two_of_four_keeps_all_four_and_they_can_be_saved(open_window, qtbot, folders,
                                                                          monkeypatch):
    window = open_window()
    window.panel.batch.setValue(4)
    window.panel.steps.setValue(2)
    qtbot.keyClicks(window.panel.prompt, "a red star")
    calls = disk_full_after(monkeypatch, good=2)
    message = run(qtbot, window)

    assert isinstance(message, Finished) and len(calls) == 4, "saving stopped at the first failure"
    assert len(message.paths) == 2 and len(message.unsaved) == 2
    assert "2 of 4 images could not be saved" in window.message_bar.text()
    assert len(window.history.paths()) == 2 and len(window.history.unsaved_items()) == 2

    monkeypatch.undo()             # space freed: the user saves the two that waited
    for item in window.history.unsaved_items():
        with qtbot.waitSignal(window.statusBar().messageChanged, timeout=10_000):
            window.save_unsaved(item)
    qtbot.waitUntil(lambda: not window.history.unsaved_items(), timeout=10_000)
    assert len(pngs(folders.output_dir)) == 4
    seeds = sorted(read_parameters(p).split("Seed: ")[1].split(",")[0] for p in pngs(folders.output_dir))
    assert len(set(seeds)) == 4, "each image kept its own seed in its settings"


def test_after_a_failed_save_use_as_init_is_not_the_previous_runs_file(open_window, qtbot, monkeypatch):
    window = open_window()
    window.panel.steps.setValue(2)
    qtbot.keyClicks(window.panel.prompt, "a red star")
    first = run(qtbot, window)
    assert window.session.last_result == first.paths[0]
    disk_full_after(monkeypatch, good=0)
    second = run(qtbot, window)
    assert second.paths == () and second.save_error
    assert window.session.last_result is None           # not the first run's file, which shows another image


def test_live_results_are_not_written_and_one_waits_in_the_strip(open_window, qtbot, folders):
    window = open_window()
    window.panel.steps.setValue(2)
    window.panel.live.click()
    for text in ("a red star", " on blue"):
        with qtbot.waitSignal(window.jobDone, timeout=RUN_TIMEOUT_MS):
            qtbot.keyClicks(window.panel.prompt, text)
    assert pngs(folders.output_dir) == [], "a Live typing pause wrote a PNG"
    [live] = window.history.unsaved_items()
    assert live.data(LIVE_ROLE) and "a red star on blue" in live.data(UNSAVED_ROLE).infotext

    with qtbot.waitSignal(window.statusBar().messageChanged, timeout=10_000):
        window.save_unsaved(live)
    [saved] = pngs(folders.output_dir)
    assert read_parameters(saved).startswith("a red star on blue\n")
    assert window.history.paths() == [saved] and not window.history.unsaved_items()


def test_closing_with_unsaved_images_asks_and_cancel_keeps_them(open_window, qtbot, folders, monkeypatch):
    window = open_window()
    window.panel.steps.setValue(2)
    qtbot.keyClicks(window.panel.prompt, "a red star")
    disk_full_after(monkeypatch, good=0)
    run(qtbot, window)
    asked = []
    window.confirm_close = lambda unsaved, running: asked.append((unsaved, running)) or "cancel"
    window.close()
    assert asked == [(1, False)] and window.isVisible() and len(window.history.unsaved_items()) == 1

    monkeypatch.undo()
    window.confirm_close = lambda unsaved, running: "save"
    window.close()
    assert not window.isVisible() and len(pngs(folders.output_dir)) == 1


def test_closing_during_a_run_asks_and_the_window_goes_at_once(open_window, qtbot):
    window = open_window()
    window.panel.steps.setValue(40)
    qtbot.keyClicks(window.panel.prompt, "a red star")
    with qtbot.waitSignal(window.previewShown, timeout=RUN_TIMEOUT_MS):
        window.generate()
    asked = []
    window.confirm_close = lambda unsaved, running: asked.append((unsaved, running)) or "cancel"
    window.close()
    assert asked == [(0, True)] and window.isVisible() and window.job is not None
    window.confirm_close = lambda unsaved, running: "save"
    window.close()
    assert not window.isVisible()


def test_a_worker_failure_outside_the_job_still_ends_the_job(open_window, qtbot, monkeypatch):
    window = open_window()
    qtbot.keyClicks(window.panel.prompt, "a red star")

    def broken(job, post_preview):
        raise KeyError("something nobody expected")

    monkeypatch.setattr(generation, "run_job", broken)
    message = run(qtbot, window)
    assert isinstance(message, Failed) and "KeyError" in message.message
    assert window.job is None and window.panel.generate_button.isEnabled()
    monkeypatch.undo()
    window.panel.steps.setValue(2)
    assert isinstance(run(qtbot, window), Finished), "the worker thread died with the failure"
    assert window.history.count() == 1


def test_unsaved_item_menu_and_delete_key(open_window, qtbot, monkeypatch):
    window = open_window()
    window.panel.steps.setValue(2)
    qtbot.keyClicks(window.panel.prompt, "a red star")
    disk_full_after(monkeypatch, good=0)
    run(qtbot, window)
    [item] = window.history.unsaved_items()
    actions = [a.text() for a in window.history.menu_for_unsaved(item).actions() if a.text()]
    assert actions == ["Save", "View large", "Copy image", "Copy parameters", "Discard"]
    window.history.setCurrentItem(item)
    qtbot.keyClick(window.history, Qt.Key.Key_Delete)
    assert window.history.count() == 0


def test_closing_during_a_live_run_does_not_ask(open_window, qtbot):
    window = open_window()
    window.panel.steps.setValue(40)
    window.panel.prompt.setPlainText("a red star")
    with qtbot.waitSignal(window.previewShown, timeout=RUN_TIMEOUT_MS):
        window.generate(live=True)
    asked = []
    window.confirm_close = lambda unsaved, running: asked.append((unsaved, running)) or "cancel"
    window.close()
    assert asked == [] and not window.isVisible()
