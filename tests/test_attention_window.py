"""Word maps in the window (issue #25, item 2), driven as a user drives them with the tiny SD1 model: "Word maps" on,
a run, then a word strip under the picture; hovering a word lays its heat map over the picture (the pixels the
engine's heat_overlay draws over the saved PNG), leaving restores it, a click pins it, the opacity slider changes
the pixels; each history item keeps its own maps while the app runs; with maps off nothing is computed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QEnterEvent, QFocusEvent, QImage
from PySide6.QtWidgets import QApplication, QLabel

import app.generation
from app.history import ImageHistory
from app.jobs import Finished, Unsaved
from app.settings import open_settings
from app.widgets.word_maps import OPACITY_KEY
from core.attention_maps import AttentionMaps, WordMap, heat_overlay
from core.request import GenerationRequest
from tests.test_app import run

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PROMPT = "a red star on a blue background"
NEGATIVE = "green blur"


def pixels(image: QImage) -> np.ndarray:
    """(H, W, 3) uint8 of a QImage, read line by line (Qt pads each line)."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    lines = np.frombuffer(rgb.constBits(), np.uint8, count=rgb.bytesPerLine() * rgb.height())
    return lines.reshape(rgb.height(), -1)[:, :3 * rgb.width()].reshape(rgb.height(), rgb.width(), 3).copy()


def hover(chip) -> None:
    QApplication.sendEvent(chip, QEnterEvent(QPointF(5, 5), QPointF(5, 5), QPointF(5, 5)))


def leave(chip) -> None:
    QApplication.sendEvent(chip, QEvent(QEvent.Type.Leave))


def run_with_maps(qtbot, window, prompt=PROMPT, negative=NEGATIVE) -> Finished:
    window.panel.word_maps.setChecked(True)
    window.panel.prompt.setPlainText(prompt)
    window.panel.negative.setPlainText(negative)
    message = run(qtbot, window)
    assert isinstance(message, Finished), message
    return message


def expected_overlay(png, word_map: WordMap, opacity: float) -> np.ndarray:
    """What the engine draws for this word over the saved picture."""
    return np.asarray(heat_overlay(Image.open(png).convert("RGB"), word_map, opacity))


def test_hovering_a_word_lays_its_map_over_the_picture_and_leaving_restores_it(open_window, qtbot, folders):
    window = open_window()
    message = run_with_maps(qtbot, window)
    strip, view = window.word_strip, window.preview
    entry = window.session.image_history.viewed
    assert strip.isVisible() and entry is not None and entry.attention is not None
    assert [c.word_map.word for c in strip.chips() if not c.negative] == ["a", "red", "star", "on", "blue",
                                                                          "background"]
    assert [c.word_map.word for c in strip.chips() if c.negative] == ["green", "blur"]
    labels = [w.text() for w in strip.findChildren(QLabel)]
    assert "negative:" in labels
    star = strip.chip("star")
    assert f"{star.word_map.total:.1%}" in star.toolTip() and "%" in star.text()
    plain = pixels(view.image())
    assert np.array_equal(plain, np.asarray(Image.open(message.paths[0]).convert("RGB")))

    hover(star)
    shown = pixels(view.shown_image())
    assert np.array_equal(shown, expected_overlay(message.paths[0], star.word_map, 0.7))
    assert not np.array_equal(shown, plain)
    assert np.array_equal(pixels(view.image()), plain)      # "Copy image" still copies the picture
    hover(strip.chip("green", negative=True))               # the negative prompt's words too
    assert np.array_equal(pixels(view.shown_image()),
                          expected_overlay(message.paths[0], strip.chip("green", True).word_map, 0.7))
    leave(strip.chip("green", negative=True))
    assert np.array_equal(pixels(view.shown_image()), plain)
    QApplication.sendEvent(star, QFocusEvent(QEvent.Type.FocusIn))     # tabbing along the words shows them too
    assert np.array_equal(pixels(view.shown_image()), expected_overlay(message.paths[0], star.word_map, 0.7))
    QApplication.sendEvent(star, QFocusEvent(QEvent.Type.FocusOut))
    assert np.array_equal(pixels(view.shown_image()), plain)


def test_a_click_pins_a_word_until_clicked_again(open_window, qtbot):
    window = open_window()
    message = run_with_maps(qtbot, window)
    strip, view = window.word_strip, window.preview
    star, blue = strip.chip("star"), strip.chip("blue")
    plain = pixels(view.image())
    hover(star)
    star.click()
    leave(star)
    assert star.isChecked() and strip.pinned() == ("star", False)
    pinned = expected_overlay(message.paths[0], star.word_map, 0.7)
    assert np.array_equal(pixels(view.shown_image()), pinned)
    hover(blue)                                 # another word while hovered, the pinned one after
    assert np.array_equal(pixels(view.shown_image()), expected_overlay(message.paths[0], blue.word_map, 0.7))
    leave(blue)
    assert np.array_equal(pixels(view.shown_image()), pinned)
    blue.click()                                # the pin moves: one word at a time
    assert blue.isChecked() and not star.isChecked()
    blue.click()
    assert not blue.isChecked() and strip.pinned() is None
    assert np.array_equal(pixels(view.shown_image()), plain)


def test_the_opacity_slider_changes_the_pixels_and_is_remembered(open_window, qtbot, folders):
    window = open_window()
    message = run_with_maps(qtbot, window)
    strip, view = window.word_strip, window.preview
    star = strip.chip("star")
    star.click()
    strong = pixels(view.shown_image())
    strip.opacity.setValue(30)
    weak = pixels(view.shown_image())
    assert np.array_equal(weak, expected_overlay(message.paths[0], star.word_map, 0.3))
    assert not np.array_equal(weak, strong)
    plain = pixels(view.image()).astype(int)
    assert np.abs(weak - plain).sum() < np.abs(strong - plain).sum()    # less of the map, more of the picture
    strip.opacity.setValue(0)
    assert np.array_equal(pixels(view.shown_image()), pixels(view.image()))
    strip.opacity.setValue(45)
    assert int(open_settings(folders).value(OPACITY_KEY)) == 45


def test_each_history_item_keeps_its_maps_when_switching_between_them(open_window, qtbot):
    window = open_window()
    first = run_with_maps(qtbot, window, "a red star on a blue background")
    first_entry = window.session.image_history.viewed
    star_map = first_entry.attention.word("star").map.clone()
    second = run_with_maps(qtbot, window, "a green circle on a white background")
    second_entry = window.session.image_history.viewed
    strip, view, history = window.word_strip, window.preview, window.history
    assert second_entry is not first_entry and strip.chip("circle") is not None and strip.chip("star") is None
    assert history.currentItem() is history.item(0)          # the image on view is the one selected
    strip.chip("a").click()                                  # a word both prompts have: it stays pinned

    history.show_on_view(history.item(1))                    # the older run: its picture and its maps
    assert history.currentItem() is history.item(1)
    assert np.array_equal(pixels(view.image()), np.asarray(Image.open(first.paths[0]).convert("RGB")))
    assert strip.chip("star") is not None and strip.chip("circle") is None
    assert torch.equal(strip.chip("star").word_map.map, star_map)
    assert strip.pinned() == ("a", False) and strip.chip("a").isChecked()
    assert np.array_equal(pixels(view.shown_image()),
                          expected_overlay(first.paths[0], first_entry.attention.word("a"), 0.7))
    assert not window.timeline.isVisible()                   # it replays the last run, not this one
    strip.chip("star").click()                               # a word only this one has: unpinned on the other

    history.show_on_view(history.item(0))
    assert strip.chip("circle") is not None and strip.pinned() is None
    assert np.array_equal(pixels(view.shown_image()), np.asarray(Image.open(second.paths[0]).convert("RGB")))
    assert window.timeline.isVisible()
    qtbot.keyClick(history, Qt.Key.Key_Right)              # the arrow keys walk the history too
    assert window.session.image_history.viewed is first_entry
    assert torch.equal(strip.chip("star").word_map.map, star_map)
    assert np.array_equal(pixels(view.image()), np.asarray(Image.open(first.paths[0]).convert("RGB")))


def test_with_maps_off_there_is_no_strip_and_nothing_is_computed(open_window, qtbot, monkeypatch):
    asked = []
    real = app.generation.generate

    def recording(*args, **kwargs):
        asked.append(kwargs.get("attention"))
        return real(*args, **kwargs)

    monkeypatch.setattr(app.generation, "generate", recording)
    window = open_window()
    assert not window.panel.word_maps.isChecked()            # off by default
    window.panel.prompt.setPlainText(PROMPT)
    run(qtbot, window)
    assert asked == [None] and not window.word_strip.isVisible()
    assert window.session.image_history.viewed.attention is None

    run_with_maps(qtbot, window)
    assert asked[1] is not None and window.word_strip.isVisible()
    window.panel.word_maps.setChecked(False)
    run(qtbot, window)
    assert asked[2] is None and not window.word_strip.isVisible()      # an image without maps hides the strip
    window.history.show_on_view(window.history.item(1))
    assert window.word_strip.isVisible()
    window.history.show_on_view(window.history.item(2))
    assert not window.word_strip.isVisible()


def test_the_choice_is_remembered(open_window, qtbot, folders):
    window = open_window()
    window.panel.word_maps.setChecked(True)
    window.close()
    again = open_window()
    assert again.panel.word_maps.isChecked() and again.session.word_maps


def test_a_run_greys_the_strip_out_until_its_own_maps_come(open_window, qtbot):
    window = open_window()
    run_with_maps(qtbot, window)
    strip = window.word_strip
    strip.chip("star").click()
    window.panel.steps.setValue(40)
    done = qtbot.waitSignal(window.jobDone, timeout=60_000)
    with qtbot.waitSignal(window.previewShown, timeout=60_000):
        window.generate()
    assert not strip.isEnabled() and window.preview.shown_image() == window.preview.image()   # no map on a preview
    done.wait()
    assert strip.isEnabled() and strip.chip("star").isChecked()          # the new run's own map of the word
    assert not np.array_equal(pixels(window.preview.shown_image()), pixels(window.preview.image()))
    window.timeline.slider.setValue(0)                                   # a step of the run: no map fits it
    assert not strip.isEnabled()
    window.timeline.slider.setValue(window.timeline.slider.maximum())
    assert strip.isEnabled() and strip.chip("star").isChecked()


def maps_of(words: int, side: int) -> AttentionMaps:
    return AttentionMaps([WordMap(f"w{i}", (i,), torch.ones(side, side), 1 / words) for i in range(words)], [], 1)


def test_the_history_keeps_the_newest_maps_within_its_memory_bound(qtbot, monkeypatch, tmp_path):
    monkeypatch.setattr("app.history.MAX_MAP_BYTES", 3 * 4 * 64 * 64 * 4)   # three images of 4 words, 64x64
    history = ImageHistory()
    entries = []
    for i in range(5):
        image = QImage(8, 8, QImage.Format.Format_RGB888)
        unsaved = Unsaved(None, image, f"run {i}", tmp_path)
        message = Finished(i, GenerationRequest(), (image,), (), (), 0.0, 0, unsaved=(unsaved,),
                           attention=(maps_of(4, 64),))
        entries += history.add_results(message)
    assert [e.attention is not None for e in entries] == [False, False, True, True, True]
    assert history.kept_maps() == 3
    huge = Finished(9, GenerationRequest(), (image,), (), (), 0.0, 0,
                    unsaved=(Unsaved(None, image, "huge", tmp_path),), attention=(maps_of(40, 64),))
    [newest] = history.add_results(huge)
    assert newest.attention is not None and history.kept_maps() == 1     # the newest keeps its maps, always


@pytest.mark.parametrize("first_saved", [True, False])
def test_the_entry_on_view_is_the_first_image_even_when_a_save_failed(tmp_path, qtbot, first_saved):
    images = (QImage(8, 8, QImage.Format.Format_RGB888), QImage(8, 8, QImage.Format.Format_RGB888))
    path = tmp_path / "00001.png"
    images[0 if first_saved else 1].save(str(path))
    unsaved = Unsaved(None, images[1 if first_saved else 0], "kept", tmp_path)
    message = Finished(1, GenerationRequest(), images, (path,), (), 0.0, 0, unsaved=(unsaved,))
    history = ImageHistory()
    entries = history.add_results(message)
    on_view = history.first_image_entry(message, entries)
    assert (on_view.path == path) if first_saved else (on_view.unsaved is unsaved)
