"""Inpainting and outpainting in the window (issue 24, step 2), driven as a user drives it: strokes of the
brush and the eraser land in the mask where the mouse went, undo/redo (more than 20 steps), invert,
clear, `[` and `]`; a run with a painted mask on the built-in model keeps every pixel outside the
feathered mask, saves the mask beside the image and keeps it with the history item; outpainting grows
the picture; an empty mask is the engine's message and the next run works; a saved inpainting PNG opened
again brings its mask back; a PNG's transparent part can be the mask.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QImage, QMouseEvent
from PySide6.QtWidgets import QApplication, QScrollArea

from app.history import list_outputs
from app.jobs import Failed, Finished
from app.widgets.mask_painter import UNDO_STEPS, MaskCanvas, alpha_to_grey
from core.resources import builtin_model_path
from tests.test_app import pngs, run

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SIDE = 64       # px: the built-in model's pictures, and a 20-step run well under a second


# -- helpers ----------------------------------------------------------------------------------------

def mouse(canvas: MaskCanvas, kind: QEvent.Type, point: QPointF, buttons=Qt.MouseButton.LeftButton) -> None:
    """A mouse event at `point` of the picture (its pixels), delivered as Qt delivers it."""
    pos = canvas.from_picture(point)
    button = Qt.MouseButton.NoButton if kind == QEvent.Type.MouseMove else Qt.MouseButton.LeftButton
    event = QMouseEvent(kind, pos, canvas.mapToGlobal(pos), button, buttons, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(canvas, event)


def stroke(canvas: MaskCanvas, *points: tuple[float, float]) -> None:
    first, *rest = (QPointF(x, y) for x, y in points)
    mouse(canvas, QEvent.Type.MouseButtonPress, first)
    for point in rest:
        mouse(canvas, QEvent.Type.MouseMove, point)
    mouse(canvas, QEvent.Type.MouseButtonRelease, rest[-1] if rest else first, Qt.MouseButton.NoButton)


def mask_array(canvas: MaskCanvas) -> np.ndarray:
    return qimage_grey(alpha_to_grey(canvas.layer.image))


def qimage_grey(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format.Format_Grayscale8)
    rows = np.frombuffer(bytes(image.constBits()), np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, :image.width()].copy()


@pytest.fixture
def canvas(qtbot) -> MaskCanvas:
    """A painter on a 64 x 64 picture, shown at 320 x 320 (the picture drawn 4.5x: 288 px)."""
    view = MaskCanvas()
    qtbot.addWidget(view)
    view.resize(320, 320)
    view.show()
    picture = QImage(SIDE, SIDE, QImage.Format.Format_RGB32)
    picture.fill(Qt.GlobalColor.darkBlue)
    view.set_picture(picture)
    view.layer.brush_size, view.layer.hardness = 8, 1.0
    return view


# -- the painter --------------------------------------------------------------------------------------

def test_a_brush_stroke_paints_where_the_mouse_went_and_nowhere_else(canvas):
    stroke(canvas, (10, 32), (30, 32), (50, 32))
    mask = mask_array(canvas)
    assert (mask[32, 10:51] == 255).all()           # along the stroke, a hard 8 px brush
    assert (mask[29:36, 14:47] == 255).all()        # 3 px either side of it
    assert (mask[:26] == 0).all() and (mask[39:] == 0).all()   # more than the radius away: untouched
    assert (mask[:, :5] == 0).all() and (mask[:, 56:] == 0).all()


def test_the_eraser_takes_out_only_what_it_touches(canvas):
    stroke(canvas, (10, 32), (50, 32))
    canvas.layer.erasing = True
    stroke(canvas, (30, 20), (30, 44))
    mask = mask_array(canvas)
    assert (mask[32, 27:34] == 0).all()             # erased across the stroke
    assert (mask[32, 10:24] == 255).all() and (mask[32, 37:51] == 255).all()


def test_a_soft_brush_fades_towards_its_edge(canvas):
    canvas.layer.brush_size, canvas.layer.hardness = 20, 0.0
    stroke(canvas, (32, 32))
    mask = mask_array(canvas)
    assert mask[32, 32] > 200
    assert 0 < mask[32, 39] < mask[32, 35] < mask[32, 32]
    assert mask[32, 44] == 0


def test_undo_and_redo_walk_more_than_20_steps_each_way(canvas, qtbot):
    steps = 25
    assert UNDO_STEPS >= steps
    states = [mask_array(canvas)]
    for i in range(steps):
        stroke(canvas, (4 + 2 * i, 4 + 2 * i))
        states.append(mask_array(canvas))
    assert len({s.tobytes() for s in states}) == steps + 1      # every stroke changed something
    canvas.setFocus()
    for i in range(steps, 0, -1):
        qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
        assert np.array_equal(mask_array(canvas), states[i - 1])
    assert not canvas.layer.can_undo()
    for i in range(1, steps + 1):
        qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        assert np.array_equal(mask_array(canvas), states[i])
    assert not canvas.layer.can_redo()


def test_a_new_stroke_after_undo_drops_the_redo(canvas):
    stroke(canvas, (10, 10))
    canvas.layer.undo()
    stroke(canvas, (50, 50))
    assert not canvas.layer.can_redo()
    mask = mask_array(canvas)
    assert mask[10, 10] == 0 and mask[50, 50] == 255


def test_invert_and_clear_and_both_undo(canvas):
    stroke(canvas, (20, 20), (40, 40))
    painted = mask_array(canvas)
    canvas.layer.invert()
    assert np.array_equal(mask_array(canvas), 255 - painted)
    canvas.layer.clear()
    assert not mask_array(canvas).any() and canvas.layer.is_empty()
    canvas.layer.undo()
    assert np.array_equal(mask_array(canvas), 255 - painted)
    canvas.layer.undo()
    assert np.array_equal(mask_array(canvas), painted)


def test_the_bracket_keys_size_the_brush_and_the_stroke_follows(canvas, qtbot):
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    grown = canvas.layer.brush_size
    assert grown > 8 + 2
    stroke(canvas, (32, 32))
    mask = mask_array(canvas)
    assert mask[32, 32 + grown // 2 - 2] == 255 and mask[32, 32 + grown // 2 + 2] == 0
    assert mask[32, 32 + 8 // 2] == 255             # where the 8 px brush's edge was
    for _ in range(40):
        qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    assert canvas.layer.brush_size == 1         # never below one pixel


def test_a_mask_of_another_size_is_scaled_to_the_picture(canvas):
    small = QImage(16, 16, QImage.Format.Format_Grayscale8)
    small.fill(0)
    for y in range(8):
        for x in range(16):
            small.setPixel(x, y, 0xFFFFFFFF)        # the top half white
    canvas.layer.load(small)
    mask = mask_array(canvas)
    assert mask.shape == (SIDE, SIDE)
    assert (mask[:28] == 255).all() and (mask[36:] == 0).all()


# -- runs on the built-in model -----------------------------------------------------------------------

@pytest.fixture
def builtin_window(open_window):
    window = open_window(model=builtin_model_path(), small=False)
    p = window.panel
    p.live.setChecked(False)
    p.width.setValue(SIDE)
    p.height.setValue(SIDE)
    p.steps.setValue(20)
    p.seed.set_seed(7)
    p.prompt.setPlainText("a large green circle on a white background")
    return window


def picture_file(folder: Path) -> Path:
    """The demo: a red square on blue; painting over the square asks for another colour."""
    pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
    pixels[...] = (30, 60, 200)
    pixels[16:48, 16:48] = (220, 30, 30)
    path = folder / "scene.png"
    Image.fromarray(pixels).save(path)
    return path


def open_picture(qtbot, window, path: Path) -> None:
    with qtbot.waitSignal(window.session.pictureRead, timeout=30_000):
        window.session.open_init_image(path)


def start_inpainting(qtbot, window, path: Path) -> MaskCanvas:
    open_picture(qtbot, window, path)
    window.panel.init_well.inpaint.paint.click()
    window.panel.init_well.inpaint.set_enabled(True)
    canvas = window.run_view.canvas
    assert window.run_view.pages.currentWidget() is canvas
    canvas.layer.brush_size, canvas.layer.hardness = 12, 1.0
    return canvas


def test_a_painted_mask_repaints_only_its_part_and_is_saved_beside_the_image(builtin_window, qtbot, tmp_path,
                                                                             folders):
    window = builtin_window
    path = picture_file(tmp_path)
    canvas = start_inpainting(qtbot, window, path)
    stroke(canvas, (26, 26), (38, 26), (38, 38), (26, 38))
    painted = mask_array(canvas)
    message = run(qtbot, window)
    assert isinstance(message, Finished), message

    saved = pngs(folders.output_dir)
    assert [p.name for p in saved] == ["00000-mask.png", "00000.png"]
    result = np.asarray(Image.open(folders.output_dir / "00000.png").convert("RGB"))
    init = np.asarray(Image.open(path).convert("RGB"))
    blur = window.session.inpaint.mask_blur
    reach = np.asarray(Image.fromarray(painted).filter(ImageFilter.MaxFilter(2 * 3 * blur + 1)))   # the feather's reach
    outside = reach == 0
    assert outside.sum() > SIDE * SIDE // 3
    assert np.array_equal(result[outside], init[outside])          # exactly the picture's own pixels
    assert not np.array_equal(result[painted == 255], init[painted == 255])   # and the masked part repainted

    saved_mask = np.asarray(Image.open(folders.output_dir / "00000-mask.png"))
    assert saved_mask.shape == (SIDE, SIDE) and np.array_equal(saved_mask >= 128, painted >= 128)
    entry = window.session.image_history.entries[0]
    assert entry.path == folders.output_dir / "00000.png" and entry.mask == folders.output_dir / "00000-mask.png"
    assert list_outputs(folders.output_dir) == [folders.output_dir / "00000.png"]    # the mask is no picture


def test_outpainting_grows_the_picture(builtin_window, qtbot, tmp_path, folders):
    window = builtin_window
    path = picture_file(tmp_path)
    start_inpainting(qtbot, window, path)
    panel = window.panel.init_well.inpaint
    panel.extend[2].setValue(64)         # right
    assert window.build_request(1).width == SIDE + 64
    assert f"makes {SIDE + 64} × {SIDE}" in window.run_view.mask_hint.text()
    message = run(qtbot, window)
    assert isinstance(message, Finished), message
    assert message.images[0].width() == SIDE + 64 and message.images[0].height() == SIDE
    result = np.asarray(Image.open(message.paths[0]).convert("RGB"))
    kept = SIDE - 3 * 2 * window.session.inpaint.mask_blur      # beyond the feather's reach into the old picture
    assert np.array_equal(result[:, :kept], np.asarray(Image.open(path))[:, :kept])


def test_an_empty_mask_is_the_engines_message_and_the_next_run_works(builtin_window, qtbot, tmp_path):
    window = builtin_window
    canvas = start_inpainting(qtbot, window, picture_file(tmp_path))
    message = run(qtbot, window)
    assert isinstance(message, Failed) and "mask is empty" in message.message
    assert "mask is empty" in window.message_bar.text() and window.message_bar.kind == "error"
    stroke(canvas, (30, 30))
    assert isinstance(run(qtbot, window), Finished)


def test_a_mask_of_another_size_is_scaled_by_the_engine_and_the_note_shown(builtin_window, qtbot, tmp_path):
    window = builtin_window
    start_inpainting(qtbot, window, picture_file(tmp_path))
    small = QImage(16, 16, QImage.Format.Format_Grayscale8)
    small.fill(255)
    window.session.set_mask(small)          # as a mask file of another size reaches the engine
    assert isinstance(run(qtbot, window), Finished)
    assert "was scaled to the picture's size" in window.message_bar.text()


def test_a_saved_inpainting_png_brings_its_mask_back(builtin_window, qtbot, tmp_path, folders):
    window = builtin_window
    canvas = start_inpainting(qtbot, window, picture_file(tmp_path))
    stroke(canvas, (10, 50), (50, 50))
    painted = mask_array(canvas)
    message = run(qtbot, window)
    assert isinstance(message, Finished), message
    canvas.layer.clear()
    with qtbot.waitSignal(window.session.maskRead, timeout=30_000):
        window.session.open_init_image(message.paths[0])
    assert np.array_equal(mask_array(canvas) >= 128, painted >= 128)
    assert window.panel.init_well.inpaint.enabled.isChecked()


def test_a_pictures_transparent_part_can_be_the_mask(builtin_window, qtbot, tmp_path):
    window = builtin_window
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[...] = (30, 60, 200, 255)
    rgba[8:24, 40:56, 3] = 0            # erased in an editor: repaint it
    path = tmp_path / "holed.png"
    Image.fromarray(rgba).save(path)
    open_picture(qtbot, window, path)
    button = window.message_bar.button("Use as mask")
    assert button is not None
    with qtbot.waitSignal(window.session.maskRead, timeout=30_000):
        button.click()
    mask = mask_array(window.run_view.canvas)
    assert (mask[8:24, 40:56] == 255).all() and mask.sum() == 16 * 16 * 255


def test_switching_models_mid_stroke_keeps_the_mask_and_the_next_run_uses_it(builtin_window, qtbot, tmp_path,
                                                                             tiny_model):
    window = builtin_window
    canvas = start_inpainting(qtbot, window, picture_file(tmp_path))
    mouse(canvas, QEvent.Type.MouseButtonPress, QPointF(10, 32))
    mouse(canvas, QEvent.Type.MouseMove, QPointF(30, 32))
    with qtbot.waitSignal(window.modelLoaded, timeout=60_000):
        window.open_model(str(tiny_model))
    mouse(canvas, QEvent.Type.MouseMove, QPointF(50, 32))
    mouse(canvas, QEvent.Type.MouseButtonRelease, QPointF(50, 32), Qt.MouseButton.NoButton)
    assert (mask_array(canvas)[32, 10:51] == 255).all()
    p = window.panel
    p.steps.setValue(4)
    p.width.setValue(SIDE)      # the tiny SD1 model's family filled in its own 512 px
    p.height.setValue(SIDE)
    message = run(qtbot, window)
    assert isinstance(message, Finished), message
    assert Path(message.request.mask).is_file()
    assert np.array_equal(np.asarray(Image.open(message.request.mask)), mask_array(canvas))


def test_the_inpaint_controls_fit_the_panel(builtin_window, qtbot, tmp_path):
    window = builtin_window
    start_inpainting(qtbot, window, picture_file(tmp_path))
    panel = window.panel
    form = panel.findChild(QScrollArea).widget()
    scrollbar = 8
    assert form.minimumSizeHint().width() <= panel.minimumWidth() - scrollbar


def test_an_inpainting_model_draws_without_a_mask_and_explains_a_picture_without_one(open_window, qtbot, tmp_path):
    from tests.test_inpaint import write_inpainting_folder

    folder = write_inpainting_folder("sd1", tmp_path / "inpainting-model", seed=3)
    window = open_window(model=folder)
    assert isinstance(run(qtbot, window), Finished)            # txt2img: the engine masks everything
    open_picture(qtbot, window, picture_file(tmp_path))
    window.panel.width.setValue(SIDE)
    window.panel.height.setValue(SIDE)
    message = run(qtbot, window)                                # img2img without a mask: said, not crashed
    assert isinstance(message, Failed) and "inpainting model" in window.message_bar.text()
    canvas = window.run_view.canvas
    window.panel.init_well.inpaint.set_enabled(True)
    canvas.layer.brush_size = 16
    stroke(canvas, (32, 32))
    assert isinstance(run(qtbot, window), Finished)


def test_a_live_inpainting_result_saved_later_keeps_its_mask(builtin_window, qtbot, tmp_path, folders):
    window = builtin_window
    canvas = start_inpainting(qtbot, window, picture_file(tmp_path))
    stroke(canvas, (20, 20), (44, 44))
    message = run(qtbot, window, lambda: window.generate(live=True))
    assert isinstance(message, Finished) and message.live and not message.paths
    entry = window.session.image_history.unsaved(live=True)[0]
    assert entry.unsaved.mask is not None
    with qtbot.waitSignal(window.session.image_history.saved, timeout=30_000):
        window.session.save_unsaved(entry)
    assert entry.path == folders.output_dir / "00000.png" and entry.mask == folders.output_dir / "00000-mask.png"
    assert np.array_equal(np.asarray(Image.open(entry.mask)) >= 128, mask_array(canvas) >= 128)
