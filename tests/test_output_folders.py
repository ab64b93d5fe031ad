"""An output folder no file can be written in is refused before the work, not at its first save.

/proc stands for such a folder: it exists, and not even root can make a file in it (a read-only folder
would not do: root writes there whatever the permission bits say).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.atomic_files import check_can_make, writable_folder
from core.errors import LatentDeskError

needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")


def test_writable_folder_makes_the_folder_and_leaves_only_it(tmp_path):
    folder = writable_folder(tmp_path / "a" / "b", "--out-dir")
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


def test_check_can_make_probes_the_nearest_existing_folder_and_makes_nothing(tmp_path):
    check_can_make(tmp_path / "x" / "y", "--out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(LatentDeskError, match="is a file, not a folder"):
        check_can_make(tmp_path / "file" / "run", "--out")


@needs_proc
def test_a_folder_that_takes_no_file_is_refused_naming_the_flag():
    with pytest.raises(LatentDeskError, match=r"--out /proc/run: no file can be written in /proc \("):
        check_can_make(Path("/proc/run"), "--out")
    with pytest.raises(LatentDeskError, match=r"--out-dir: no file can be written in /proc \("):
        writable_folder(Path("/proc"), "--out-dir")


@needs_proc
@pytest.mark.parametrize("command", [
    # each names an input that is not there: the --out check must come first, before anything is read
    ["train", "diffusion", "--autoencoder", "missing.safetensors", "--shapes"],
    ["train", "autoencoder", "--data", "missing-folder"],
    ["train", "preview", "--model", "missing.safetensors", "--shapes"],
    ["train", "builtin", "--autoencoder-from", "missing.safetensors"],
])
def test_train_refuses_an_out_folder_it_cannot_write_before_any_work(tmp_path, capsys, monkeypatch, command):
    from app.cli.train import main

    monkeypatch.chdir(tmp_path)
    assert main([*command, "--out", "/proc/run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--out /proc/run: no file can be written in /proc" in err, err
    assert list(tmp_path.iterdir()) == []


@needs_proc
def test_generate_refuses_an_attention_maps_folder_it_cannot_write_before_the_model_loads(tmp_path, capsys,
                                                                                          monkeypatch):
    from app.cli.commands import main

    def never_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --attention-maps was checked")

    monkeypatch.setattr("core.loading.checkpoint.load_model", never_load)
    code = main(["generate", "--prompt", "x", "--steps", "2", "--attention-maps", "/proc",
                 "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "--attention-maps: no file can be written in /proc" in err, err
    assert list(tmp_path.iterdir()) == []
