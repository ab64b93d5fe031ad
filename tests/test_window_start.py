"""The window always opens (the reliability rule: bad input never aborts the app).

Before, anything the constructor raised killed the process with exit 134: the worker thread had
started, and Qt aborts when a running QThread is destroyed. The triggers were the user's own files
and settings: a models folder with an unreadable subfolder, a recent model under one, a saved
width of 99999999999 or a guidance of nan. Now each falls back (to the defaults, or to leaving the
model out) and the message bar says which settings were reset.

The tests run as root, which ignores `chmod 000`, so "unreadable" is also simulated the way Python
3.11-3.13 report it: `os.stat` / `os.listdir` raising PermissionError for paths under a folder.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from pathlib import Path

import pytest

from app.jobs import PreviewMode
from app.settings import open_settings
from app.widgets.controls import ControlsPanel


def deny(monkeypatch, locked: Path, *, listing_too: bool = False) -> None:
    """Make every path inside `locked` (and, with `listing_too`, listing `locked` itself) fail as under
    a folder without read and search permission, for an ordinary user."""
    real_stat, real_listdir, real_scandir = os.stat, os.listdir, os.scandir

    def inside(path, itself: bool = False) -> bool:
        if not isinstance(path, str | os.PathLike):
            return False        # a file descriptor
        path = Path(os.fspath(path))
        return locked in path.parents or (itself and path == locked)

    def guarded(real, itself: bool):
        def call(path=".", *args, **kwargs):
            if inside(path, itself):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "stat", guarded(real_stat, itself=False))
    monkeypatch.setattr(os, "listdir", guarded(real_listdir, itself=listing_too))
    monkeypatch.setattr(os, "scandir", guarded(real_scandir, itself=listing_too))


@pytest.mark.parametrize("how", ["monkeypatched", "chmod 000"])
def test_an_unreadable_subfolder_and_a_recent_model_under_it_leave_the_window_opening(
        open_window, folders, tiny_model, monkeypatch, how):
    locked = folders.models_dir / "locked"
    locked.mkdir(parents=True)
    (locked / "model_index.json").write_text("{}")
    hidden_model = locked / "old.safetensors"
    hidden_model.write_bytes(tiny_model.read_bytes())
    settings = open_settings(folders)
    settings.setValue("models/recent", f"{hidden_model}\n{tiny_model}")
    settings.sync()
    if how == "chmod 000":
        locked.chmod(0)         # effective for an ordinary user; root reads it anyway
    else:
        deny(monkeypatch, locked)
    try:
        window = open_window()          # the tiny model is the start model: it loads
        specs = window.panel.model_picker.specs()
        assert str(tiny_model) in specs
        if how == "monkeypatched":
            assert str(hidden_model) not in specs and str(locked) not in specs
        assert window.model is not None and window.isVisible()
    finally:
        locked.chmod(0o755)


def test_an_unreadable_models_folder_leaves_the_window_opening_and_a_start_model_there_is_skipped(
        open_window, folders, tiny_model, monkeypatch, qtbot):
    models = folders.models_dir
    models.mkdir(parents=True)
    inside = models / "tiny.safetensors"
    inside.write_bytes(tiny_model.read_bytes())
    settings = open_settings(folders)
    settings.setValue("model", str(inside))                # the last model, now out of reach
    settings.sync()
    deny(monkeypatch, models, listing_too=True)
    window = open_window(model=None)
    assert window.panel.model_picker.specs() == []
    qtbot.waitUntil(lambda: "built-in model is not installed" in window.message_bar.text(), timeout=10_000)


# -- every saved setting, corrupted -----------------------------------------------------------------

TEXT_KEYS = ("prompt", "negative")      # any text is a prompt: only another type is unusable there
FORM_KEYS = TEXT_KEYS + (
    "guidance", "steps", "sampler", "schedule", "width", "height", "batch", "strength", "seed", "seed_random",
    "preview_mode", "preview_noisy", "live", "deep_cache_interval", "deep_cache_blocks", "deep_cache_start",
    "guidance_cutoff", "precision", "loras")
OUT_OF_RANGE = {
    "guidance": "25", "steps": "151", "sampler": "Euler z", "schedule": "Karras z",
    "width": "65536", "height": "8", "batch": "17",
    "strength": "1.5", "seed": "4294967296", "seed_random": "2", "preview_mode": "99", "preview_noisy": "-1",
    "live": "2", "deep_cache_interval": "11", "deep_cache_blocks": "0", "deep_cache_start": "1",
    "guidance_cutoff": "0.95", "precision": "float16",
    "loras": r'"[[\"ink\", 11.0, true]]"',      # as the ini holds a LoRA whose weight is past the box's 10
}
# As they stand in a damaged or hand-edited settings.ini: QSettings reads "a, b" as a list and
# @ByteArray(...) as bytes; everything else as text the form converts.
CORRUPTIONS = {
    "a list": dict.fromkeys(FORM_KEYS, "a, b"),
    "bytes": dict.fromkeys(FORM_KEYS, "@ByteArray(abc)"),
    "out of range": OUT_OF_RANGE,
    "nan": dict.fromkeys(OUT_OF_RANGE, "nan"),
    "inf": dict.fromkeys(OUT_OF_RANGE, "inf"),
    "minus inf": dict.fromkeys(OUT_OF_RANGE, "-inf"),
    "1e999": dict.fromkeys(OUT_OF_RANGE, "1e999"),
    "a huge int": dict.fromkeys(OUT_OF_RANGE, "99999999999"),
    "a 5000-digit int": dict.fromkeys(OUT_OF_RANGE, "9" * 5000),
    "a huge negative int": dict.fromkeys(OUT_OF_RANGE, "-" + "9" * 30),
    "garbage": dict.fromkeys(OUT_OF_RANGE, "garbage \u00a4\u2603"),
    "a superscript digit": dict.fromkeys(OUT_OF_RANGE, "\u00b2"),      # str.isdigit() says yes, int() says no
}


def write_ini(path: Path, form: dict[str, str]) -> None:
    """A settings.ini as a damaged copy would hold it: a saved form whose `form` values are replaced."""
    lines = ["[form]"] + [f"{key}={value}" for key, value in form.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def form_state(panel: ControlsPanel) -> dict:
    return {"request": panel.request(), "seed": panel.seed.edit.text(), "random": panel.seed.random.isChecked(),
            "preview": panel.preview_choice(), "precision": panel.speedups.precision()}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_every_corrupted_form_setting_opens_with_its_default_and_is_named(open_window, folders, corruption, qtbot):
    bad = CORRUPTIONS[corruption]
    form = {"steps": "12", **bad}         # "steps" present: the form was saved before
    write_ini(folders.settings_file, form)
    window = open_window(small=False)

    defaults = ControlsPanel()
    qtbot.addWidget(defaults)
    assert form_state(window.panel) == form_state(defaults)
    assert window.panel.preview_choice() == (PreviewMode.AUTO, False)
    assert not window.panel.live.isChecked()        # "form/live" falls back to the model's default (off)
    message = window.message_bar.text()
    assert window.message_bar.kind == "warning" and "back to their defaults" in message
    assert sorted(message.split(": ", 1)[1].rstrip(".").split(", ")) == sorted(bad)     # each one named, no other

    window.close()      # what is saved now is usable: the next start reads it back without complaint
    again = open_window(small=False)
    assert "back to their defaults" not in again.message_bar.text()


def test_a_good_saved_form_is_restored_without_a_message(open_window, folders):
    write_ini(folders.settings_file, {"prompt": '"a red fox, at dusk"', "guidance": "4.5", "steps": "33",
                                      "width": "640", "height": "384", "seed": "42", "seed_random": "false",
                                      "deep_cache_interval": "3", "guidance_cutoff": "0.3", "precision": "float32",
                                      "loras": r'"[[\"ink\", 0.8, true], [\"grain\", -1.5, false]]"'})
    window = open_window(small=False)
    request = window.panel.request()
    assert request.loras == (("ink", 0.8),)     # "grain" is kept in the panel, switched off
    assert (request.prompt, request.guidance, request.steps, request.width, request.height) == (
        "a red fox, at dusk", 4.5, 33, 640, 384)
    assert window.panel.seed.edit.text() == "42" and not window.panel.seed.random.isChecked()
    assert (request.deep_cache_interval, request.guidance_cutoff) == (3, 0.3)
    assert "defaults" not in window.message_bar.text()


@pytest.mark.parametrize("stored", [
    "[[[[", "[1, 2]", '{"PATH": 5}', '{"PATH": {"stamp": 1}}', '{"PATH": {"stamp": "STAMP", "hash": 42}}',
    '{"PATH": {"stamp": "STAMP", "hash": "../../etc"}}', "[" * 100_000 + "]" * 100_000, "a, b",
])
def test_a_corrupt_hash_cache_never_stops_the_model_loading(open_window, folders, tiny_model, stored):
    stat = tiny_model.stat()
    text = stored.replace("PATH", str(tiny_model)).replace("STAMP", f"{stat.st_size}:{stat.st_mtime_ns}")
    settings = open_settings(folders)
    settings.setValue("models/hashes", text)
    settings.sync()
    window = open_window()           # waits for the model: a failed load would time out here
    assert window.load_failure is None
    assert len(window.model.hash) == 10 and int(window.model.hash, 16) >= 0


def test_unusable_window_settings_fall_back(open_window, folders, tiny_model, qtbot):
    folders.settings_file.parent.mkdir(parents=True, exist_ok=True)
    folders.settings_file.write_text(
        "[General]\noutput_dir=relative/folder\n"
        "[models]\nrecent=a, b\n"
        "[window]\ngeometry=@ByteArray(garbage)\nsplitter=12\n", encoding="utf-8")
    window = open_window()
    assert window.paths.output_dir == folders.output_dir
    assert "output_dir" in window.message_bar.text()


@pytest.mark.parametrize("damage", ["binary garbage", "a folder", "data folder is a file"])
def test_a_settings_file_that_cannot_be_read_opens_the_window_with_defaults(open_window, folders, tiny_model,
                                                                            damage):
    settings_file = folders.settings_file
    if damage == "binary garbage":
        settings_file.write_bytes(bytes(range(256)) * 64)
    elif damage == "a folder":
        settings_file.mkdir(parents=True)
    else:
        folders.data_dir.parent.mkdir(parents=True, exist_ok=True)
        folders.data_dir.write_bytes(b"not a folder")
        folders = dataclasses.replace(folders, settings_file=folders.data_dir / "settings.ini")
    window = open_window(paths=folders, small=False)
    assert window.model is not None and window.panel.request().steps == 20


# -- leftovers of a crash ---------------------------------------------------------------------------

def test_stale_temporary_images_of_a_crash_are_removed_at_start_and_nothing_else(open_window, folders, qtbot):
    out = folders.output_dir
    out.mkdir(parents=True)
    stale, fresh = out / ".latentdesk-0123456789ab.png.tmp", out / ".latentdesk-ba9876543210.png.tmp"
    users = [out / ".latentdesk-notes.png.tmp", out / "mine.png.tmp", out / ".latentdesk-0123456789ab.png",
             out / "00000.png"]
    for path in (stale, fresh, *users):
        path.write_bytes(b"x")
    folder_like_ours = out / ".latentdesk-aaaaaaaaaaaa.png.tmp"
    folder_like_ours.mkdir()
    hour_ago = time.time() - 3600
    for path in (stale, folder_like_ours, *users):
        os.utime(path, (hour_ago, hour_ago))
    window = open_window(model=None)
    qtbot.waitUntil(lambda: not stale.exists(), timeout=10_000)
    assert fresh.exists() and folder_like_ours.is_dir() and all(p.exists() for p in users)
    assert window.isVisible()
