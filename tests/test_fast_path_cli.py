"""The command line's fast path and inpainting (issues 22 and 24): --decoder taesd, a few-step model's preset as
the defaults, --mask / --outpaint with the mask saved beside the image, and bad input in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from app.cli.commands import main
from core.metadata.infotext import request_from_infotext
from core.metadata.png_files import read_parameters
from core.request import GenerationRequest
from tests.test_app import model_with_preview_decoder

SMALL = ["--width", "64", "--height", "64", "--seed", "3"]


def generate(capsys, *args) -> tuple[int, str]:
    code = main(["generate", *args])
    _, err = capsys.readouterr()
    return code, err


def test_one_step_turbo_recipe_with_the_tiny_decoder(tmp_path, capsys, tiny_model):
    """Issue 22's acceptance line, on a tiny SD-Turbo-style model."""
    model = model_with_preview_decoder(tmp_path, tiny_model)
    out = tmp_path / "draft.png"
    code, err = generate(capsys, "--model", str(model), "--prompt", "a red circle", "--steps", "1", "--guidance", "1",
                         "--sampler", "Euler a", "--schedule", "SGM Uniform", "--decoder", "taesd", *SMALL,
                         "--out", str(out))
    assert code == 0, err
    text = read_parameters(out)
    assert "Decoder: TAESD" in text and "Steps: 1," in text
    assert request_from_infotext(text, GenerationRequest())[0].decoder == "taesd"
    vae = tmp_path / "vae.png"
    assert generate(capsys, "--model", str(model), "--prompt", "a red circle", "--steps", "1", "--guidance", "1",
                    "--sampler", "Euler a", "--schedule", "SGM Uniform", *SMALL, "--out", str(vae))[0] == 0
    assert "Decoder" not in read_parameters(vae)
    difference = np.abs(np.asarray(Image.open(out), int) - np.asarray(Image.open(vae), int)).mean()
    assert difference > 1          # the same latent, drawn by another decoder


def test_taesd_without_a_tiny_decoder_is_refused_in_one_line(tmp_path, capsys, tiny_model):
    code, err = generate(capsys, "--model", str(tiny_model), "--prompt", "x", "--decoder", "taesd", *SMALL,
                         "--out", str(tmp_path / "x.png"))
    assert code == 2 and err.count("\n") == 1 and "needs a tiny decoder" in err
    assert not (tmp_path / "x.png").exists()


def test_a_turbo_files_preset_fills_what_the_user_left_out(tmp_path, capsys, tiny_model):
    model = tmp_path / "tiny_turbo.safetensors"
    model.write_bytes(tiny_model.read_bytes())
    out = tmp_path / "t.png"
    assert generate(capsys, "--model", str(model), "--prompt", "x", *SMALL, "--out", str(out))[0] == 0
    read = request_from_infotext(read_parameters(out), GenerationRequest())[0]
    assert (read.steps, read.sampler, read.schedule, read.guidance) == (1, "Euler a", "SGM Uniform", 1.0)
    out2 = tmp_path / "t2.png"
    assert generate(capsys, "--model", str(model), "--prompt", "x", "--steps", "3", *SMALL, "--out", str(out2))[0] == 0
    assert "Steps: 3," in read_parameters(out2)          # what the user typed wins


@pytest.fixture
def picture_and_mask(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))
    mask.save(tmp_path / "mask.png")
    return tmp_path / "init.png", tmp_path / "mask.png"


def test_inpainting_writes_the_mask_beside_and_keeps_the_outside(tmp_path, capsys, tiny_model, picture_and_mask):
    init, mask = picture_and_mask
    out = tmp_path / "out"
    code, err = generate(capsys, "--model", str(tiny_model), "--prompt", "a red circle", "--steps", "4",
                         "--init-image", str(init), "--mask", str(mask), "--mask-blur", "2", "--strength", "0.9",
                         "--masked-content", "latent-noise", *SMALL, "--out-dir", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["00000-mask.png", "00000.png"]
    text = read_parameters(out / "00000.png")
    assert "Mask blur: 2, Masked content: latent noise" in text and "Denoising strength: 0.9" in text
    assert np.array_equal(np.asarray(Image.open(out / "00000-mask.png")), np.asarray(Image.open(mask)))
    feathered = np.asarray(Image.open(mask).filter(ImageFilter.GaussianBlur(2)))
    result, original = np.asarray(Image.open(out / "00000.png")), np.asarray(Image.open(init))
    assert np.array_equal(result[feathered == 0], original[feathered == 0])


def test_outpainting_grows_the_picture(tmp_path, capsys, tiny_model, picture_and_mask):
    init, _ = picture_and_mask
    out = tmp_path / "wide.png"
    code, err = generate(capsys, "--model", str(tiny_model), "--prompt", "x", "--steps", "3", "--init-image",
                         str(init), "--outpaint", "0,0,32,0", "--strength", "1", "--seed", "1", "--out", str(out))
    assert code == 0, err
    assert Image.open(out).size == (96, 64)
    assert request_from_infotext(read_parameters(out), GenerationRequest())[0].outpaint == (0, 0, 32, 0)


@pytest.mark.parametrize("args, words", [
    (["--mask", "m.png"], "give it with --init-image"),
    (["--init-image", "{init}", "--outpaint", "0,0,0,0"], "Outpainting must be four whole numbers"),
    (["--init-image", "{init}", "--outpaint", "1,2"], "Outpainting must be four whole numbers"),
    (["--init-image", "{init}", "--mask", "{init}", "--mask-blur", "-3"], "mask blur"),
    (["--init-image", "{init}", "--mask", "missing.png"], "no such file"),
])
def test_bad_inpainting_arguments_exit_2_in_one_line(tmp_path, capsys, tiny_model, picture_and_mask, args, words):
    init, _ = picture_and_mask
    args = [a.replace("{init}", str(init)) for a in args]
    code, err = generate(capsys, "--model", str(tiny_model), "--prompt", "x", *args, *SMALL,
                         "--out", str(tmp_path / "bad.png"))
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "bad.png").exists()
