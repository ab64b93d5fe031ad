"""The window with few-step models (issue 22): a Turbo model opens with its own settings and Live on, the user
can say what a model is and it is remembered, and Draft decodes the final image with the tiny decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.jobs import Finished
from core.metadata.png_files import read_parameters
from tests.test_app import model_with_preview_decoder, pngs, run


def renamed(tiny_model: Path, folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(tiny_model.read_bytes())
    return path


def test_a_turbo_model_opens_with_its_recipe_and_live_on(open_window, tmp_path, tiny_model):
    window = open_window(model=renamed(tiny_model, tmp_path, "my_turbo_model.safetensors"), small=False)
    p = window.panel
    assert (p.sampler.currentText(), p.schedule.currentText(), p.steps.value(), p.guidance.value()) == \
        ("Euler a", "SGM Uniform", 1, 1.0)
    assert p.model_type.currentData() == "turbo" and "the file's name" in p.model_type.toolTip()
    assert p.live.isChecked()                 # 1 step: instant, so Live is on until the user says otherwise


def test_a_standard_model_keeps_its_settings_and_live_off(open_window, tmp_path, tiny_model):
    window = open_window(model=renamed(tiny_model, tmp_path, "plain.safetensors"), small=False)
    assert window.panel.model_type.currentData() == "standard" and not window.panel.live.isChecked()
    assert window.panel.steps.value() != 1


def test_the_users_type_for_a_model_is_applied_and_remembered(open_window, qtbot, tmp_path, tiny_model):
    path = renamed(tiny_model, tmp_path, "mystery.safetensors")
    first = open_window(model=path, small=False)
    p = first.panel
    p.model_type.setCurrentIndex(p.model_type.findData("lightning"))
    p.model_type.activated.emit(p.model_type.currentIndex())          # as a click picks it
    assert (p.sampler.currentText(), p.schedule.currentText(), p.steps.value(), p.guidance.value()) == \
        ("Euler", "SGM Uniform", 4, 1.0)
    assert "Your choice" in p.model_type.toolTip()
    first.close()
    second = open_window(model=path, small=False)
    assert second.panel.model_type.currentData() == "lightning" and second.panel.steps.value() == 4
    # "Standard" is a choice too: a model named turbo that is not one
    turbo = renamed(tiny_model, tmp_path, "not_really_turbo.safetensors")
    third = open_window(model=turbo, small=False)
    box = third.panel.model_type
    box.setCurrentIndex(box.findData("standard"))
    box.activated.emit(box.currentIndex())
    assert third.panel.steps.value() == third.model.diffusion.family.default_steps


def test_draft_decodes_with_the_tiny_decoder_and_says_so(open_window, qtbot, tmp_path, tiny_model, folders):
    window = open_window(model=model_with_preview_decoder(tmp_path, tiny_model))
    draft = window.panel.draft
    assert draft.isEnabled()
    message = run(qtbot, window)
    assert isinstance(message, Finished)
    final = np.asarray(Image.open(pngs(folders.output_dir)[-1]).convert("RGB")).astype(int)
    draft.setChecked(True)
    assert window.session.form.decoder == "taesd"
    message = run(qtbot, window)
    assert isinstance(message, Finished)
    saved = pngs(folders.output_dir)[-1]
    drafted = np.asarray(Image.open(saved).convert("RGB")).astype(int)
    assert drafted.shape == final.shape and np.abs(drafted - final).mean() > 1   # another decoder drew it
    assert "Decoder: TAESD" in read_parameters(saved)


def test_draft_is_off_without_a_tiny_decoder(open_window):
    window = open_window()
    assert not window.panel.draft.isEnabled() and window.session.form.decoder == "vae"


@pytest.mark.parametrize("kind", ["turbo", "lightning", "hyper", "lcm", "standard"])
def test_every_type_in_the_box_is_a_setting_the_engine_takes(open_window, tmp_path, tiny_model, kind):
    from core.request import check_request
    window = open_window(model=renamed(tiny_model, tmp_path, "m.safetensors"), small=False)
    box = window.panel.model_type
    box.setCurrentIndex(box.findData(kind))
    box.activated.emit(box.currentIndex())
    check_request(window.panel.request())


def test_an_lcm_model_rests_the_negative_prompt_box_and_the_next_model_gets_it_back(open_window, qtbot, tmp_path,
                                                                                   tiny_model):
    from tests.tiny_models import write_lcm_folder

    window = open_window(model=write_lcm_folder(tmp_path / "lcm"), small=False)
    box = window.panel.negative
    assert window.panel.model_type.currentData() == "lcm"
    note = window.panel.negative_unused
    assert not box.isEnabled() and note.isVisible() and "learnt its guidance" in note.text()
    box.setPlainText("blurry")               # text typed for another model stays
    window.session.open_model(str(tiny_model))
    qtbot.waitUntil(lambda: window.model.spec == str(tiny_model), timeout=60_000)
    assert box.isEnabled() and not note.isVisible()
    assert box.toPlainText() == "blurry" and window.panel.request().negative_prompt == "blurry"
