"""`latentdesk generate`: files in prompt order with seed + i, metadata, progress, one-line errors."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from app.cli.commands import main
from core.errors import LatentDeskError
from core.metadata.infotext import request_from_infotext
from core.metadata.png_files import read_parameters
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


def never_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the arguments were checked")


@pytest.mark.parametrize("args,words", [
    (["--seed", "18446744073709551616", "--out", "x.png"], "--seed must be a whole number from 0 to"),
    (["--seed", "-1", "--out", "x.png"], "--seed must be"),
    (["--seed", str(2**64 - 1), "--batch", "2", "--out-dir", "many"], "the 2 images use seed to seed + 1"),
    (["--guidance", "nan", "--out", "x.png"], "guidance must be a number"),
    (["--steps", "99999999999", "--out", "x.png"], "steps must be a whole number from 1 to"),
    (["--out", "pic.jpg"], "--out pic.jpg: the name must end in .png"),
    (["--out", "a_folder.png"], "--out a_folder.png is a folder; to write numbered images into it, use --out-dir"),
    (["--out", "missing/x.png"], "the folder missing does not exist"),
    (["--out", "a_file/x.png"], "the folder a_file is not a folder"),
    (["--out-dir", "a_file"], "--out-dir a_file is a file, not a folder"),
    (["--out-dir", "a_file/inside"], "--out-dir a_file/inside: the folder cannot be made"),
    # A folder that exists but takes no files (even root's: permission bits would not show it)
    pytest.param(["--out", "/proc/x.png"], "--out /proc/x.png: no file can be written in /proc (",
                 marks=pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")),
    pytest.param(["--out-dir", "/proc"], "--out-dir: no file can be written in /proc (",
                 marks=pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")),
])
def test_bad_seed_or_output_exits_2_before_the_model_loads_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                                              model_file, args, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("core.loading.checkpoint.load_model", never_load)
    (tmp_path / "a_folder.png").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run(capsys, "generate", "--model", str(model_file), "--prompt", "x", "--steps", "2",
                         "--width", "64", "--height", "64", *args)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert sorted(tmp_path.rglob("*")) == before          # no pic.jpg/ folder, no PNG, nothing


def safetensors_header(path: Path, header: bytes) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    return path


@pytest.mark.parametrize("header", [
    b'{"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}',
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, ' + b"9" * 5000 + b"]}}",
    b'{"__metadata__": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
], ids=["list dtype", "5000-digit integer", "nested 100000 deep"])
def test_inspect_of_a_hostile_header_exits_2_with_one_line_naming_the_file(tmp_path, capsys, header):
    path = safetensors_header(tmp_path / "hostile.safetensors", header)
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and str(path) in err, err


def test_any_loader_failure_and_a_multi_line_reason_are_one_line(tmp_path, capsys, monkeypatch, model_file):
    def broken(*args, **kwargs):
        raise KeyError("a key the file lacks")
    monkeypatch.setattr("core.loading.checkpoint.load_model", broken)
    code, _, err = run(capsys, "inspect", str(model_file))
    assert code == 2 and err.count("\n") == 1 and "KeyError" in err and str(model_file) in err

    def two_lines(*args, **kwargs):
        raise LatentDeskError("first line\nsecond line")
    monkeypatch.setattr("core.loading.checkpoint.load_model", two_lines)
    code, _, err = run(capsys, "inspect", str(model_file))
    assert code == 2 and err == "latentdesk: first line second line\n"


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
