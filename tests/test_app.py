"""The desktop window, driven as a user drives it (pytest-qt, offscreen) with a real model.

The model is tiny and random (tests/tiny_models.py): its images are noise, but every stage of
the pipeline (text encoder, UNet, sampler, VAE, previews, saving) is the real one. Every window
gets its own data folder, settings file and output folder under tmp_path, and no built-in
model, so nothing here reads or writes the user's real files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication

from app.jobs import Failed, Finished, PreviewMode, Stopped
from app.main import main
from app.settings import open_settings, read
from app.window import MainWindow
from core.loading.preview_decoders import preview_decoder_path, save_preview_decoder
from core.metadata.infotext import to_infotext
from core.metadata.png_files import read_parameters, save_png
from core.nets.preview_decoder import PreviewDecoder, PreviewDecoderConfig
from core.request import GenerationRequest

# Read when pytest-qt creates the QApplication (the first test), not at import: no display needed.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_MS = 120_000


def run(qtbot, window: MainWindow, start=None):
    """Start a run (by `start`, default the Generate button) and return the window's final message."""
    with qtbot.waitSignal(window.jobDone, timeout=RUN_TIMEOUT_MS) as done:
        (start or window.panel.generate_button.click)()
    return done.args[0]


def pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith(".")) if folder.exists() else []


def same_image(a: QImage, b: QImage) -> bool:
    rgb = QImage.Format.Format_RGB32
    return a.convertToFormat(rgb) == b.convertToFormat(rgb)


def drop(window: MainWindow, path: Path) -> None:
    """A real drag-and-drop as Qt delivers it: enter, then drop, with the file's URL."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    point = QPointF(window.width() / 2, window.height() / 2)
    enter = QDragEnterEvent(point.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    event = QDropEvent(point, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, event)


def wait_first_preview(qtbot, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: len(window.shown_steps) >= 1, timeout=RUN_TIMEOUT_MS)


# -- generating -----------------------------------------------------------------------------------

def test_prompt_ctrl_enter_previews_every_step_and_saves_png_with_metadata(open_window, qtbot, folders):
    window = open_window()
    modes = window.panel.preview_mode
    assert modes.currentData() == PreviewMode.AUTO.value        # the default
    modes.setCurrentIndex(modes.findData(PreviewMode.VAE.value))
    qtbot.keyClicks(window.panel.prompt, "a red star on blue")
    shown = []
    window.previewShown.connect(shown.append)

    message = run(qtbot, window, lambda: qtbot.keyClick(window.panel.prompt, Qt.Key.Key_Return,
                                                        Qt.KeyboardModifier.ControlModifier))

    assert isinstance(message, Finished), message
    assert message.previews_sent == 6 and [s.i for s in message.steps] == list(range(6))
    # Every step's preview was either shown or replaced by a newer one (stale frames are dropped).
    assert len(shown) + window.worker.mailbox.dropped == 6
    assert [p.i for p in shown] == sorted({p.i for p in shown}) and shown[-1].i == 5
    assert all(p.image.width() == 64 and p.image.height() == 64 for p in shown)
    [saved] = pngs(folders.output_dir)
    assert message.paths == (saved,)
    text = read_parameters(saved)
    assert text.startswith("a red star on blue\n")
    assert "Steps: 6, Sampler: Euler" in text and "Seed: 1234" in text and "Size: 64x64" in text
    assert "Model: tiny" in text and "Model hash: " in text
    assert window.history.paths() == [saved]
    assert window.preview.has_image() and "6 steps" in window.progress_label.text()
    assert not window.panel.cancel_button.isEnabled()

    # The timeline replays every step's preview, then the final image.
    assert len(message.frames) == 6 and window.timeline.isVisible() and window.timeline.frame_count() == 7
    window.timeline.slider.setValue(0)
    assert same_image(window.preview.image(), message.frames[0]) and window.timeline.label.text() == "step 1/6"
    window.timeline.slider.setValue(6)
    assert same_image(window.preview.image(), message.images[0]) and window.timeline.label.text() == "final image"
    with qtbot.waitSignal(window.jobDone, timeout=RUN_TIMEOUT_MS):
        window.generate()                                        # a new run hides the old timeline
        assert not window.timeline.isVisible()


def test_escape_cancels_mid_run_saves_nothing_and_the_app_stays_usable(open_window, qtbot, folders):
    window = open_window()
    window.panel.steps.setValue(60)
    window.generate()
    wait_first_preview(qtbot, window)
    assert window.panel.cancel_button.isEnabled()

    with qtbot.waitSignal(window.jobDone, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.keyClick(window.panel.prompt, Qt.Key.Key_Escape)
    assert isinstance(done.args[0], Stopped)
    assert 1 <= done.args[0].steps_done < 60
    assert pngs(folders.output_dir) == [] and window.history.count() == 0
    assert not window.panel.cancel_button.isEnabled()

    window.panel.steps.setValue(3)
    assert isinstance(run(qtbot, window), Finished)
    assert len(pngs(folders.output_dir)) == 1


def test_a_new_generate_while_running_cancels_the_old_run_and_starts_the_new(open_window, qtbot, folders):
    window = open_window()
    messages = []
    window.worker.message.connect(messages.append)
    window.panel.steps.setValue(60)
    window.generate()
    wait_first_preview(qtbot, window)
    window.panel.steps.setValue(3)
    message = run(qtbot, window)

    assert isinstance(message, Finished) and len(message.steps) == 3
    assert isinstance(messages[0], Stopped) and messages[0].steps_done < 60
    assert len(pngs(folders.output_dir)) == 1


def test_every_job_gets_exactly_one_final_message_even_if_it_never_started(qtbot, tiny_model, tmp_path):
    from app import models
    from app.jobs import Job, PreviewOptions
    from app.worker import GenerationWorker
    from core.sampling.guidance import GuidanceScale

    loaded = models.load(tiny_model, str(tiny_model))
    worker = GenerationWorker()
    worker.start()
    finals = []
    worker.message.connect(finals.append)
    request = GenerationRequest(prompt="x", steps=60, width=64, height=64, sampler="Euler", model=str(tiny_model))
    try:
        for job_id in (1, 2, 3):    # 2 is replaced by 3 before it can start; 1 and 3 are cancelled
            worker.submit(Job(job_id, request, loaded, tmp_path, GuidanceScale(7), PreviewOptions()))
        worker.cancel()
        qtbot.waitUntil(lambda: len(finals) == 3, timeout=RUN_TIMEOUT_MS)
    finally:
        worker.shutdown()           # a QThread destroyed while running aborts the process
    assert sorted(m.job for m in finals) == [1, 2, 3]
    assert all(isinstance(m, Stopped) for m in finals) and not list(tmp_path.glob("*.png"))


def test_guidance_slider_moved_mid_run_changes_the_following_steps(open_window, qtbot):
    window = open_window()
    window.panel.guidance.setValue(7)
    window.panel.steps.setValue(12)
    window.generate()
    wait_first_preview(qtbot, window)
    with qtbot.waitSignal(window.jobDone, timeout=RUN_TIMEOUT_MS) as done:
        window.panel.guidance.slider.setValue(24)      # 24 ticks of 0.5: guidance 12
    message = done.args[0]

    assert isinstance(message, Finished)
    used = [step.guidance for step in message.steps]
    assert used[0] == 7.0 and used[-1] == 12.0
    switch = used.index(12.0)
    assert switch >= 1 and set(used[:switch]) == {7.0} and set(used[switch:]) == {12.0}
    last = f"step {switch + 1}" if switch == 11 else f"steps {switch + 1}-12"
    written = read_parameters(message.paths[0])   # the saved image says how it was really made
    assert f'Guidance schedule: "7 ({"step 1" if switch == 1 else f"steps 1-{switch}"}), 12 ({last})"' in written
    assert "guidance 12" in window.progress_label.text() or window.progress_label.text().startswith("done")


def test_live_mode_regenerates_after_edits_with_the_same_seed(open_window, qtbot):
    window = open_window()
    assert not window.panel.live.isChecked()                  # off for a model that is not the built-in
    qtbot.keyClicks(window.panel.prompt, "a red star")
    qtbot.wait(600)
    assert window.job is None and window.last_message is None  # nothing happens while Live is off

    window.panel.live.click()
    finals = []
    window.jobDone.connect(finals.append)
    with qtbot.waitSignal(window.jobDone, timeout=RUN_TIMEOUT_MS):
        qtbot.keyClicks(window.panel.prompt, " on blue")       # no Generate pressed
    first = finals[-1]
    assert isinstance(first, Finished) and first.request.prompt == "a red star on blue"
    with qtbot.waitSignal(window.jobDone, timeout=RUN_TIMEOUT_MS):
        window.panel.guidance.slider.setValue(6)               # a slider is an edit too
    second = finals[-1]
    assert isinstance(second, Finished) and second.request.guidance == 3.0
    assert second.request.seed == first.request.seed           # Random mode, but Live keeps the seed
    assert read(window.settings, "form/live", False) is True   # the user's choice is remembered


def test_gui_thread_never_stalls_during_generation(open_window, qtbot):
    window = open_window()
    window.panel.steps.setValue(12)
    gaps, last = [], [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    probe = QTimer()
    probe.setInterval(10)
    probe.timeout.connect(tick)
    probe.start()
    message = run(qtbot, window)
    probe.stop()

    assert isinstance(message, Finished)
    assert len(gaps) > 20
    print(f"\nGUI thread: {len(gaps)} probe ticks over {message.seconds:.2f} s, max gap {max(gaps) * 1000:.1f} ms")
    assert max(gaps) < 0.100


def test_preview_off_still_reports_every_step(open_window, qtbot):
    window = open_window()
    window.panel.preview_mode.setCurrentIndex(window.panel.preview_mode.findData(PreviewMode.OFF.value))
    shown = []
    window.previewShown.connect(shown.append)
    message = run(qtbot, window)

    assert isinstance(message, Finished) and len(message.steps) == 6
    assert shown and all(p.image is None for p in shown)
    assert window.preview.has_image()       # the finished image is still shown


def test_noisy_preview_shows_other_frames_but_never_changes_the_image(open_window, qtbot):
    window = open_window()
    frames = {}
    window.previewShown.connect(lambda p: frames.setdefault(window.panel.preview_noisy.isChecked(), []).append(p))
    window.panel.preview_noisy.setChecked(True)
    noisy = run(qtbot, window)
    window.panel.preview_noisy.setChecked(False)
    clean = run(qtbot, window)

    assert noisy.images[0] == clean.images[0]             # same seed, same image: previews are only views
    first_noisy, first_clean = frames[True][0], frames[False][0]
    assert first_noisy.i == first_clean.i == 0 and first_noisy.image != first_clean.image


def test_closing_mid_run_cancels_waits_for_the_worker_and_saves_nothing(open_window, qtbot, folders):
    window = open_window()
    window.panel.steps.setValue(120)
    window.generate()
    wait_first_preview(qtbot, window)
    started = time.perf_counter()
    window.close()

    assert window.worker._runner.isFinished()             # the thread ended before close() returned
    assert time.perf_counter() - started < 10
    assert pngs(folders.output_dir) == []
    assert open_settings(folders).value("form/steps") in (120, "120")


# -- img2img --------------------------------------------------------------------------------------

def test_a_dropped_image_file_becomes_the_init_image(open_window, qtbot, tmp_path, folders):
    window = open_window()
    picture = tmp_path / "photo.png"
    Image.new("RGB", (96, 80), (200, 40, 40)).save(picture)
    with qtbot.waitSignal(window.initImageChanged, timeout=30_000):
        drop(window, picture)

    well = window.panel.init_well
    assert well.path == picture and not well.thumb.pixmap().isNull()
    assert (window.panel.width.value(), window.panel.height.value()) == (96, 80)
    well.set_strength(0.5)
    message = run(qtbot, window)
    assert isinstance(message, Finished)
    assert message.request.init_image == str(picture)
    assert len(message.steps) == 3          # strength 0.5 of 6 steps
    assert "Denoising strength: 0.5" in read_parameters(message.paths[0])
    assert window.message_bar.text() == ""  # no metadata, so no offer to restore


def test_a_dropped_png_with_metadata_offers_to_restore_its_settings(open_window, qtbot, tmp_path):
    window = open_window()
    made = GenerationRequest(prompt="a castle on a hill", negative_prompt="fog", steps=13, guidance=9.5,
                             sampler="Euler a", schedule="SGM Uniform", seed=4242, width=64, height=64)
    png = save_png(Image.new("RGB", (64, 64), "gray"), tmp_path / "castle.png", to_infotext(made, "tiny", None, None))
    with qtbot.waitSignal(window.initImageChanged, timeout=30_000):
        drop(window, png)
    qtbot.waitUntil(lambda: window.message_bar.button("Restore") is not None, timeout=5_000)
    assert "a castle on a hill" in window.message_bar.text()
    assert window.panel.prompt.toPlainText() == ""          # an offer, not done yet

    window.message_bar.button("Restore").click()
    p = window.panel
    assert p.prompt.toPlainText() == "a castle on a hill" and p.negative.toPlainText() == "fog"
    assert p.steps.value() == 13 and p.guidance.value() == 9.5 and p.sampler.currentText() == "Euler a"
    assert p.schedule.currentText() == "SGM Uniform" and p.request().schedule == "SGM Uniform"
    assert p.seed.edit.text() == "4242" and not p.seed.random.isChecked()
    assert window.panel.init_well.path == png


def test_pasting_an_image_saves_it_in_the_data_folder_as_the_init_image(open_window, qtbot, folders):
    window = open_window()
    image = QImage(72, 64, QImage.Format.Format_RGB32)
    image.fill(Qt.GlobalColor.darkCyan)
    QApplication.clipboard().setImage(image)
    with qtbot.waitSignal(window.initImageChanged, timeout=30_000) as changed:
        window.paste()
    path = changed.args[0]
    assert path.parent == folders.pasted_dir and path.is_file()
    assert Image.open(path).size == (72, 64)
    assert window.panel.init_well.path == path


def test_an_init_image_that_vanished_is_reported_and_nothing_breaks(open_window, qtbot, tmp_path):
    window = open_window()
    picture = tmp_path / "gone.png"
    Image.new("RGB", (64, 64), "white").save(picture)
    with qtbot.waitSignal(window.initImageChanged, timeout=30_000):
        drop(window, picture)
    picture.unlink()
    message = run(qtbot, window)
    assert isinstance(message, Failed) and "gone.png" in message.message
    assert window.message_bar.kind == "error" and "gone.png" in window.message_bar.text()

    window.panel.init_well.clear_button.click()
    assert isinstance(run(qtbot, window), Finished)


def test_an_unreadable_image_drop_shows_a_message(open_window, qtbot, tmp_path):
    window = open_window()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    drop(window, bad)
    qtbot.waitUntil(lambda: window.message_bar.kind == "error" and "broken.png" in window.message_bar.text(),
                    timeout=10_000)
    assert window.panel.init_well.path is None


# -- models ---------------------------------------------------------------------------------------

def test_no_model_then_a_bad_model_then_a_good_one(open_window, qtbot, tmp_path, tiny_model, folders):
    window = open_window(model=None, small=False)
    qtbot.waitUntil(lambda: "not installed" in window.message_bar.text(), timeout=10_000)
    assert window.model is None and window.message_bar.button("Open model file…") is not None
    window.generate()          # without a model: a message, not a crash
    assert "No model is loaded" in window.message_bar.text()

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(os.urandom(256))
    with qtbot.waitSignal(window.modelFailed, timeout=30_000):
        drop(window, broken)
    assert window.message_bar.kind == "error" and "broken" in window.message_bar.text()
    assert window.model is None

    with qtbot.waitSignal(window.modelLoaded, timeout=60_000):
        drop(window, tiny_model)
    assert window.model.diffusion.name == "tiny" and "tiny" in window.model_label.text()
    assert window.device_label.text() == "CPU"
    window.panel.width.setValue(64)
    window.panel.height.setValue(64)
    window.panel.steps.setValue(2)
    assert isinstance(run(qtbot, window), Finished)


def test_a_start_model_that_fails_says_why_and_offers_try_again(qtbot, event_loop_on_qt, folders, tiny_model,
                                                                monkeypatch, caplog):
    """The frozen app once failed to build its text encoder (a dependency's data file was not bundled):
    the window must name that reason, keep naming it when Generate is pressed, log the traceback,
    and offer "Try again" and "Open model file…" in the banner and the model picker."""
    from app import models
    from app.widgets.model_picker import RETRY

    real_load, calls = models.load, []

    def broken_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise FileNotFoundError("Cannot load dependency data, is `kernels` correctly installed?")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(models, "load", broken_once)
    window = MainWindow(folders, open_settings(folders), builtin=tiny_model)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.modelFailed, timeout=30_000):
        window.show()
    bar = window.message_bar
    assert "Built-in model" in bar.text() and "kernels" in bar.text() and bar.kind == "error"
    assert bar.button("Try again") is not None and bar.button("Open model file…") is not None
    assert any("kernels" in (r.exc_text or "") for r in caplog.records), "no traceback in the log"
    picker = window.panel.model_picker
    assert picker.findData(RETRY) >= 0 and "Built-in model" in picker.itemText(picker.findData(RETRY))

    window.generate()          # the reason stays in view, not "no model is loaded"
    assert "kernels" in bar.text() and bar.button("Try again") is not None

    with qtbot.waitSignal(window.modelLoaded, timeout=60_000):
        picker.activated.emit(picker.findData(RETRY))
    assert window.model is not None and picker.findData(RETRY) < 0 and window.load_failure is None


def test_models_folder_is_scanned_on_start(open_window, folders, tiny_model):
    folders.models_dir.mkdir(parents=True)
    (folders.models_dir / "mine.safetensors").write_bytes(tiny_model.read_bytes())
    window = open_window(model=None, small=False)
    assert str(folders.models_dir / "mine.safetensors") in window.panel.model_picker.specs()


# -- the tiny preview decoder ----------------------------------------------------------------------

def model_with_preview_decoder(folder: Path, tiny_model: Path, decoder_bytes: bytes | None = None) -> Path:
    """A copy of the tiny model with `tiny.preview.safetensors` beside it: a random decoder made for
    its VAE (4 latent channels, 2x), or `decoder_bytes` as they are."""
    path = folder / "tiny.safetensors"
    path.write_bytes(tiny_model.read_bytes())
    if decoder_bytes is None:
        save_preview_decoder(preview_decoder_path(path), PreviewDecoder(PreviewDecoderConfig(latent_channels=4, factor=2, width=8)))
    else:
        preview_decoder_path(path).write_bytes(decoder_bytes)
    return path


def test_a_preview_decoder_beside_the_model_loads_with_it_in_either_precision(tiny_model, tmp_path):
    import torch

    from app import models
    from app.preview import TinyPreview, make_previewer
    from core.generate import StepInfo

    path = model_with_preview_decoder(tmp_path, tiny_model)
    for precision in ("float32", "bfloat16"):
        loaded = models.load(path, str(path), precision=precision)
        assert loaded.preview_decoder is not None and loaded.preview_note is None
        previewer = make_previewer(PreviewMode.TINY, loaded)
        assert isinstance(previewer, TinyPreview)
        x = torch.randn(1, 4, 8, 8, dtype=loaded.diffusion.dtype)     # latents as the sampler holds them
        image = previewer(StepInfo(1, 6, x, x, 1.0, 7.0), noisy=False)
        assert (image.width(), image.height()) == (16, 16)       # the tiny VAE's 2x


def test_a_broken_preview_decoder_leaves_the_model_working_with_the_fast_preview(open_window, qtbot, tmp_path,
                                                                                 tiny_model):
    path = model_with_preview_decoder(tmp_path, tiny_model, bytes(range(256)))   # a header length of ~500 PB
    window = open_window(model=path)
    assert window.model.diffusion.name == "tiny" and window.model.preview_decoder is None
    assert "none loaded" in window.panel.preview_mode.toolTip()
    assert window.message_bar.kind == "warning"
    assert "tiny.preview.safetensors" in window.message_bar.text() and "fast map" in window.message_bar.text()
    modes = window.panel.preview_mode
    modes.setCurrentIndex(modes.findData(PreviewMode.TINY.value))
    message = run(qtbot, window)

    assert isinstance(message, Finished) and len(message.frames) == 6
    assert all(f is not None and f.width() == 32 for f in message.frames)   # the fast map: 1 px per latent px


def test_tiny_decoder_previews_are_full_size_and_the_choice_is_remembered(open_window, qtbot, tmp_path,
                                                                         tiny_model):
    path = model_with_preview_decoder(tmp_path, tiny_model)
    first = open_window(model=path)
    assert first.model.preview_decoder is not None and "preview" not in first.message_bar.text()
    modes = first.panel.preview_mode
    assert modes.toolTip() == "Tiny decoder: the model's own (its .preview.safetensors)"
    modes.setCurrentIndex(modes.findData(PreviewMode.TINY.value))
    message = run(qtbot, first)
    assert isinstance(message, Finished) and len(message.frames) == 6
    assert all(f is not None and (f.width(), f.height()) == (64, 64) for f in message.frames)
    first.close()

    second = open_window(model=path, small=False)
    assert second.panel.preview_choice() == (PreviewMode.TINY, False)


# -- history and settings -------------------------------------------------------------------------

def test_output_folder_can_be_changed_and_is_remembered(open_window, qtbot, folders, tmp_path):
    first = open_window()
    elsewhere = tmp_path / "elsewhere"
    first.set_output_dir(elsewhere)
    assert first.output_button.text() == "Saving to elsewhere"
    first.panel.prompt.setPlainText("a red star")
    message = run(qtbot, first)
    assert [p.parent for p in message.paths] == [elsewhere] and not pngs(folders.output_dir)
    first.close()

    second = open_window()
    assert second.paths.output_dir == elsewhere
    qtbot.waitUntil(lambda: second.history.paths() == list(message.paths), timeout=10_000)


def test_restart_restores_settings_and_history(open_window, qtbot, folders, tiny_model):
    first = open_window()
    p = first.panel
    p.prompt.setPlainText("lighthouse at dusk")
    p.negative.setPlainText("blurry")
    p.guidance.setValue(9)
    p.steps.setValue(3)
    p.schedule.setCurrentText("Karras")
    p.preview_mode.setCurrentIndex(p.preview_mode.findData(PreviewMode.OFF.value))
    first.resize(760, 560)       # inside the offscreen screen (800×600)
    message = run(qtbot, first)
    first.close()

    second = open_window(small=False)
    qtbot.waitUntil(lambda: second.history.count() == 1, timeout=10_000)
    q = second.panel
    assert q.prompt.toPlainText() == "lighthouse at dusk" and q.negative.toPlainText() == "blurry"
    assert q.guidance.value() == 9 and q.steps.value() == 3 and q.sampler.currentText() == "Euler"
    assert q.schedule.currentText() == "Karras"
    assert (q.width.value(), q.height.value()) == (64, 64)
    assert q.preview_choice() == (PreviewMode.OFF, False)
    assert q.seed.edit.text() == "1234" and not q.seed.random.isChecked()
    assert second.model.spec == str(tiny_model)
    assert second.history.paths() == list(message.paths)
    assert (second.width(), second.height()) == (760, 560)


def test_speed_controls_reach_the_png_and_are_remembered(open_window, qtbot, folders):
    first = open_window()
    speed = first.panel.speedups
    assert speed.deep_cache.text() == "Deep cache off" and speed.cutoff.text() == "Guided to the end"
    speed.deep_cache.setValue(3)
    speed.cutoff.setValue(30)
    message = run(qtbot, first)
    assert isinstance(message, Finished)
    request = message.request
    assert (request.deep_cache_interval, request.guidance_cutoff) == (3, 0.3)
    text = read_parameters(message.paths[0])
    assert "Deep cache interval: 3" in text and "Guidance cut-off: 0.3" in text
    # A restored image brings the settings without a box of their own too, and they are used.
    first.panel.apply_request(GenerationRequest(deep_cache_interval=2, deep_cache_blocks=2, deep_cache_start=0.5))
    restored = first.build_request(0)
    assert (restored.deep_cache_interval, restored.deep_cache_blocks, restored.deep_cache_start,
            restored.guidance_cutoff) == (2, 2, 0.5, 0.0)
    first.close()

    second = open_window(small=False)
    held = second.panel.request()
    assert (held.deep_cache_interval, held.deep_cache_blocks, held.deep_cache_start, held.guidance_cutoff) == (
        2, 2, 0.5, 0.0)


def test_history_menu_reuses_parameters_uses_as_init_and_deletes_to_trash(open_window, qtbot, folders,
                                                                        tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))     # the trash, away from the real home
    window = open_window()
    window.panel.prompt.setPlainText("a blue whale")
    [saved] = run(qtbot, window).paths
    window.panel.prompt.setPlainText("something else")
    window.panel.steps.setValue(40)

    actions = {a.text(): a for a in window.history.menu_for(saved).actions()}
    assert {"View large", "Use as init image", "Reuse parameters", "Copy image", "Copy parameters",
            "Show in folder", "Delete"} <= set(actions)
    actions["Reuse parameters"].trigger()
    assert window.panel.prompt.toPlainText() == "a blue whale" and window.panel.steps.value() == 6
    actions["Copy parameters"].trigger()
    assert QApplication.clipboard().text() == read_parameters(saved)
    with qtbot.waitSignal(window.initImageChanged, timeout=30_000):
        actions["Use as init image"].trigger()
    assert window.panel.init_well.path == saved

    window.history.confirm_delete = lambda path: True
    actions["Delete"].trigger()
    assert not saved.exists() and window.history.count() == 0


# -- the entry point ------------------------------------------------------------------------------

def test_command_line_arguments_go_to_the_cli(tiny_model, capsys):
    assert main(["inspect", str(tiny_model), "--json"]) == 0
    assert '"family": "sd1"' in capsys.readouterr().out


def test_latentdesk_without_arguments_opens_the_window_and_exits_cleanly(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LATENTDESK_DATA_DIR=str(tmp_path / "data"),
               LATENTDESK_OUTPUT_DIR=str(tmp_path / "out"))
    result = subprocess.run([sys.executable, "-c", "import sys; from app.main import main; "
                             "sys.exit(main(['app', '--smoke-test']))"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Latent Desk window opened" in result.stdout
    assert (tmp_path / "data" / "settings.ini").is_file()     # settings went to the data folder given


def _run_main(args: list[str], tmp_path: Path, prelude: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LATENTDESK_DATA_DIR=str(tmp_path / "data"),
               LATENTDESK_OUTPUT_DIR=str(tmp_path / "out"))
    return subprocess.run([sys.executable, "-c", f"import sys; {prelude}from app.main import main; "
                           f"sys.exit(main({args!r}))"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_self_test_generates_through_the_window_and_checks_the_image(tiny_model, tmp_path):
    result = _run_main(["--self-test", "--model", str(tiny_model)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "self-test passed" in result.stdout and "PNG with parameters" in result.stdout
    assert not (tmp_path / "out").exists()        # it wrote to a throwaway folder, not the user's

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    result = _run_main(["--self-test", "--model", str(broken)], tmp_path)
    assert result.returncode == 1
    assert "self-test FAILED: Could not open the model" in result.stderr


def test_a_windowed_build_without_stdout_keeps_its_messages_in_a_log(tmp_path):
    result = _run_main(["inspect", str(tmp_path / "missing.safetensors")], tmp_path,
                       prelude="sys.stdout = sys.stderr = None; ")
    assert result.returncode != 0 and result.stdout == result.stderr == ""
    log = (tmp_path / "data" / "latentdesk.log").read_text(encoding="utf-8")
    assert "missing.safetensors" in log


def test_bf16_reloads_the_model_in_bfloat16_records_it_and_is_remembered(open_window, qtbot, folders):
    import torch
    first = open_window()
    assert first.model.diffusion.dtype == torch.float32
    with qtbot.waitSignal(first.modelLoaded, timeout=60_000):
        first.panel.speedups.half.setChecked(True)
    assert first.model.diffusion.dtype == torch.bfloat16 and "bfloat16" in first.model_label.text()
    message = run(qtbot, first)
    assert isinstance(message, Finished)
    assert "Precision: bfloat16" in read_parameters(message.paths[0])
    first.close()

    second = open_window(small=False)
    assert second.panel.speedups.half.isChecked() and second.model.diffusion.dtype == torch.bfloat16
    with qtbot.waitSignal(second.modelLoaded, timeout=60_000):
        second.panel.speedups.half.setChecked(False)
    assert second.model.diffusion.dtype == torch.float32 and "bfloat16" not in second.model_label.text()
