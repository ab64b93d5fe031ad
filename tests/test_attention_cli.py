"""`latentdesk generate --attention-maps DIR [--attention-steps SPEC]` (issue 25): the files, their layout for
several images, the steps chosen, bad input in one line, and no maps computed when the flag is absent."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import core.generate
from app.cli.commands import main
from core.sampling.attention_probe import CrossAttentionProbe
from tests.tiny_models import write_single_file

SIZE = ["--width", "80", "--height", "64"]      # not square: a map with width and height swapped would show
PROMPT = "a red circle on a blue background"
WORDS = ["a", "red", "circle", "on", "blue", "background"]      # PROMPT's words, each once, in order


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_single_file("sd1", tmp_path_factory.mktemp("attention-cli") / "tiny.safetensors", seed=4)


@pytest.fixture
def probes(monkeypatch):
    """Every CrossAttentionProbe generate() makes, counted."""
    made = []

    class Counted(CrossAttentionProbe):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(core.generate, "CrossAttentionProbe", Counted)
    return made


def run(capsys, model_file, *args) -> tuple[int, str, str]:
    code = main(["generate", "--model", str(model_file), "--steps", "3", "--seed", "5", *SIZE, *args])
    out, err = capsys.readouterr()
    return code, out, err


def read_words(folder) -> dict:
    return json.loads((folder / "words.json").read_text(encoding="utf-8"))


def test_one_image_writes_its_maps_into_the_folder_itself(tmp_path, capsys, model_file, probes):
    maps = tmp_path / "maps"
    code, out, err = run(capsys, model_file, "--prompt", PROMPT, "--out", str(tmp_path / "a.png"),
                         "--attention-maps", str(maps))
    assert code == 0, err
    assert out.split() == [str(tmp_path / "a.png")]       # stdout still lists only the images
    assert f"attention maps of a.png in {maps}" in err
    assert len(probes) == 1
    words = read_words(maps)
    assert list(words) == WORDS
    assert abs(sum(entry["total"] for entry in words.values()) - 1) < 1e-4
    for entry in words.values():
        grey, overlay = Image.open(maps / entry["file"]), Image.open(maps / entry["overlay"])
        assert (grey.size, grey.mode) == ((80, 64), "L")
        assert (overlay.size, overlay.mode) == ((80, 64), "RGB")
        assert max(grey.getdata()) == 255       # scaled to its peak
    written = {p.name for p in maps.iterdir()}
    assert written == {"words.json"} | {e["file"] for e in words.values()} | {e["overlay"] for e in words.values()}


def test_several_images_get_a_numbered_folder_each_named_after_their_image(tmp_path, capsys, model_file):
    prompts = [PROMPT, "green star"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out_dir, maps = tmp_path / "out", tmp_path / "maps"
    out_dir.mkdir()
    Image.new("RGB", (8, 8)).save(out_dir / "00000.png")     # the new images start at 00001.png
    code, out, err = run(capsys, model_file, "--prompt-file", str(tmp_path / "prompts.txt"), "--batch", "2",
                         "--out-dir", str(out_dir), "--attention-maps", str(maps))
    assert code == 0, err
    images = [f"{n:05d}" for n in range(1, 5)]
    assert out.split() == [str(out_dir / f"{n}.png") for n in images]
    assert sorted(p.name for p in maps.iterdir()) == images        # folders only, one per image
    for n, prompt_words in zip(images, [WORDS, WORDS, ["green", "star"], ["green", "star"]], strict=True):
        assert list(read_words(maps / n)) == prompt_words
        assert f"attention maps of {n}.png in {maps / n}" in err
    # Image 2 of a prompt starts from other noise: its maps are its own, not a copy of image 1's.
    first, second = (Image.open(maps / n / "03-circle.png").tobytes() for n in images[:2])
    assert first != second


def test_attention_steps_choose_the_steps_summed(tmp_path, capsys, model_file, probes):
    folders = {}
    for name, steps in (("all", []), ("spelled_out", ["--attention-steps", "0-1, 2"]), ("first", ["--attention-steps", "0"])):
        folders[name] = tmp_path / name
        code, _, err = run(capsys, model_file, "--prompt", PROMPT, "--out", str(tmp_path / f"{name}.png"),
                           "--attention-maps", str(folders[name]), *steps)
        assert code == 0, err
    assert [sorted(p.steps_summed) for p in probes] == [[0, 1, 2], [0, 1, 2], [0]]

    def map_bytes(folder):
        return Image.open(folder / "03-circle.png").tobytes()

    assert map_bytes(folders["all"]) == map_bytes(folders["spelled_out"])
    assert map_bytes(folders["all"]) != map_bytes(folders["first"])


@pytest.mark.parametrize("args,words", [
    (["--attention-steps", "x"], "'x' is not a step"),
    (["--attention-steps", "3-1"], "runs backwards"),
    (["--attention-steps", "-1"], "is not a step"),
    (["--attention-steps", "1,,2"], "'' is not a step"),
    (["--attention-steps", ""], "is not a step"),
    (["--attention-steps", "1" * 5000], "is not a step"),
    (["--attention-steps", "3"], "step 3 is past the run, which takes 3 sampler steps (numbered 0 to 2)"),
    (["--attention-steps", "0,1-7"], "step 7 is past the run"),
    (["--init-image", "__IMAGE__", "--strength", "0.5", "--steps", "4", "--attention-steps", "2"],
     "which takes 2 sampler steps"),                     # img2img at strength 0.5 runs the last 2 of 4
    (["--attention-maps-is-a-file"], "is a file, not a folder"),
    (["--no-maps-folder", "--attention-steps", "0"], "give that too"),
])
def test_bad_attention_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, model_file, args, words):
    picture = tmp_path / "picture.png"
    Image.new("RGB", (80, 64), (200, 30, 30)).save(picture)
    maps = tmp_path / "maps"
    if "--attention-maps-is-a-file" in args:
        maps.write_text("not a folder")
    folder = [] if "--no-maps-folder" in args else ["--attention-maps", str(maps)]
    args = [str(picture) if a == "__IMAGE__" else a for a in args if not a.startswith("--attention-maps-is")
            and a != "--no-maps-folder"]
    code, out, err = run(capsys, model_file, "--prompt", PROMPT, "--out", str(tmp_path / "x.png"), *folder, *args)
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "x.png").exists() and out == ""
    assert not maps.is_dir() or not any(maps.iterdir())


def test_without_the_flag_no_maps_are_computed(tmp_path, capsys, model_file, probes):
    code, _, err = run(capsys, model_file, "--prompt", PROMPT, "--out", str(tmp_path / "plain.png"))
    assert code == 0, err
    assert probes == [] and "attention" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.png"]
