"""Infotext writing/reading (A1111's format), PNG saving and reading back, model hashes (core/metadata/)."""

from __future__ import annotations

import hashlib
import os
import random
import re
import struct
import time
import tracemalloc
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageFile
from PIL.PngImagePlugin import PngInfo

from core.errors import LatentDeskError
from core.metadata import hashing, png_files
from core.metadata.hashing import model_hash
from core.metadata.infotext import (
    guidance_schedule,
    join_sampler,
    parameter_pairs,
    parse_infotext,
    request_from_infotext,
    to_infotext,
)
from core.metadata.png_files import read_parameters, save_png
from core.request import GenerationRequest

A1111_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')   # A1111's own pattern for its parameters text (modules/infotext_utils.py)
VERSION = "Latent Desk 0.1.0"


def image() -> Image.Image:
    return Image.new("RGB", (8, 8), (200, 30, 90))


def png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, read straight from the bytes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


# -- writing infotext --------------------------------------------------------------------------------

def test_infotext_is_a1111s_format():
    request = GenerationRequest(prompt="a cat", negative_prompt="blurry", steps=20, guidance=7.0,
                                sampler="DPM++ 2M Karras", seed=965400086, width=512, height=512)
    assert to_infotext(request, "v1-5-pruned-emaonly", "6ce0161689", VERSION) == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 965400086, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: Latent Desk 0.1.0")


def test_infotext_img2img_clip_skip_quoting_and_no_negative():
    request = GenerationRequest(prompt="line one\nline two", steps=30, guidance=7.5, sampler="Euler a", seed=1,
                                width=768, height=512, clip_skip=2, init_image="in.png", strength=0.6)
    assert to_infotext(request, "my, model", None, "v:1") == (
        "line one\nline two\n"
        'Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 768x512, Model: "my, model", '
        'Denoising strength: 0.6, Clip skip: 2, Version: "v:1"')


def test_empty_prompt_starts_with_steps():
    text = to_infotext(GenerationRequest(), "builtin", None, VERSION)
    assert text.startswith("Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras,")


# -- round trips -------------------------------------------------------------------------------------

ROUND_TRIPS = [
    GenerationRequest(prompt="a photo of a cat", negative_prompt="blurry, lowres"),
    GenerationRequest(prompt="桜の木の下の猫, (ネオン:1.2), émoji 🐱", negative_prompt="ぼやけた", seed=4294967295),
    GenerationRequest(prompt="line one,\nline two: with a colon\n\nline four", negative_prompt="bad,\nworse",
                      sampler="Euler a", guidance=1.0),
    GenerationRequest(prompt='commas, colons: "quotes" and (weights:1.3), [less]', negative_prompt=""),
    GenerationRequest(prompt="img2img", init_image="start.png", strength=0.35, width=768, height=512),
    GenerationRequest(prompt="clip skip", clip_skip=2, sampler="DPM++ 2M SDE Karras", steps=7),
    GenerationRequest(prompt="ddim", sampler="DDIM", guidance=7.5, model="/models/My Model.safetensors"),
    GenerationRequest(prompt="", negative_prompt="only a negative"),
    GenerationRequest(prompt="deep cache", deep_cache_interval=3, deep_cache_blocks=2, deep_cache_start=0.25),
    GenerationRequest(prompt="cut-off", guidance_cutoff=0.3),
    GenerationRequest(prompt="both", deep_cache_interval=5, guidance_cutoff=0.45, sampler="Heun"),
]


@pytest.mark.parametrize("request_", ROUND_TRIPS, ids=range(len(ROUND_TRIPS)))
def test_request_survives_png_round_trip(tmp_path, request_):
    name = "builtin" if request_.model == "builtin" else Path(request_.model).stem
    path = save_png(image(), tmp_path / "out.png", to_infotext(request_, name, "0123456789", VERSION))
    text = read_parameters(path)
    base = GenerationRequest(init_image=request_.init_image, model=request_.model)
    restored, warnings = request_from_infotext(text, base)
    assert restored == request_
    assert warnings == []


def test_non_latin1_text_is_itxt_and_latin1_is_text(tmp_path):
    latin = save_png(image(), tmp_path / "latin.png", "café crème\nSteps: 1, Seed: 2, Size: 8x8")
    other = save_png(image(), tmp_path / "other.png", "猫 🐱\nSteps: 1, Seed: 2, Size: 8x8")
    assert [k for k, _ in png_chunks(latin)].count(b"tEXt") == 1
    assert (b"tEXt", b"parameters\0" + "café crème\nSteps: 1, Seed: 2, Size: 8x8".encode("latin-1")) \
        in png_chunks(latin)
    itxt = [d for k, d in png_chunks(other) if k == b"iTXt"]
    assert len(itxt) == 1 and itxt[0].startswith(b"parameters\0")
    assert "猫 🐱".encode() in itxt[0]
    assert read_parameters(latin) == "café crème\nSteps: 1, Seed: 2, Size: 8x8"
    assert read_parameters(other) == "猫 🐱\nSteps: 1, Seed: 2, Size: 8x8"


# -- parsing real A1111 infotexts --------------------------------------------------------------------

MODERN = """masterpiece, best quality, (1girl:1.2), solo,
looking at viewer, <lora:detail_tweaker:0.5>
Negative prompt: (worst quality, low quality:1.4), bad anatomy,
extra fingers
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3456789012, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, \
Hires steps: 15, Hires upscaler: "R-ESRGAN 4x+ Anime6B", Lora hashes: "detail_tweaker: e8f3d5a1b2c4", \
Version: v1.10.1"""

OLD_KARRAS = """a photograph of an astronaut riding a horse
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234, Size: 512x512, Model hash: 45dee52b, \
Model: sd-v1-4"""

ADETAILER = """portrait of a woman, detailed face
Negative prompt: blurry
Steps: 30, Sampler: Euler a, CFG scale: 6, Seed: 42, Size: 768x1024, Model hash: 31e35c80fc, \
Model: sd_xl_base_1.0, Denoising strength: 0.6, ADetailer model: face_yolov8n.pt, ADetailer confidence: 0.3, \
ADetailer dilate erode: 4, ADetailer mask blur: 4, ADetailer denoising strength: 0.4, \
ADetailer inpaint only masked: True, ADetailer inpaint padding: 32, ADetailer version: 24.1.2, Version: v1.7.0"""

QUOTED = """(masterpiece), 1cat
Negative prompt: easynegative
Steps: 24, Sampler: Euler, CFG scale: 5.5, Seed: 7, Size: 640x640, Template: "masterpiece, (best quality:1.1)", \
TI hashes: "easynegative: c74b4e810b03", Comment: "he said \\"hi\\", then left", Version: v1.6.0"""

FORGE_EXPONENTIAL = """cyberpunk city at night, neon lights
Negative prompt: lowres
Steps: 25, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 5, Seed: 99, Size: 1024x1024, \
Model: juggernautXL, Version: f0.0.17v1.8.0rc-latest-276-g29be1da7"""


def test_parse_multiline_prompt_negative_and_quoted_values():
    info = parse_infotext(MODERN)
    assert info["Prompt"] == "masterpiece, best quality, (1girl:1.2), solo,\nlooking at viewer, <lora:detail_tweaker:0.5>"
    assert info["Negative prompt"] == "(worst quality, low quality:1.4), bad anatomy,\nextra fingers"
    assert info["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert info["Lora hashes"] == "detail_tweaker: e8f3d5a1b2c4"
    assert info["Size"] == "512x768"
    assert info["Version"] == "v1.10.1"
    assert list(info)[:4] == ["Prompt", "Negative prompt", "Steps", "Sampler"]


def test_parse_quoted_lists_and_escaped_quotes():
    info = parse_infotext(QUOTED)
    assert info["Template"] == "masterpiece, (best quality:1.1)"
    assert info["TI hashes"] == "easynegative: c74b4e810b03"
    assert info["Comment"] == 'he said "hi", then left'
    assert info["Version"] == "v1.6.0"


def test_request_from_modern_infotext_with_hires_fix():
    request, warnings = request_from_infotext(MODERN, GenerationRequest())
    assert (request.steps, request.sampler, request.guidance, request.seed) == (28, "DPM++ 2M Karras", 7.0, 3456789012)
    assert (request.width, request.height, request.clip_skip) == (512, 768, 2)
    assert request.strength == GenerationRequest().strength        # 0.45 was the hires pass's, not img2img's
    assert request.negative_prompt.endswith("bad anatomy,\nextra fingers")
    assert warnings == [
        "Hires fix is not available; its settings were ignored: Hires steps, Hires upscale, Hires upscaler.",
        "The image was made with model 'v1-5-pruned-emaonly' (hash 6ce0161689); the current model 'builtin' is kept."]
    # The LoRA stays in the prompt as typed, which is how Latent Desk applies it again (core/text/lora_tags.py);
    # its hash is known, not "ignored".
    assert request.prompt.endswith("<lora:detail_tweaker:0.5>") and request.loras == ()


def test_request_from_old_combined_karras_sampler_without_negative():
    base = GenerationRequest(negative_prompt="left over", clip_skip=2)
    request, warnings = request_from_infotext(OLD_KARRAS, base)
    assert request.sampler == "DPM++ 2M Karras"
    assert request.guidance == 7.5
    assert request.negative_prompt == ""            # the image had none
    assert request.clip_skip == 1                   # A1111 leaves out "Clip skip: 1"
    assert request.prompt == "a photograph of an astronaut riding a horse"
    assert warnings == ["The image was made with model 'sd-v1-4' (hash 45dee52b); the current model 'builtin' is kept."]


def test_request_from_adetailer_infotext_takes_strength_and_reports_extras():
    base = GenerationRequest(model="/m/sd_xl_base_1.0.safetensors", init_image="start.png")
    request, warnings = request_from_infotext(ADETAILER, base)
    assert (request.sampler, request.strength, request.width, request.height) == ("Euler a", 0.6, 768, 1024)
    assert request.init_image == "start.png"
    assert warnings == ["Settings Latent Desk does not have were ignored: ADetailer model, ADetailer confidence, "
                        "ADetailer dilate erode, ADetailer mask blur, ADetailer denoising strength, "
                        "ADetailer inpaint only masked, ADetailer inpaint padding, ADetailer version."]
    _, warnings = request_from_infotext(ADETAILER, replace(base, init_image=None))
    assert warnings[0] == "The image was made from a starting image (Denoising strength 0.6); add one to make it again."


def test_request_from_new_sampler_and_schedule_pair():
    request, warnings = request_from_infotext(FORGE_EXPONENTIAL, GenerationRequest(model="/m/juggernautXL.safetensors"))
    # Latent Desk has DPM++ 2M SDE only as "DPM++ 2M SDE Karras"; the schedule type replaces its Karras
    assert (request.sampler, request.schedule) == ("DPM++ 2M SDE Karras", "Exponential")
    assert (request.width, request.height, request.guidance) == (1024, 1024, 5.0)
    assert warnings == []
    request, warnings = request_from_infotext(FORGE_EXPONENTIAL.replace(" SDE, Schedule type: Exponential",
                                                                        ", Schedule type: Karras"), request)
    assert (request.sampler, request.schedule, warnings) == ("DPM++ 2M Karras", "Automatic", [])
    request, _ = request_from_infotext(FORGE_EXPONENTIAL.replace(" SDE, Schedule type: Exponential", ""), request)
    assert (request.sampler, request.schedule) == ("DPM++ 2M", "Automatic")   # no schedule type: the sampler's own


@pytest.mark.parametrize(("sampler", "schedule", "expected", "warns"), [
    ("DPM++ 2M", "Karras", ("DPM++ 2M Karras", "Automatic"), False),
    ("DPM++ 2M Karras", "", ("DPM++ 2M Karras", "Automatic"), False),
    ("DPM++ 2M Karras", "Karras", ("DPM++ 2M Karras", "Automatic"), False),
    ("Euler a", "Automatic", ("Euler a", "Automatic"), False),
    ("euler A", "", ("Euler a", "Automatic"), False),                       # names match ignoring case
    ("Euler", "SGM Uniform", ("Euler", "SGM Uniform"), False),
    ("Euler a", "sgm uniform", ("Euler a", "SGM Uniform"), False),
    ("DPM++ 2M", "Uniform", ("DPM++ 2M", "Uniform"), False),                # A1111's Uniform is a schedule type
    ("DPM++ 2M SDE", "Beta", ("DPM++ 2M SDE Karras", "Beta"), False),      # Karras in the name, replaced
    ("Euler", "Polyexponential", ("Euler", "Automatic"), True),             # a schedule we don't have
    ("Kohaku_LoNyu_Yog", "", ("Kohaku_LoNyu_Yog", "Automatic"), True),     # unknown samplers are kept, with a warning
])
def test_join_sampler(sampler, schedule, expected, warns):
    name, schedule_type, warning = join_sampler(sampler, schedule)
    assert (name, schedule_type) == expected
    assert (warning is not None) == warns


def test_known_samplers_are_latent_desks_unless_given():
    text = OLD_KARRAS.replace("DPM++ 2M Karras", "restart")
    assert request_from_infotext(text, GenerationRequest())[0].sampler == "restart"
    request, warnings = request_from_infotext(text, GenerationRequest(), known_samplers={"Restart", "Euler"})
    assert request.sampler == "Restart"
    assert not any("Sampler" in w for w in warnings)


# -- malformed text ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   \n  ", "garbage \x00 ;;; ::: ,,, \"\"\" \\", "only a prompt, nothing else",
                                  "a cat\nSteps: 20, Seed: 5", "\n\n\nNegative prompt:\n", '"unterminated: "quote, a: b'])
def test_malformed_text_gives_base_and_a_warning(text):
    base = GenerationRequest(prompt="kept", seed=3)
    request, warnings = request_from_infotext(text, base)
    assert request == base
    assert len(warnings) == 1 and "nothing was read" in warnings[0]


def test_last_line_with_two_pairs_is_part_of_the_prompt():
    assert parse_infotext("a cat\nSteps: 20, Seed: 5") == {"Prompt": "a cat\nSteps: 20, Seed: 5", "Negative prompt": ""}
    assert parse_infotext("") == {"Prompt": "", "Negative prompt": ""}


def test_unusable_values_are_reported_and_the_rest_is_read():
    text = "p\nSteps: many, Sampler: Euler, CFG scale: nan, Seed: -5, Size: 0x0, Clip skip: 0, Denoising strength: 2"
    base = GenerationRequest()
    request, warnings = request_from_infotext(text, base)
    assert request == GenerationRequest(prompt="p", sampler="Euler")
    assert request_from_infotext(None, base) == (base, ["No generation settings found (no 'Steps: …' line); "
                                                        "nothing was read."])
    assert warnings == [
        "Steps: 'many' is not usable (not a whole number); kept 20.",
        "CFG scale: 'nan' is not usable (not a finite number); kept 7.0.",
        "Seed: '-5' is not usable (below 0); kept 0.",
        "Clip skip: '0' is not usable (below 1); kept 1.",
        "Size: '0x0' is not a size like 512x768; kept 512x512.",
        "Denoising strength: '2' is not usable (outside 0.0–1.0); kept 0.75."]


def test_pair_scanner_equals_a1111_regex():
    rng = random.Random(0)
    alphabet = 'ab1é _-/:,"\\\t'
    for _ in range(3000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert parameter_pairs(line) == A1111_PAIR.findall(line), line
    for text in (MODERN, QUOTED, ADETAILER):
        last = text.split("\n")[-1]
        assert parameter_pairs(last) == A1111_PAIR.findall(last)


def test_huge_garbage_line_parses_quickly():
    start = time.perf_counter()
    for line in ("a" * 300_000, "a b-c/d " * 40_000, 'k: "' + "x" * 300_000, " " + "-" * 300_000 + ":"):
        parse_infotext("prompt\n" + line)
        request_from_infotext("prompt\n" + line, GenerationRequest())
    assert time.perf_counter() - start < 2.0     # A1111's findall takes minutes on these


# -- saving ------------------------------------------------------------------------------------------

def test_save_never_overwrites(tmp_path):
    first = save_png(image(), tmp_path / "cat.png", "first")
    second = save_png(image(), tmp_path / "cat.png", "second")
    assert (first, second) == (tmp_path / "cat.png", tmp_path / "cat-1.png")
    assert (read_parameters(first), read_parameters(second)) == ("first", "second")
    (tmp_path / "taken.png").write_bytes(b"someone else's file")
    third = save_png(image(), tmp_path / "taken.png", "third")
    assert third == tmp_path / "taken-1.png"
    assert (tmp_path / "taken.png").read_bytes() == b"someone else's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat-1.png", "cat.png", "taken-1.png", "taken.png"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_file_has_the_users_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_png(image(), tmp_path / "a.png", "x")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644            # not a temporary file's private 0600


def test_save_to_folder_numbers_files_after_the_highest(tmp_path):
    folder = tmp_path / "outputs"
    assert save_png(image(), folder, "a") == folder / "00000.png"          # the folder is created
    assert save_png(image(), folder, "b") == folder / "00001.png"
    (folder / "00041-123456.png").write_bytes(b"A1111's")
    assert save_png(image(), folder, "c") == folder / "00042.png"
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00041-123456.png", "00042.png"]


def test_save_without_hard_links_still_never_overwrites(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "x.png").write_bytes(b"keep")
    path = save_png(image(), tmp_path / "x.png", "fallback")
    assert path == tmp_path / "x-1.png"
    assert read_parameters(path) == "fallback"
    assert (tmp_path / "x.png").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-1.png", "x.png"]


def test_only_our_own_stale_temporary_files_are_removed(tmp_path):
    ours = png_files._temporary_file(tmp_path)
    os.close(ours[0])
    stale, fresh = ours[1], tmp_path / ".latentdesk-00000000000f.png.tmp"
    not_ours = [tmp_path / name for name in (".latentdesk-notes.png.tmp", ".latentdesk-0123456789AB.png.tmp",
                                             "mine.png.tmp", ".latentdesk-0123456789ab.png", "00000.png")]
    for path in (fresh, *not_ours):
        path.write_bytes(b"x")
    linked = tmp_path / ".latentdesk-00000000000a.png.tmp"
    linked.symlink_to(tmp_path / "00000.png")
    hour_ago = time.time() - 3600
    for path in (stale, *not_ours):
        os.utime(path, (hour_ago, hour_ago))
    os.utime(linked, (hour_ago, hour_ago), follow_symlinks=False)
    assert png_files.remove_stale_temporaries(tmp_path) == [stale]
    assert fresh.exists() and linked.is_symlink() and all(p.exists() for p in not_ours)
    assert png_files.remove_stale_temporaries(tmp_path / "missing") == []


def test_failed_save_raises_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LatentDeskError, match="file"):
        save_png(image(), blocker / "out.png", "x")

    class Broken(Image.Image):
        def save(self, *args, **kwargs):
            raise OSError(28, "No space left on device")
    with pytest.raises(LatentDeskError, match="No space left"):
        save_png(Broken(), tmp_path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]        # no temporary file left behind


# -- reading -----------------------------------------------------------------------------------------

def test_comfyui_and_plain_pngs_have_no_parameters(tmp_path):
    comfy = PngInfo()
    comfy.add_text("prompt", '{"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}')
    comfy.add_text("workflow", '{"nodes": []}')
    image().save(tmp_path / "comfy.png", pnginfo=comfy)
    image().save(tmp_path / "plain.png")
    assert read_parameters(tmp_path / "comfy.png") is None
    assert read_parameters(tmp_path / "plain.png") is None


@pytest.mark.parametrize(("fmt", "encoding"), [("JPEG", "utf-16-be"), ("WEBP", "utf-16-be"), ("JPEG", "utf-16-le"),
                                               ("PNG", "utf-16-be")])
def test_a1111_exif_user_comment(tmp_path, fmt, encoding):
    text = "猫, cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 8x8"
    exif = Image.Exif()
    exif.get_ifd(png_files.EXIF_IFD)[png_files.USER_COMMENT] = b"UNICODE\0" + text.encode(encoding)
    path = tmp_path / f"image.{fmt.lower()}"
    image().save(path, fmt, exif=exif.tobytes())     # bytes: Pillow's PNG writer skips an Exif with only sub-IFDs
    assert read_parameters(path) == text


def test_broken_files_give_none(tmp_path):
    good = save_png(image(), tmp_path / "good.png", "a cat\nSteps: 1, Seed: 2, Size: 8x8")
    data = bytearray(good.read_bytes())
    data[data.index(b"a cat")] ^= 0xFF                       # the chunk's CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(data))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:20])
    (tmp_path / "text.png").write_text("not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("crc.png", "cut.png", "text.png", "empty.png"):
        assert read_parameters(tmp_path / name) is None, name


def test_huge_parameters_chunk_gives_none(tmp_path):
    path = save_png(image(), tmp_path / "huge.png", "x" * (png_files.MAX_PARAMETERS_CHARS + 1))
    assert read_parameters(path) is None


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(path: Path, *extras: bytes, side: int = 9000) -> Path:
    """A side x side (81 megapixels) 1-bit grey PNG, all black, with `extras` chunks before its image
    data; built by hand in a moment (Pillow would take seconds to encode it)."""
    row = b"\0" * (1 + (side + 7) // 8)              # filter byte 0, then the row's bits
    packer = zlib.compressobj(1)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(extras)
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


INFOTEXT = "a fox, at dusk\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512"


@pytest.mark.parametrize("stored", ["tEXt", "zTXt", "iTXt", "iTXt compressed", "eXIf", "none"])
def test_a_huge_pngs_parameters_are_read_from_its_chunks_without_decoding_a_pixel(tmp_path, monkeypatch, stored):
    """Before: Pillow's getexif() decoded the whole image (0.64 s, 310 MB for 81 MP) whenever the
    parameters were not in a chunk Image.open had read; now no Pillow decoder is even opened."""
    key, text = b"parameters\0", INFOTEXT.encode()
    exif = Image.Exif()
    exif.get_ifd(png_files.EXIF_IFD)[png_files.USER_COMMENT] = b"UNICODE\0" + INFOTEXT.encode("utf-16-be")
    extras = {"tEXt": [chunk(b"tEXt", key + text)],
              "zTXt": [chunk(b"zTXt", key + b"\0" + zlib.compress(text))],
              "iTXt": [chunk(b"iTXt", key + b"\0\0en\0\0" + text)],
              "iTXt compressed": [chunk(b"iTXt", key + b"\1\0\0\0" + zlib.compress(text))],
              "eXIf": [chunk(b"eXIf", exif.tobytes())],
              "none": [chunk(b"tEXt", b"Software\0something else")]}[stored]
    path = huge_png(tmp_path / "huge.png", *extras)
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or pytest.fail("Pillow opened the PNG"))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: opened.append(self) or pytest.fail("decoded"))

    start = time.perf_counter()
    found = read_parameters(path)
    seconds = time.perf_counter() - start
    assert found == (None if stored == "none" else INFOTEXT)
    assert opened == [] and seconds < 0.1, seconds      # 0.1 ms here; decoding took 0.64-0.78 s


def test_a_compressed_text_bomb_is_not_inflated_past_the_limit(tmp_path):
    bomb = zlib.compress(b"x" * (64 << 20), 9)                  # 64 MB of text in 64 KB
    path = huge_png(tmp_path / "bomb.png", chunk(b"zTXt", b"parameters\0\0" + bomb), side=64)
    tracemalloc.start()
    try:
        assert read_parameters(path) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * png_files.MAX_PARAMETERS_BYTES


def test_damaged_text_chunks_give_none(tmp_path):
    key = b"parameters\0"
    cases = {"cut zlib": chunk(b"zTXt", key + b"\0" + zlib.compress(b"Steps: 1")[:-3]),
             "bad zlib": chunk(b"zTXt", key + b"\0not zlib"),
             "bad method": chunk(b"zTXt", key + b"\7" + zlib.compress(b"Steps: 1")),
             "bad utf-8": chunk(b"iTXt", key + b"\0\0\0\0\xff\xfe"),
             "short iTXt": chunk(b"iTXt", key + b"\1"),
             "bad crc": chunk(b"tEXt", key + b"Steps: 1")[:-1] + b"\0",
             "length past the end": struct.pack(">I", 2**31 - 1) + b"tEXt" + key}
    for name, extra in cases.items():
        assert read_parameters(huge_png(tmp_path / "x.png", extra, side=8)) is None, name


def test_unreadable_file_raises_with_its_path(tmp_path):
    with pytest.raises(LatentDeskError, match="missing.png"):
        read_parameters(tmp_path / "missing.png")
    with pytest.raises(LatentDeskError, match=str(tmp_path)):
        read_parameters(tmp_path)


# -- model hash --------------------------------------------------------------------------------------

def test_model_hash_is_sha256_prefix(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    data = os.urandom(3 * 1024 + 17)
    path.write_bytes(data)
    monkeypatch.setattr(hashing, "HASH_BLOCK", 1024)        # several blocks: the file is streamed
    assert model_hash(path) == hashlib.sha256(data).hexdigest()[:10]


def test_model_hash_of_diffusers_folder_is_its_unet_weights(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"unet weights")
    (tmp_path / "model_index.json").write_text("{}")
    assert model_hash(tmp_path) == hashlib.sha256(b"unet weights").hexdigest()[:10]
    with pytest.raises(LatentDeskError, match="nothing"):
        model_hash(tmp_path / "nothing")


def test_guidance_moved_during_a_run_is_written_as_a_schedule_and_parsing_ignores_it():
    req = GenerationRequest(prompt="a red circle", guidance=7.0, steps=6)
    assert guidance_schedule([7.0] * 6) is None and guidance_schedule([]) is None
    assert guidance_schedule([7.0, 7.0, 3.5, 3.5, 3.5, 12.0]) == "7 (steps 1-2), 3.5 (steps 3-5), 12 (step 6)"
    text = to_infotext(req, "m", None, None, [7.0, 7.0, 3.5, 3.5, 3.5, 12.0])
    assert 'Guidance schedule: "7 (steps 1-2), 3.5 (steps 3-5), 12 (step 6)"' in text
    assert "CFG scale: 7," in text
    assert parse_infotext(text)["Guidance schedule"] == "7 (steps 1-2), 3.5 (steps 3-5), 12 (step 6)"
    assert request_from_infotext(text, GenerationRequest())[0].guidance == 7.0
    assert "Guidance schedule" not in to_infotext(req, "m", None, None, [7.0] * 6)


def test_speedups_are_written_only_when_on_and_missing_ones_mean_off():
    exact = GenerationRequest(prompt="a cat", deep_cache_blocks=2, deep_cache_start=0.5)   # interval 1: off
    assert "Deep cache" not in to_infotext(exact, None, None, None)
    assert "cut-off" not in to_infotext(exact, None, None, None)
    fast = replace(exact, deep_cache_interval=3, guidance_cutoff=0.3)
    assert to_infotext(fast, None, None, None).endswith(
        "Deep cache interval: 3, Deep cache blocks: 2, Deep cache start: 0.5, Guidance cut-off: 0.3")
    # Restoring an exact image's settings over a base with the speed-ups on gives them off.
    restored, warnings = request_from_infotext(to_infotext(exact, None, None, None), fast)
    assert (restored.deep_cache_interval, restored.guidance_cutoff) == (1, 0.0) and warnings == []


def test_unusable_speedup_values_are_reported_and_kept_from_the_base():
    text = "a cat\nSteps: 20, Seed: 1, Size: 64x64, Deep cache interval: 0, Guidance cut-off: 1.5"
    base = GenerationRequest(deep_cache_interval=4, guidance_cutoff=0.2)
    restored, warnings = request_from_infotext(text, base)
    assert (restored.deep_cache_interval, restored.guidance_cutoff) == (4, 0.2)
    assert len(warnings) == 2 and "Deep cache interval: '0'" in warnings[0] and "Guidance cut-off" in warnings[1]
