"""The window against hostile input, as a user (or a bad file) delivers it.

Every case acts on a real window with the tiny model, then the same checks run: the window is
still there and idle, a message says what was wrong where the case was refused (never a
traceback, never silence), and the window still generates an image afterwards. Cases for
settings and crafted model files in depth live in test_app_settings.py and
test_hostile_files.py; here each class appears once, through the window.
"""

from __future__ import annotations

import io
import math
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from app.jobs import Failed, Finished, Stopped
from app.window import MainWindow
from tests.test_app import RUN_TIMEOUT_MS, drop, run


def png_bytes(image: Image.Image, text: dict[str, str] | None = None, **options) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value, zip=len(value) > 1000)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, **options)
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png() -> bytes:
    """A valid PNG header declaring 60,000 x 60,000 pixels, 3.6 G of them, in a few bytes."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def noise(mode: str = "RGB", size=(96, 80)) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6      # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    noise(size=(96, 64)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(96 * 80, dtype=np.uint16).reshape(80, 96) * 8).save(buffer, format="PNG")
    return buffer.getvalue()


# -- files dropped on the window: (name, content) ; content None = made by the case itself -------------

REFUSED_FILES = {
    "zero_bytes": ("empty.png", b""),
    "truncated_png": ("cut.png", png_bytes(noise())[:300]),
    "text_named_png": ("notes.png", b"these are my notes, not a picture\n" * 20),
    "bomb_png": ("bomb.png", bomb_png()),
    "pickle_checkpoint": ("model.ckpt", b"\x80\x04\x95" + os.urandom(200)),
    "random_safetensors": ("junk.safetensors", os.urandom(512)),
    "huge_header_safetensors": ("big.safetensors", struct.pack("<Q", 2**62) + b"{}"),
}
ACCEPTED_FILES = {
    "cmyk_jpeg": ("cmyk.jpg", None),
    "sixteen_bit_png": ("deep.png", sixteen_bit_png()),
    "palette_png": ("palette.png", png_bytes(noise("P"))),
    "alpha_png": ("alpha.png", png_bytes(noise("RGBA"))),
    "exif_rotated_jpeg": ("turned.jpg", exif_rotated_jpeg()),
    "megabytes_of_text_png": ("talky.png", png_bytes(noise(), {"parameters": "a star " * 400_000})),
    "malformed_infotext_png": ("odd.png", png_bytes(noise(), {
        "parameters": "x\nSteps: many, Seed: -5, Size: 99999999999x1, CFG scale: nan, Sampler: ???, Denoising strength: 7"})),
    "animated_gif": ("moving.gif", None),
}


def usable(window: MainWindow, qtbot) -> None:
    """The checks after every case: alive, idle, and it still makes an image."""
    qtbot.waitUntil(lambda: window.job is None and not window.loading, timeout=RUN_TIMEOUT_MS)
    assert window.isVisible() and window.model is not None
    window.panel.live.setChecked(False)
    window.panel.init_well.clear()
    window.panel.prompt.setPlainText("a red star")
    window.panel.width.setValue(64)
    window.panel.height.setValue(64)
    window.panel.steps.setValue(2)
    window.panel.batch.setValue(1)
    message = run(qtbot, window)
    assert isinstance(message, Finished), message


def write_case(tmp_path: Path, name: str, content: bytes | None) -> Path:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    elif name.endswith(".jpg"):
        noise("CMYK").save(path, format="JPEG")
    else:
        frames = [noise(size=(64, 64)).convert("P") for _ in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    return path


@pytest.mark.parametrize("case", sorted(REFUSED_FILES))
def test_refused_file_dropped_says_why(open_window, qtbot, tmp_path, case):
    window = open_window()
    path = write_case(tmp_path, *REFUSED_FILES[case])
    model_before = window.model
    drop(window, path)
    qtbot.waitUntil(lambda: window.message_bar.kind == "error" and not window.loading, timeout=30_000)
    assert path.name in window.message_bar.text() or path.stem in window.message_bar.text()
    assert "Traceback" not in window.message_bar.text()
    assert window.model is model_before and window.panel.init_well.path is None
    usable(window, qtbot)


@pytest.mark.parametrize("case", sorted(ACCEPTED_FILES))
def test_odd_but_valid_image_dropped_becomes_the_start_image(open_window, qtbot, tmp_path, case):
    window = open_window()
    path = write_case(tmp_path, *ACCEPTED_FILES[case])
    started = time.perf_counter()
    with qtbot.waitSignal(window.initImageChanged, timeout=30_000):
        drop(window, path)
    assert time.perf_counter() - started < 10
    assert window.panel.init_well.path == path
    window.panel.width.setValue(64)
    window.panel.height.setValue(64)
    window.panel.steps.setValue(2)
    qtbot.wait(50)
    window.message_bar.dismiss()
    message = run(qtbot, window)
    assert isinstance(message, Finished), message
    usable(window, qtbot)


def test_directory_symlink_loop_and_fifo_dropped(open_window, qtbot, tmp_path):
    window = open_window()
    loop_a, loop_b = tmp_path / "a.png", tmp_path / "b.png"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    for path in (loop_a, fifo, folder):
        window.message_bar.dismiss()
        started = time.perf_counter()
        window.drop_paths([path])
        qtbot.waitUntil(lambda name=path.name: name in window.message_bar.text(), timeout=10_000)
        assert window.message_bar.kind == "error"
        assert time.perf_counter() - started < 5, f"{path.name} hung the window"
    usable(window, qtbot)


def test_model_with_nan_weights(open_window, qtbot, tmp_path, tiny_model):
    from safetensors.torch import load_file, save_file

    tensors = load_file(tiny_model)
    name = next(k for k in tensors if k.endswith(".weight") and "diffusion_model" in k)
    tensors[name] = tensors[name].clone().fill_(math.nan)
    nan_model = tmp_path / "nan.safetensors"
    save_file(tensors, nan_model)
    window = open_window()
    ended = []
    window.modelLoaded.connect(ended.append)
    window.modelFailed.connect(ended.append)
    drop(window, nan_model)
    qtbot.waitUntil(lambda: bool(ended) and not window.loading, timeout=60_000)
    if window.model is not None and window.model.spec == str(nan_model):
        window.panel.prompt.setPlainText("a red star")
        window.panel.steps.setValue(2)
        message = run(qtbot, window)
        assert isinstance(message, Failed) and "nan" in message.message.lower()   # said, not a black image
    else:
        assert "nan" in window.message_bar.text().lower()
    window.open_model(str(tiny_model))
    qtbot.waitUntil(lambda: window.model is not None and window.model.spec == str(tiny_model), timeout=60_000)
    usable(window, qtbot)


def test_model_folder_that_cannot_be_read(open_window, qtbot, tmp_path, monkeypatch):
    locked = tmp_path / "locked-model"
    locked.mkdir()
    (locked / "model_index.json").write_text("{}")
    real_open = Path.open

    def no_permission(self, *args, **kwargs):
        if locked in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", no_permission)
    window = open_window()
    with qtbot.waitSignal(window.modelFailed, timeout=30_000):
        window.open_model(str(locked))
    assert "locked-model" in window.message_bar.text()
    monkeypatch.undo()
    usable(window, qtbot)


# -- prompts --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("case", "prompt", "refused"), [
    ("hundred_k_characters", "a red star, " * 9_000, True),
    ("hundred_k_breaks", "BREAK " * 16_667, True),
    ("control_characters", "a red\x00 star\x07 on\x1b[31m blue\r\n\t\x7f", False),
    ("rtl_and_emoji", "نجمة حمراء ⭐🔴 على خلفية زرقاء \u202e🟦 שלום", False),
    ("only_emphasis_brackets", "((((((((((((((((((((star:1e308)))))))))))))))))))) [[[[[[[ \\", False),
])
def test_hostile_prompt(open_window, qtbot, case, prompt, refused):
    window = open_window()
    window.panel.prompt.setPlainText(prompt)
    window.panel.steps.setValue(2)
    message = run(qtbot, window)
    if refused:
        assert isinstance(message, Failed) and "too long" in message.message
        assert "too long" in window.message_bar.text()
    else:
        assert isinstance(message, Finished), message
    usable(window, qtbot)


# -- sliders and spin boxes at their extremes ------------------------------------------------------

def test_every_control_at_its_extremes(open_window, qtbot):
    window = open_window()
    p = window.panel
    p.prompt.setPlainText("a red star")
    for control in (p.width, p.height, p.steps, p.batch):
        control.setValue(control.maximum())
        control.setValue(control.minimum())
    p.guidance.slider.setValue(p.guidance.slider.maximum())
    p.seed.set_seed(2**32 - 1)
    p.batch.setValue(2)            # seed + 1 must stay within range: refused or wrapped, never a crash
    p.steps.setValue(2)
    message = run(qtbot, window)
    assert isinstance(message, Finished | Failed)
    if isinstance(message, Failed):
        assert "seed" in message.message
    p.guidance.slider.setValue(p.guidance.slider.minimum())
    p.seed.edit.setText("99999999999999999999999999")
    usable(window, qtbot)


def test_a_size_too_large_for_memory_is_refused_before_allocating(open_window, qtbot, monkeypatch):
    from core import memory

    window = open_window()
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 * 2**20)
    window.panel.prompt.setPlainText("a red star")
    window.panel.width.setValue(window.panel.width.maximum())
    window.panel.height.setValue(window.panel.height.maximum())
    message = run(qtbot, window)
    assert isinstance(message, Failed) and "memory" in message.message
    monkeypatch.undo()
    usable(window, qtbot)


# -- clicks ---------------------------------------------------------------------------------------

def test_generate_a_hundred_times_in_a_second(open_window, qtbot):
    window = open_window()
    window.panel.prompt.setPlainText("a red star")
    finals = []
    window.jobDone.connect(finals.append)
    started = time.perf_counter()
    for _ in range(100):
        window.panel.generate_button.click()
    assert time.perf_counter() - started < 1.0
    qtbot.waitUntil(lambda: window.job is None, timeout=RUN_TIMEOUT_MS)
    assert isinstance(finals[-1], Finished)        # the newest request wins
    usable(window, qtbot)


def test_cancel_and_switch_model_while_loading(open_window, qtbot, tiny_model, tmp_path):
    window = open_window()
    other = tmp_path / "other.safetensors"
    other.write_bytes(tiny_model.read_bytes())
    window.open_model(str(other))
    window.cancel()
    window.open_model(str(tiny_model))     # superseded: the newest choice is the one that ends loaded
    qtbot.waitUntil(lambda: not window.loading, timeout=60_000)
    assert window.model.spec == str(tiny_model)
    usable(window, qtbot)


def test_switch_model_mid_run(open_window, qtbot, tiny_model, tmp_path):
    window = open_window()
    other = tmp_path / "other.safetensors"
    other.write_bytes(tiny_model.read_bytes())
    window.panel.prompt.setPlainText("a red star")
    window.panel.steps.setValue(30)
    finals = []
    window.jobDone.connect(finals.append)
    with qtbot.waitSignal(window.previewShown, timeout=RUN_TIMEOUT_MS):
        window.generate()
    with qtbot.waitSignal(window.modelLoaded, timeout=60_000):
        window.open_model(str(other))
    qtbot.waitUntil(lambda: window.job is None, timeout=RUN_TIMEOUT_MS)
    assert isinstance(finals[-1], Finished | Stopped)
    usable(window, qtbot)


def test_paste_with_text_or_nothing_on_the_clipboard(open_window, qtbot):
    window = open_window()
    QApplication.clipboard().setText("x" * 1_000_000)
    window.paste()
    assert window.panel.init_well.path is None
    QApplication.clipboard().clear()
    window.paste()
    window.use_image_data(QImage())
    assert window.message_bar.kind == "error" and "not an image" in window.message_bar.text()
    usable(window, qtbot)


def test_output_folder_that_is_a_file(open_window, qtbot, tmp_path):
    window = open_window()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the pictures should go")
    window.set_output_dir(blocker)
    window.panel.prompt.setPlainText("a red star")
    window.panel.steps.setValue(2)
    message = run(qtbot, window)
    assert isinstance(message, Finished) and message.save_error and len(message.unsaved) == 1
    assert "not-a-folder" in window.message_bar.text()
    window.set_output_dir(tmp_path / "pictures")
    with qtbot.waitSignal(window.statusBar().messageChanged, timeout=10_000):
        window.save_unsaved(window.history.unsaved_items()[0])
    assert len(list((tmp_path / "pictures").glob("*.png"))) == 1
    usable(window, qtbot)


def test_restoring_a_crafted_png_brings_every_number_into_range(open_window, qtbot, tmp_path):
    """Qt's spin boxes raise above 2³¹: restoring once stopped half way, the form half changed."""
    from core.metadata.png_files import save_png

    crafted = save_png(noise(), tmp_path / "crafted.png", (
        "a red star\nNegative prompt: blur\nSteps: 99999999999, Sampler: Euler, CFG scale: 1e308, "
        "Seed: 99999999999999999999999, Size: 99999999999x-5, Denoising strength: 1e9, "
        "Deep cache interval: 99999999999, Deep cache blocks: 99999999999, Deep cache start: 5, "
        "Guidance cut-off: 1e9"))
    window = open_window()
    window.reuse_parameters(crafted)
    p = window.panel
    assert p.prompt.toPlainText() == "a red star" and p.negative.toPlainText() == "blur"
    for box in (p.steps, p.width, p.height, p.batch):
        assert box.minimum() <= box.value() <= box.maximum()
    assert window.message_bar.kind == "warning" and "outside" in window.message_bar.text()
    usable(window, qtbot)


@pytest.mark.parametrize("error", [TypeError("unhashable type: 'list'"), ZeroDivisionError("division by zero"),
                                   KeyError("_class_name"), RecursionError("maximum recursion depth")])
def test_any_load_failure_ends_in_failed_never_loading_forever(open_window, qtbot, tmp_path, monkeypatch, error):
    """A fixed list of exception types was caught: anything else left "Loading…" and Generate
    saying "the model is still loading" for good."""
    from app import models

    window = open_window()
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"x")
    monkeypatch.setattr(models, "load", lambda *args, **kwargs: (_ for _ in ()).throw(error))
    with qtbot.waitSignal(window.modelFailed, timeout=30_000):
        window.open_model(str(other))
    assert window.loading is None and type(error).__name__ in window.message_bar.text()
    monkeypatch.undo()
    usable(window, qtbot)
