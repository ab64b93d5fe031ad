"""The LoRA panel in the window (issue 23, step 5), driven as a user drives it with the tiny SD1 model:
the LoRAs and embeddings found in the folders are listed and searched, an added LoRA's weight and
switch reach the request and the image, `<lora:` completes in the prompt, a restored PNG re-selects its
LoRAs and names the missing ones, the choice survives a restart, and a hostile LoRA file is a message,
not a broken window.

The LoRA files are written here in kohya's layout (`lora_unet_<diffusers module path>` with
`.lora_down.weight` / `.lora_up.weight`), the form tests/test_lora.py checks against diffusers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from PySide6.QtCore import Qt
from safetensors.torch import save_file

from app.jobs import Failed, Finished
from app.widgets.lora_panel import LoraPanel
from core.metadata.infotext import to_infotext
from core.metadata.png_files import read_parameters, save_png
from core.request import GenerationRequest
from tests.test_app import run, same_image

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# The tiny SD1 UNet's first self-attention query (32 channels wide), as kohya names it.
Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
# The second text encoder's layers exist only in SDXL: a LoRA with them is for another family.
SDXL_TE2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"


def lora_file(path: Path, down: torch.Tensor | None = None, up: torch.Tensor | None = None, key: str = Q) -> Path:
    g = torch.Generator().manual_seed(len(path.name))
    down = down if down is not None else torch.randn(4, 32, generator=g)
    up = up if up is not None else torch.randn(32, 4, generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{key}.lora_down.weight": down.contiguous(), f"{key}.lora_up.weight": up.contiguous()}, path)
    return path


def placeholder(path: Path) -> Path:
    """A file the folder scan lists by name (its contents are read only when it is used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def wait_for_loras(qtbot, window, names: list[str]) -> None:
    qtbot.waitUntil(lambda: window.panel.loras.available() == names, timeout=10_000)


# -- what is found, and the search ------------------------------------------------------------------

def test_the_loras_and_embeddings_of_every_folder_are_listed_and_the_search_filters(
        open_window, qtbot, folders, tmp_path, monkeypatch):
    placeholder(folders.models_dir / "loras" / "Inkwash.safetensors")
    placeholder(folders.models_dir / "loras" / "styles" / "pixel-art_v2.safetensors")    # subfolders count
    placeholder(folders.models_dir / "loras" / "old.pt")                                  # a pickle: never listed
    placeholder(folders.models_dir / "embeddings" / "easynegative.safetensors")
    env_root = tmp_path / "from-env"
    placeholder(env_root / "loras" / "film_grain.safetensors")
    webui = tmp_path / "webui"              # an A1111 install the user added: its Lora and embeddings folders
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    placeholder(webui / "models" / "Lora" / "detail_tweaker.safetensors")
    placeholder(webui / "embeddings" / "bad-hands-5.safetensors")
    monkeypatch.setenv("LATENTDESK_MODEL_DIRS", str(env_root))

    window = open_window(model=None)
    window.session.model_folders.add(webui)
    loras = window.panel.loras
    wait_for_loras(qtbot, window, ["detail_tweaker", "film_grain", "Inkwash", "pixel-art_v2"])
    assert [loras.embeddings.item(i).text() for i in range(loras.embeddings.count())] == [
        "bad-hands-5", "easynegative"]
    assert window.session.model_folders.addons.loras["Inkwash"] == folders.models_dir / "loras" / "Inkwash.safetensors"

    qtbot.keyClicks(loras.search, "INK")         # as you type, ignoring case
    assert loras.shown() == ["Inkwash"]
    loras.search.clear()
    qtbot.keyClicks(loras.search, "a")
    assert loras.shown() == ["detail_tweaker", "film_grain", "Inkwash", "pixel-art_v2"]
    qtbot.keyClicks(loras.search, "i")           # "ai": detail_tweaker, film_grain
    assert loras.shown() == ["detail_tweaker", "film_grain"]
    qtbot.keyClick(loras.search, Qt.Key.Key_Return)      # Enter adds the first one left
    assert window.panel.request().loras == (("detail_tweaker", 1.0),)


def test_filtering_five_thousand_loras_takes_under_100_ms(qtbot):
    panel = LoraPanel()
    qtbot.addWidget(panel)
    panel.show()
    names = [f"{style}_{i:04d}_v{i % 7}" for i, style in zip(range(5000), ["anime", "photo", "ink", "clay"] * 1250,
                                                              strict=True)]
    panel.set_found(names, [])
    panel.browse.setChecked(True)       # the list on screen: its layout is part of the cost
    assert panel.found.isVisible()
    timings = []
    for text in ("i", "in", "ink", "ink_01", "", "clay_4999"):
        started = time.perf_counter()
        panel.search.setText(text)
        qtbot.wait(1)               # the view lays out the rows left
        timings.append(time.perf_counter() - started)
    assert panel.shown() == ["clay_4999_v1"]
    assert max(timings) < 0.1, timings
    panel.search.setText("ink_01")
    assert panel.shown() == sorted((n for n in names if "ink_01" in n), key=str.casefold)


def test_the_list_opens_while_searching_and_a_new_file_is_found_on_looking_again(open_window, qtbot, folders):
    placeholder(folders.models_dir / "loras" / "inkwash.safetensors")
    window = open_window(model=None)
    loras = window.panel.loras
    wait_for_loras(qtbot, window, ["inkwash"])
    assert not loras.found.isVisible()          # one line of the form until it is wanted
    qtbot.keyClicks(loras.search, "ink")
    assert loras.found.isVisible()
    loras.search.clear()
    assert not loras.found.isVisible()
    placeholder(folders.models_dir / "loras" / "film_grain.safetensors")
    loras.rescan.click()
    wait_for_loras(qtbot, window, ["film_grain", "inkwash"])


# -- the request and the image ----------------------------------------------------------------------

def test_an_added_lora_and_its_weight_reach_the_request_and_off_leaves_it_out(open_window, qtbot, folders):
    placeholder(folders.models_dir / "loras" / "inkwash.safetensors")
    window = open_window(model=None)
    wait_for_loras(qtbot, window, ["inkwash"])
    loras = window.panel.loras
    loras.found.activated.emit(loras.filtered.index(0, 0))       # a double-click (or Enter) on the name
    row = loras.rows[0]
    assert window.build_request(5).loras == (("inkwash", 1.0),)
    row.weight.setValue(0.65)
    assert window.build_request(5).loras == (("inkwash", 0.65),)
    assert row.slider.value() == 13                     # 0.65 in steps of 0.05
    row.slider.setValue(-30)
    assert window.build_request(5).loras == (("inkwash", -1.5),)
    row.weight.setValue(7.25)                           # past the slider's end: the box rules, the slider stays
    assert window.build_request(5).loras == (("inkwash", 7.25),) and row.slider.value() == row.slider.maximum()
    row.on.setChecked(False)
    assert window.build_request(5).loras == ()
    row.on.setChecked(True)
    row.remove.click()
    assert window.build_request(5).loras == () and loras.rows == []


def test_a_panel_lora_changes_the_image_is_recorded_in_the_png_and_removing_it_restores_the_image(
        open_window, qtbot, folders):
    lora_file(folders.models_dir / "loras" / "inkwash.safetensors", up=torch.full((32, 4), 2.0))
    window = open_window()
    wait_for_loras(qtbot, window, ["inkwash"])
    window.panel.prompt.setPlainText("a red star")
    plain = run(qtbot, window)
    assert isinstance(plain, Finished), plain

    window.panel.loras.add("inkwash", 0.8)
    with_lora = run(qtbot, window)
    assert isinstance(with_lora, Finished), with_lora
    assert with_lora.request.loras == (("inkwash", 0.8),)
    assert not same_image(plain.images[0], with_lora.images[0])
    text = read_parameters(with_lora.paths[0])
    assert 'LoRAs: "inkwash:0.8"' in text or "LoRAs: inkwash:0.8" in text
    assert "Lora hashes:" in text and "inkwash: " in text

    window.panel.loras.rows[0].on.setChecked(False)
    again = run(qtbot, window)
    assert isinstance(again, Finished) and same_image(plain.images[0], again.images[0])   # exactly undone


# -- the prompt box ---------------------------------------------------------------------------------

def test_typing_lora_in_the_prompt_offers_the_names_and_completes_the_tag(open_window, qtbot, folders):
    for name in ("inkwash", "pink_clouds", "film_grain"):
        placeholder(folders.models_dir / "loras" / f"{name}.safetensors")
    window = open_window(model=None)
    wait_for_loras(qtbot, window, ["film_grain", "inkwash", "pink_clouds"])
    prompt = window.panel.prompt
    prompt.setFocus()
    qtbot.keyClicks(prompt, "a cat, <lora:")
    popup = prompt.completer.popup()
    qtbot.waitUntil(popup.isVisible, timeout=2_000)
    model = prompt.completer.completionModel()
    assert [model.index(i, 0).data() for i in range(model.rowCount())] == ["film_grain", "inkwash", "pink_clouds"]
    qtbot.keyClicks(prompt, "INK")              # anywhere in the name, any case
    assert [model.index(i, 0).data() for i in range(model.rowCount())] == ["inkwash", "pink_clouds"]
    qtbot.keyClick(popup, Qt.Key.Key_Return)
    assert prompt.toPlainText() == "a cat, <lora:inkwash:1>"
    assert not popup.isVisible()
    qtbot.keyClicks(prompt, " and <hypernet:")   # another kind of tag offers nothing
    assert not popup.isVisible()


def test_clicking_an_embedding_writes_it_into_the_prompt_box_typed_in_last(open_window, qtbot, folders):
    placeholder(folders.models_dir / "embeddings" / "easynegative.safetensors")
    window = open_window(model=None)
    chips = window.panel.loras.embeddings
    qtbot.waitUntil(lambda: chips.count() == 1, timeout=10_000)
    p = window.panel
    p.negative.setPlainText("blurry")
    p.negative.setFocus()
    p.negative.moveCursor(p.negative.textCursor().MoveOperation.End)
    qtbot.waitUntil(p.negative.hasFocus, timeout=2_000)
    rect = chips.visualItemRect(chips.item(0))
    qtbot.mouseClick(chips.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert p.negative.toPlainText() == "blurry, easynegative"
    assert p.prompt.toPlainText() == ""


def test_an_embedding_clicked_into_the_prompt_is_used_and_recorded(open_window, qtbot, folders):
    """A1111's emb_params file, as wide as the tiny SD1 text encoder (64); its name is no CLIP word."""
    path = folders.models_dir / "embeddings" / "zqstyle.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(2, 64, generator=torch.Generator().manual_seed(3)) * 0.5}, path)
    window = open_window()
    chips = window.panel.loras.embeddings
    qtbot.waitUntil(lambda: chips.count() == 1, timeout=10_000)
    window.panel.prompt.setPlainText("a red star")
    window.panel.prompt.setFocus()
    window.panel.prompt.moveCursor(window.panel.prompt.textCursor().MoveOperation.End)
    chips.itemClicked.emit(chips.item(0))
    assert window.panel.prompt.toPlainText() == "a red star, zqstyle"
    done = run(qtbot, window)
    assert isinstance(done, Finished), done
    assert "TI hashes:" in read_parameters(done.paths[0]) and "zqstyle: " in read_parameters(done.paths[0])


# -- restoring, remembering -------------------------------------------------------------------------

def test_restoring_a_png_reselects_its_loras_and_names_the_missing_ones(open_window, qtbot, folders, tmp_path):
    placeholder(folders.models_dir / "loras" / "inkwash.safetensors")
    placeholder(folders.models_dir / "loras" / "film_grain.safetensors")
    window = open_window(model=None)
    wait_for_loras(qtbot, window, ["film_grain", "inkwash"])
    window.panel.loras.add("film_grain", 0.3)        # the PNG's LoRAs replace what the panel held
    made = GenerationRequest(prompt="a cat <lora:gone_too:0.5>", steps=9, seed=77, width=64, height=64,
                             loras=(("inkwash", 0.6), ("vanished_style", -1.0)))
    png = save_png(Image.new("RGB", (64, 64), "gray"), tmp_path / "cat.png", to_infotext(made, "tiny", None, None))

    window.reuse_parameters(png)
    assert window.panel.request().loras == (("inkwash", 0.6),)
    assert window.panel.prompt.toPlainText() == "a cat <lora:gone_too:0.5>"    # the prompt's tags stay as typed
    message = window.message_bar.text()
    assert window.message_bar.kind == "warning" and "vanished_style" in message
    assert "inkwash" not in message and "gone_too" not in message


def test_the_panels_loras_are_remembered_across_restarts(open_window, qtbot, folders):
    placeholder(folders.models_dir / "loras" / "inkwash.safetensors")
    first = open_window(model=None)
    wait_for_loras(qtbot, first, ["inkwash"])
    first.panel.loras.add("inkwash", -0.35)
    first.panel.loras.add("elsewhere", 1.5).on.setChecked(False)
    first.close()

    second = open_window(model=None)
    rows = second.panel.loras.rows
    assert [(r.name, r.value(), r.on.isChecked()) for r in rows] == [("inkwash", -0.35, True), ("elsewhere", 1.5, False)]
    assert second.panel.request().loras == (("inkwash", -0.35),)
    wait_for_loras(qtbot, second, ["inkwash"])
    assert rows[1].label.property("missing") is True and rows[0].label.property("missing") is False


# -- hostile files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case, make, said", [
    ("nan", lambda path: lora_file(path, down=torch.full((4, 32), float("nan"))), "NaN"),
    ("sdxl on sd1", lambda path: lora_file(path, down=torch.rand(4, 64), up=torch.rand(64, 4), key=SDXL_TE2),
     "Stable Diffusion XL"),
    ("not safetensors", lambda path: path.write_bytes(b"\x80\x04\x95" + bytes(300)) and path, "hostile"),
])
def test_a_hostile_lora_is_a_message_and_the_next_generation_works(open_window, qtbot, folders, case, make, said):
    path = folders.models_dir / "loras" / "hostile.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    window = open_window()
    wait_for_loras(qtbot, window, ["hostile"])
    window.panel.prompt.setPlainText("a red star")
    window.panel.loras.add("hostile", 1.0)
    failed = run(qtbot, window)
    assert isinstance(failed, Failed), failed
    shown = window.message_bar.text()
    assert window.message_bar.kind == "error" and "hostile" in shown and said in shown
    assert "Traceback" not in shown and "unexpectedly" not in shown
    assert not window.panel.cancel_button.isEnabled()

    window.panel.loras.rows[0].remove.click()
    assert isinstance(run(qtbot, window), Finished)
