"""`latentdesk train ...` argument checks: a bad value is one line naming the flag, never a traceback,
and is refused before anything slow (loading a model, encoding images) has run."""

from __future__ import annotations

import pytest

from app.cli.commands import main


@pytest.mark.parametrize(("flag", "value"), [("--width", "300"), ("--width", "0"), ("--blocks", "17"),
                                             ("--blocks", "0")])
def test_preview_sizes_beyond_what_a_preview_decoder_may_be_are_refused_up_front(tmp_path, capsys, monkeypatch,
                                                                                  flag, value):
    import core.loading.checkpoint

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(core.loading.checkpoint, "load_model", no_load)
    out = tmp_path / "run"
    assert main(["train", "preview", "--shapes", "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("latentdesk: ") and flag in err and value in err
    assert "Traceback" not in err
    assert not out.exists()
