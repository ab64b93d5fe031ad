""""Final" for a draft (issue 22, item 3): a Draft run's latents decoded again through the VAE, from the history
strip, give the image a run with the VAE makes, without sampling again; the latents kept are bounded."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from PySide6.QtGui import QImage

from app.history import MAX_DRAFTS, ImageHistory
from app.jobs import Draft, Finished, Unsaved
from app.widgets.history_strip import FINAL_ACTION
from core.metadata.png_files import read_parameters
from core.request import GenerationRequest
from tests.test_app import RUN_TIMEOUT_MS, model_with_preview_decoder, run


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def final_action(window, entry):
    strip = window.history
    item = next(strip.item(i) for i in range(strip.count()) if strip.entry(strip.item(i)) is entry)
    return next(action for action in strip.menu_for_item(item).actions() if action.text() == FINAL_ACTION)


def test_final_on_a_draft_is_the_image_the_vae_makes_and_generate_waits_for_it(open_window, qtbot, tmp_path,
                                                                                 tiny_model):
    window = open_window(model=model_with_preview_decoder(tmp_path, tiny_model))
    history = window.session.image_history
    window.panel.draft.setChecked(True)
    drafted = run(qtbot, window)
    assert isinstance(drafted, Finished) and "Decoder: TAESD" in read_parameters(drafted.paths[0])
    draft_entry = history.entries[0]
    assert draft_entry.path == drafted.paths[0] and draft_entry.draft is not None
    assert draft_entry.draft.latents.dtype == torch.float32 and draft_entry.draft.latents.shape[0] == 1
    action = final_action(window, draft_entry)
    assert action.isEnabled()

    # Final, and at once a Generate with the VAE and the same seed: the worker queues the decode ahead of it
    window.panel.draft.setChecked(False)
    action.trigger()
    assert window.session.final_decodes.running
    normal = run(qtbot, window)
    qtbot.waitUntil(lambda: not window.session.final_decodes.running, timeout=RUN_TIMEOUT_MS)
    assert isinstance(normal, Finished) and normal.request.seed == drafted.request.seed
    finals = [e.path for e in history.entries if e.path not in (drafted.paths[0], normal.paths[0])]
    assert len(finals) == 1 and finals[0] is not None      # a new image in the history, saved
    final = finals[0]

    assert np.array_equal(pixels(final), pixels(normal.paths[0]))             # pixel for pixel
    assert np.abs(pixels(drafted.paths[0]) - pixels(final)).mean() > 1       # and not the draft's pixels
    assert read_parameters(final) == read_parameters(normal.paths[0])        # the PNG a VAE run writes
    assert "Decoder" not in read_parameters(final)
    assert window.message_bar.kind != "error"


def test_final_is_off_for_an_image_that_is_no_draft(open_window, qtbot, tmp_path, tiny_model):
    window = open_window(model=model_with_preview_decoder(tmp_path, tiny_model))
    assert isinstance(run(qtbot, window), Finished)
    entry = window.session.image_history.entries[0]
    assert entry.draft is None and not final_action(window, entry).isEnabled()


def test_final_works_on_an_unsaved_live_draft_and_saves_its_image(open_window, qtbot, tmp_path, tiny_model, folders):
    window = open_window(model=model_with_preview_decoder(tmp_path, tiny_model))
    window.panel.draft.setChecked(True)
    assert isinstance(run(qtbot, window, lambda: window.session.generate(live=True)), Finished)
    entry = window.session.image_history.entries[0]
    assert entry.unsaved is not None and entry.path is None and entry.draft is not None
    with qtbot.waitSignal(window.session.image_history.added, timeout=RUN_TIMEOUT_MS) as added:
        final_action(window, entry).trigger()
    final = added.args[0]
    assert final.path is not None and final.path.parent == folders.output_dir and final.draft is None
    assert "Decoder" not in read_parameters(final.path)


def test_switching_model_makes_final_say_so(open_window, qtbot, tmp_path, tiny_model):
    window = open_window(model=model_with_preview_decoder(tmp_path, tiny_model))
    window.panel.draft.setChecked(True)
    assert isinstance(run(qtbot, window), Finished)
    entry = window.session.image_history.entries[0]
    other = tmp_path / "other.safetensors"
    other.write_bytes(tiny_model.read_bytes())
    window.session.open_model(str(other))
    qtbot.waitUntil(lambda: window.model is not None and window.model.spec == str(other), timeout=60_000)
    assert not final_action(window, entry).isEnabled()
    window.session.image_history.finalRequested.emit(entry)     # as if asked for before the switch
    assert window.message_bar.kind == "warning" and "no longer loaded" in window.message_bar.text()
    assert not window.session.final_decodes.running


def draft_unsaved(i: int) -> tuple[Unsaved, Draft]:
    preview = QImage(8, 8, QImage.Format.Format_RGB32)
    draft = Draft(torch.full((1, 4, 4, 4), float(i)), GenerationRequest(seed=i, decoder="taesd"), "builtin", (7.0,),
                  "fp32")
    return Unsaved(None, preview, f"image {i}", None), draft


def test_the_draft_latents_kept_are_bounded_and_the_newest(qtbot):
    history = ImageHistory()
    history.loaded_spec = lambda: "builtin"
    entries = [history.add_unsaved(*draft_unsaved(i)[:1], draft=draft_unsaved(i)[1]) for i in range(MAX_DRAFTS + 8)]
    assert history.kept_drafts() == MAX_DRAFTS == 32
    assert all(e.draft is None and not history.final_available(e) for e in entries[:8])       # the oldest let go
    assert all(e.draft.request.seed == i and history.final_available(e) for i, e in enumerate(entries) if i >= 8)
    history.remove(entries[-1])
    assert history.kept_drafts() == MAX_DRAFTS - 1 and entries[-1].draft is None
