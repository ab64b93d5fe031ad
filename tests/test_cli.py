"""`latentdesk generate`: files in prompt order with seed + i, metadata, progress, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.cli import main
from core.metadata import read_parameters, request_from_infotext
from core.request import GenerationRequest
from tests.tiny_models import write_single_file


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_single_file("sd1", tmp_path_factory.mktemp("cli") / "tiny.safetensors", seed=4)


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_prompt_file_writes_numbered_images_in_order_with_seed_plus_i(tmp_path, capsys, model_file):
    prompts = ["a red circle", "a (blue:1.2) square on black", "a large yellow star, top left"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n\n")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "generate", "--model", str(model_file), "--prompt-file", str(tmp_path / "prompts.txt"),
                         "--steps", "3", "--seed", "100", "--width", "64", "--height", "64", "--out-dir", str(out_dir))
    assert code == 0, err
    files = sorted(out_dir.iterdir())
    assert [f.name for f in files] == ["00000.png", "00001.png", "00002.png"]
    assert out.split() == [str(f) for f in files]
    for i, (file, prompt) in enumerate(zip(files, prompts, strict=True)):
        request, warnings = request_from_infotext(read_parameters(file), GenerationRequest())
        assert (request.prompt, request.seed, request.steps, request.width) == (prompt, 100 + i, 3, 64)
        assert Image.open(file).size == (64, 64)
    assert "3/3" in err and "it/s" in err and "seed 100" in err  # the progress bar, on stderr


def test_img2img_from_an_odd_image(tmp_path, capsys, model_file):
    init = tmp_path / "photo.jpg"
    Image.new("CMYK", (80, 72), (0, 255, 0, 0)).save(init)
    code, out, err = run(capsys, "generate", "--model", str(model_file), "--prompt", "a magenta diamond",
                         "--init-image", str(init), "--strength", "0.5", "--steps", "4", "--seed", "1",
                         "--out", str(tmp_path / "result.png"))
    assert code == 0, err
    written = out.strip()
    assert Image.open(written).size == (80, 72)  # the image's own size, already a multiple of 8
    request, _ = request_from_infotext(read_parameters(written), GenerationRequest())
    assert request.strength == 0.5


@pytest.mark.parametrize("args,words", [
    (["--width", "100", "--height", "100"], "multiple of 8"),
    (["--steps", "0"], "steps"),
    (["--sampler", "Euler z"], "Unknown sampler"),
    (["--init-image", "missing.png"], "missing.png"),
    (["--init-image", "__FILE__", "--strength", "2"], "strength"),
    (["--batch", "2"], "use --out-dir"),
    (["--width", "64"], "both --width and --height"),
    (["--deep-cache", "0"], "deep cache interval"),
    (["--deep-cache", "--deep-cache-blocks", "0"], "deep cache blocks"),
    (["--deep-cache", "--deep-cache-blocks", "9"], "4 input blocks"),   # the tiny UNet has 4
    (["--deep-cache-start", "1"], "deep cache start"),
    (["--guidance-cutoff", "1.5"], "guidance cut-off"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, model_file, args, words):
    args = [str(model_file) if a == "__FILE__" else a for a in args]
    code, out, err = run(capsys, "generate", "--model", str(model_file), "--prompt", "x", "--steps", "2",
                         *(["--width", "64", "--height", "64"] if "--width" not in args else []), *args,
                         "--out", str(tmp_path / "x.png"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "x.png").exists()


def test_speedup_flags_reach_the_request_and_the_png(tmp_path, capsys, model_file):
    code, out, err = run(capsys, "generate", "--model", str(model_file), "--prompt", "a red circle", "--steps", "4",
                         "--width", "64", "--height", "64", "--seed", "2", "--deep-cache", "--guidance-cutoff",
                         "0.5", "--out", str(tmp_path / "fast.png"))
    assert code == 0, err
    request, warnings = request_from_infotext(read_parameters(out.strip()), GenerationRequest(model=str(model_file)))
    assert warnings == []
    assert (request.deep_cache_interval, request.guidance_cutoff) == (3, 0.5)   # --deep-cache alone: 3
    code, out, err = run(capsys, "generate", "--model", str(model_file), "--prompt", "a red circle", "--steps", "4",
                         "--width", "64", "--height", "64", "--seed", "2", "--deep-cache", "2", "--deep-cache-blocks",
                         "2", "--guidance-cutoff", "--out", str(tmp_path / "fast2.png"))
    assert code == 0, err
    request, _ = request_from_infotext(read_parameters(out.strip()), GenerationRequest())
    assert (request.deep_cache_interval, request.deep_cache_blocks, request.guidance_cutoff) == (2, 2, 0.3)


def test_missing_model_is_named(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--model", str(tmp_path / "nothing.safetensors"), "--prompt", "x",
                       "--out", str(tmp_path / "x.png"))
    assert code == 2 and "nothing.safetensors" in err and "not found" in err


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("latentdesk")  # beside the interpreter running the tests
    assert exe.exists(), "pip install -e . should install the `latentdesk` command"
    result = subprocess.run([exe, "generate", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--prompt-file" in result.stdout
