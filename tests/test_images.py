"""Image files in, sizes, and tensors: every case is built on the fly with Pillow.

Each mode a file can decode to must come out RGB 8-bit with the colours a viewer
shows; each broken or hostile file must give one LatentDeskError naming the file.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from core.errors import LatentDeskError
from core.images import (
    default_size_for,
    fit_image,
    image_to_tensor,
    load_image,
    psnr,
    tensor_to_images,
    to_rgb,
)
from core.limits import check_size

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def saved(image: Image.Image, path: Path, fmt: str | None = None, **options) -> Path:
    image.save(path, fmt, **options)
    return path


def quadrants(size: int = 16) -> Image.Image:
    """Red, green / blue, white quadrants: a wrong channel order or flip shows at once."""
    image = Image.new("RGB", (size, size), WHITE)
    half = size // 2
    image.paste(RED, (0, 0, half, half))
    image.paste(GREEN, (half, 0, size, half))
    image.paste(BLUE, (0, half, half, size))
    return image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG header claiming width x height (8-bit RGB) with no pixel data: a bomb in 45 bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b""))
    return path


def pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    return list(image.getdata())


# ---------------------------------------------------------------- formats and modes

@pytest.mark.parametrize("fmt, options, suffix", [
    ("PNG", {}, ".png"),
    ("WEBP", {"lossless": True}, ".webp"),
    ("BMP", {}, ".bmp"),
    ("TIFF", {}, ".tif"),
    ("GIF", {}, ".gif"),
])
def test_lossless_formats_load_exact_colours(tmp_path, fmt, options, suffix):
    original = quadrants()
    image = load_image(saved(original, tmp_path / f"q{suffix}", fmt, **options))
    assert image.mode == "RGB" and image.size == (16, 16)
    assert pixels(image) == pixels(original)


def test_jpeg_loads_close_to_its_colours(tmp_path):
    image = load_image(saved(quadrants(32), tmp_path / "q.jpg", quality=95))
    for xy, colour in [((4, 4), RED), ((28, 4), GREEN), ((4, 28), BLUE), ((28, 28), WHITE)]:
        assert np.abs(np.subtract(image.getpixel(xy), colour)).max() <= 8, (xy, image.getpixel(xy))


def grey_file(tmp_path: Path, values, dtype, fmt: str) -> Path:
    return saved(Image.fromarray(np.array([values], dtype=dtype)), tmp_path / f"grey.{fmt.lower()}", fmt)


@pytest.mark.parametrize("dtype, fmt, values, expected", [
    # 16-bit grey scales by 255/65535, it is not clipped at 255 as Pillow's convert("L") does.
    (np.uint16, "PNG", [0, 257, 32768, 65535], [0, 1, 128, 255]),
    (np.uint16, "TIFF", [0, 257, 32768, 65535], [0, 1, 128, 255]),
    # 32-bit integer "I" holds 16-bit values; outside 0..65535 is clipped.
    (np.int32, "TIFF", [-5, 32768, 65535, 70000], [0, 128, 255, 255]),
    # 32-bit float "F" is 0..1.
    (np.float32, "TIFF", [-0.5, 0.25, 1.0, 2.0], [0, 64, 255, 255]),
])
def test_high_bit_depth_grey_scales_to_8_bits(tmp_path, dtype, fmt, values, expected):
    path = grey_file(tmp_path, values, dtype, fmt)
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I", "F")  # the file really decodes to a wide mode
    image = load_image(path)
    assert image.mode == "RGB"
    assert pixels(image) == [(v, v, v) for v in expected]


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_big_and_little_endian_16_bit_grey(mode):
    assert to_rgb(Image.new(mode, (1, 1), 65535)).getpixel((0, 0)) == WHITE
    assert to_rgb(Image.new(mode, (1, 1), 32768)).getpixel((0, 0)) == (128, 128, 128)


def test_cmyk_jpeg_with_adobe_marker_is_cyan(tmp_path):
    path = saved(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "cyan.jpg")
    with Image.open(path) as raw:
        assert raw.mode == "CMYK" and "adobe" in raw.info  # the inverted-channel (Photoshop) layout
    red, green, blue = load_image(path).getpixel((8, 8))
    assert red <= 5 and green >= 250 and blue >= 250


def test_cmyk_tiff(tmp_path):
    path = saved(Image.new("CMYK", (4, 4), (0, 255, 0, 0)), tmp_path / "magenta.tif")
    assert load_image(path).getpixel((1, 1)) == (255, 0, 255)


def test_lab_tiff_converts_colorimetrically(tmp_path):
    lab = Image.new("LAB", (2, 1), (255, 128, 128))  # L* 100, a* 0, b* 0: white
    lab.putpixel((1, 0), (136, 208, 195))             # L* 53, a* 80, b* 67: sRGB red
    white, red = pixels(load_image(saved(lab, tmp_path / "lab.tif")))
    assert min(white) >= 250
    assert red[0] >= 240 and max(red[1:]) <= 20


def palette_image() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette(list(RED + BLUE) + [0] * (256 - 2) * 3)
    image.putpixel((1, 0), 1)
    return image


def test_palette_without_transparency(tmp_path):
    assert pixels(load_image(saved(palette_image(), tmp_path / "p.png"))) == [RED, BLUE]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_becomes_white(tmp_path, suffix):
    path = saved(palette_image(), tmp_path / f"p{suffix}", transparency=1)
    with Image.open(path) as raw:
        assert raw.mode == "P" and raw.info["transparency"] == 1
    assert pixels(load_image(path)) == [RED, WHITE]


def test_rgba_alpha_is_composited_onto_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(0, 0, 0, 0), (255, 0, 0, 128), (0, 0, 255, 255)])  # black behind alpha 0
    for path in (tmp_path / "a.png", tmp_path / "a.webp"):
        saved(rgba, path, lossless=True) if path.suffix == ".webp" else saved(rgba, path)
        assert pixels(load_image(path)) == [WHITE, (255, 127, 127), BLUE], path


def test_grey_alpha_is_composited_onto_white(tmp_path):
    la = Image.new("LA", (3, 1))
    la.putdata([(0, 0), (0, 255), (100, 255)])
    assert pixels(load_image(saved(la, tmp_path / "la.png"))) == [WHITE, BLACK, (100, 100, 100)]


def test_colour_key_transparency_becomes_white(tmp_path):
    rgb = Image.new("RGB", (2, 1), GREEN)
    rgb.putpixel((1, 0), RED)
    path = saved(rgb, tmp_path / "key.png", transparency=GREEN)
    assert pixels(load_image(path)) == [WHITE, RED]


def test_palette_alpha_mode_is_composited_onto_white():
    pa = Image.new("PA", (2, 1))
    pa.putpalette(list(RED + BLUE) + [0] * (256 - 2) * 3)
    pa.putdata([(0, 255), (1, 0)])
    assert pixels(to_rgb(pa)) == [RED, WHITE]


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_one_bit_images(tmp_path, suffix):
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    image = load_image(saved(bits, tmp_path / f"bits{suffix}"))
    assert image.mode == "RGB" and pixels(image) == [BLACK, WHITE]


def test_unconvertible_mode_is_a_clear_error():
    with pytest.raises(LatentDeskError, match="colour mode La"):
        to_rgb(Image.new("La", (1, 1)))


# ---------------------------------------------------------------- orientation and animation

@pytest.mark.parametrize("orientation, marker_at", [
    (3, lambda w, h: (w - 3, h - 3)),  # 180 degrees: top-left to bottom-right
    (6, lambda w, h: (w - 3, 2)),      # stored rotated; turn 90 clockwise: top-left to top-right
    (8, lambda w, h: (2, h - 3)),      # turn 90 anticlockwise: top-left to bottom-left
])
def test_exif_orientation_is_applied(tmp_path, orientation, marker_at):
    stored = Image.new("RGB", (48, 24), BLUE)
    stored.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = load_image(saved(stored, tmp_path / "phone.jpg", exif=exif, quality=95))
    w, h = (24, 48) if orientation in (6, 8) else (48, 24)
    assert image.size == (w, h)
    red, _, blue = image.getpixel(marker_at(w, h))
    assert red > 200 and blue < 60  # the marker moved where the viewer shows it
    red, _, blue = image.getpixel((w // 2, h // 2))
    assert red < 60 and blue > 200


@pytest.mark.parametrize("fmt, suffix", [("GIF", ".gif"), ("WEBP", ".webp")])
def test_animation_gives_its_first_frame(tmp_path, fmt, suffix):
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, GREEN, BLUE)]
    path = saved(frames[0], tmp_path / f"anim{suffix}", fmt, save_all=True, append_images=frames[1:],
                 duration=100, lossless=True)
    with Image.open(path) as raw:
        assert raw.n_frames == 3
    assert set(pixels(load_image(path))) == {RED}


def test_multi_picture_jpeg_gives_its_first_picture(tmp_path):
    """Phones save MPO (a JPEG plus extra pictures) as .jpg; Pillow's JPEG opener returns it."""
    first, second = Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)
    path = saved(first, tmp_path / "phone.jpg", "MPO", save_all=True, append_images=[second])
    with Image.open(path) as raw:
        assert raw.format == "MPO" and raw.n_frames == 2
    red, green, blue = load_image(path).getpixel((8, 8))
    assert red >= 250 and green <= 5 and blue <= 5


# ---------------------------------------------------------------- broken and hostile files

def truncated(fmt: str, suffix: str):
    def build(path: Path) -> Path:
        path = saved(quadrants(64), path.with_suffix(suffix), fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    return build


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def folder(path: Path) -> Path:
    path.mkdir()
    return path


def zero_width_png(path: Path) -> Path:
    header = struct.pack(">IIBBBBB", 0, 16, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
                     + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))
    return path


HOSTILE = [
    ("missing", lambda p: p / "nowhere.png", "no such file"),
    ("folder", lambda p: folder(p / "folder.png"), "not a file"),
    ("empty", lambda p: written(p / "e.png", b""), "the file is empty"),
    ("garbage", lambda p: written(p / "g.png", b"not an image " * 50), "not an image"),
    ("text renamed", lambda p: written(p / "t.jpg", b"hello\n"), "not an image"),
    ("other format", lambda p: saved(quadrants(), p / "q.ppm"), "PNG, JPEG, WebP"),
    ("zero size", lambda p: zero_width_png(p / "zero.png"), "not an image"),
    ("truncated png", lambda p: truncated("PNG", ".png")(p / "t"), "truncated"),
    ("truncated jpeg", lambda p: truncated("JPEG", ".jpg")(p / "t"), "truncated"),
    ("truncated gif", lambda p: truncated("GIF", ".gif")(p / "t"), "truncated"),
    ("truncated tiff", lambda p: truncated("TIFF", ".tif")(p / "t"), "truncated"),
    ("truncated bmp", lambda p: truncated("BMP", ".bmp")(p / "t"), "truncated"),
    ("truncated webp", lambda p: truncated("WEBP", ".webp")(p / "t"), "cannot be read"),
    # Over our limit, under Pillow's: refused by our own header check.
    ("bomb 81 MP", lambda p: png_claiming(p / "big.png", 9000, 9000), "9000x9000 pixels (81.0 megapixels)"),
    # Over Pillow's own limit: its DecompressionBombError, retold with the figure.
    ("bomb 400 MP", lambda p: png_claiming(p / "bomb.png", 20000, 20000), "400.0 megapixels"),
]


@pytest.mark.parametrize("build, words", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_files_give_one_clear_error(tmp_path, build, words):
    path = build(tmp_path)
    with pytest.raises(LatentDeskError) as caught:
        load_image(path)
    message = str(caught.value)
    assert message.startswith(str(path) + ": ")
    assert words in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bomb_is_refused_before_decoding(tmp_path):
    """A real 20000x20000 1-bit PNG is 48 kB; decoding it would take 400 MB as RGB."""
    path = saved(Image.new("1", (20000, 20000)), tmp_path / "real_bomb.png")
    assert path.stat().st_size < 100_000
    with pytest.raises(LatentDeskError, match="400.0 megapixels; Latent Desk opens images up to 67.1"):
        load_image(path)


@pytest.mark.parametrize("where", ["zTXt", "iTXt", "iCCP", "zTXt after the image data"])
def test_a_large_compressed_extra_chunk_is_no_damage(tmp_path, where):
    """Pillow refuses a PNG whose compressed text or ICC profile inflates past 1 MiB (its zlib-bomb
    guard): such an image was reported as damaged. Now its picture is read without those chunks."""
    big = zlib.compress(b"<x:xmpmeta>" + b" " * (2 << 20))          # 2 MiB of text in about 2 KB
    extra = {"zTXt": png_chunk(b"zTXt", b"XML:com.adobe.xmp\0\0" + big),
             "iTXt": png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + big),
             "iCCP": png_chunk(b"iCCP", b"huge profile\0\0" + big),
             "zTXt after the image data": png_chunk(b"zTXt", b"Comment\0\0" + big)}[where]
    data = saved(quadrants(64), tmp_path / "plain.png").read_bytes()
    image_data = data.index(b"IDAT") - 4
    at = data.index(b"IEND") - 4 if where.endswith("after the image data") else image_data
    path = tmp_path / "with_extras.png"
    path.write_bytes(data[:at] + extra + data[at:])
    assert pixels(load_image(path)) == pixels(quadrants(64))


def test_damaged_files_never_crash(tmp_path):
    """Random byte flips in small valid files: each loads as RGB or gives LatentDeskError."""
    rng = random.Random(1234)
    outcomes = set()
    for fmt, suffix in [("PNG", ".png"), ("JPEG", ".jpg"), ("GIF", ".gif"), ("TIFF", ".tif"), ("BMP", ".bmp")]:
        data = saved(quadrants(32), tmp_path / f"good{suffix}", fmt).read_bytes()
        for i in range(25):
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            path = tmp_path / f"bad{i}{suffix}"
            path.write_bytes(bytes(damaged))
            try:
                assert load_image(path).mode == "RGB"
                outcomes.add("loaded")
            except LatentDeskError as exc:
                assert str(exc).startswith(str(path))
                outcomes.add("refused")
    assert outcomes == {"loaded", "refused"}  # the fuzzing exercised both paths


# ---------------------------------------------------------------- sizes

@pytest.mark.parametrize("width, height, words", [
    (513, 512, "width 513 is not a multiple of 8; try 512"),
    (512, 772, "height 772 is not a multiple of 8; try 776"),
    (512, 60, "height 60 is too small; the smallest is 64"),
    (8200, 512, "width 8200 is too large; the largest is 8192"),
    (512.0, 512, "width must be a whole number of pixels, not 512.0"),
    ("512", 512, "width must be a whole number of pixels, not '512'"),
    (True, 512, "width must be a whole number of pixels, not True"),
    (512, None, "height must be a whole number of pixels, not None"),
])
def test_check_size_messages(width, height, words):
    with pytest.raises(LatentDeskError) as caught:
        check_size(width, height)
    assert str(caught.value) == words


@pytest.mark.parametrize("width, height", [(64, 64), (512, 768), (8192, 8192), (np.int64(1024), 1024)])
def test_check_size_accepts_usable_sizes(width, height):
    assert check_size(width, height) is None


def marked(size: tuple[int, int]) -> Image.Image:
    """White, a red 16x16 square at the centre, green bands at the ends of the long side."""
    w, h = size
    image = Image.new("RGB", size, WHITE)
    image.paste(RED, (w // 2 - 8, h // 2 - 8, w // 2 + 8, h // 2 + 8))
    band = (0, 0, 48, h) if w > h else (0, 0, w, 48)
    image.paste(GREEN, band)
    image.paste(GREEN, (w - 48, 0, w, h) if w > h else (0, h - 48, w, h))
    return image


@pytest.mark.parametrize("size", [(256, 128), (128, 256)])
def test_fit_image_covers_then_crops_the_centre(size):
    fitted = fit_image(marked(size), 64, 64)
    assert fitted.size == (64, 64)
    red = np.argwhere(np.all(np.asarray(fitted) == RED, axis=-1))
    assert len(red) > 0
    assert np.allclose(red.mean(axis=0), (31.5, 31.5), atol=0.5)  # the centre stayed in the centre
    # The ends of the long side (scaled to 24 px, with 32 px cut each side) are gone.
    assert not np.any(np.all(np.asarray(fitted) == GREEN, axis=-1))


def test_fit_image_is_resize_to_cover_then_centre_crop():
    image = quadrants(30).resize((300, 200))
    fitted = fit_image(image, 512, 512)  # cover: 768x512, then 128 px off each side
    expected = image.resize((768, 512), Image.Resampling.LANCZOS).crop((128, 0, 640, 512))
    assert fitted.size == (512, 512)
    assert fitted.tobytes() == expected.tobytes()


def test_fit_image_exact_size_is_an_unchanged_copy():
    image = quadrants(64)
    fitted = fit_image(image, 64, 64)
    assert fitted is not image and fitted.tobytes() == image.tobytes()


def test_fit_image_thin_strip_is_cheap_and_correct():
    strip = Image.new("RGB", (8192, 8), RED)
    strip.paste(BLUE, (4080, 0, 4112, 8))  # the kept centre is x 4092..4100, Lanczos reads 3 px more
    fitted = fit_image(strip, 512, 512)  # resize-then-crop would build a 524288x512 image first
    assert fitted.size == (512, 512)
    assert set(pixels(fitted)) == {BLUE}  # all red, outside the centre, was cut away


@pytest.mark.parametrize("size", [(1000, 999), (777, 333), (64, 64), (100, 5000)])
def test_fit_image_always_gives_the_exact_size(size):
    assert fit_image(Image.new("RGB", size), 512, 768).size == (512, 768)


def test_fit_image_refuses_sizes_the_vae_cannot_take():
    with pytest.raises(LatentDeskError, match="width 513 is not a multiple of 8; try 512"):
        fit_image(quadrants(), 513, 512)


@pytest.mark.parametrize("size, max_side, multiple, expected", [
    ((1000, 700), None, 8, (1000, 696)),      # rounded down, never up
    ((513, 767), None, 8, (512, 760)),
    ((4000, 3000), 1024, 8, (1024, 768)),     # long side scaled to max_side first
    ((3000, 4000), 1024, 8, (768, 1024)),
    ((1001, 333), 500, 8, (496, 160)),        # 500 x 166 after scaling, then rounded down
    ((30, 500), None, 8, (64, 496)),          # never below 64
    ((10000, 5000), None, 8, (8192, 4096)),   # no max_side: the largest check_size accepts
    ((1000, 700), None, 64, (960, 640)),
])
def test_default_size_for(size, max_side, multiple, expected):
    image = Image.new("1", size)
    assert default_size_for(image, max_side=max_side, multiple=multiple) == expected
    if multiple == 8:
        check_size(*expected)


# ---------------------------------------------------------------- tensors

def every_value_image() -> Image.Image:
    """All 256 levels in every channel, in a different order per channel."""
    levels = np.arange(256, dtype=np.uint8)
    channels = [levels, levels[::-1], np.roll(levels, 77)]
    return Image.fromarray(np.stack(channels, axis=-1).reshape(16, 16, 3))


def test_image_to_tensor_layout_and_range():
    x = image_to_tensor(quadrants(16))
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0]   # red, channel first
    assert x[0, :, 0, 15].tolist() == [-1.0, 1.0, -1.0]  # green, top right: width is the last axis
    assert x[0, :, 15, 0].tolist() == [-1.0, -1.0, 1.0]  # blue, bottom left


def test_round_trip_is_exact_for_every_8_bit_value():
    image = every_value_image()
    (back,) = tensor_to_images(image_to_tensor(image))
    assert back.mode == "RGB" and back.size == image.size
    assert back.tobytes() == image.tobytes()


def test_tensor_to_images_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 6).expand(2, 3, 1, 6)
    images = tensor_to_images(x.half())
    assert len(images) == 2
    # (x / 2 + 0.5) * 255, rounded half to even: 0 -> 127.5 -> 128, 0.5 -> 191.25 -> 191
    assert [p[0] for p in pixels(images[1])] == [0, 0, 128, 191, 255, 255]


def test_tensor_to_images_refuses_nan_and_bad_shapes():
    with pytest.raises(LatentDeskError, match="NaN"):
        tensor_to_images(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tensor_to_images(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="RGB"):
        image_to_tensor(Image.new("RGBA", (8, 8)))


def test_psnr_is_inf_for_equal_images_and_falls_with_the_error():
    grey = Image.new("RGB", (4, 4), (100, 100, 100))
    assert psnr(grey, grey) == float("inf")
    # the red channel one level off everywhere: MSE 1/3
    assert psnr(Image.new("RGB", (4, 4), (101, 100, 100)), grey) == pytest.approx(10 * math.log10(255 ** 2 / (1 / 3)))
    with pytest.raises(ValueError, match="shapes"):
        psnr(grey, Image.new("RGB", (4, 5)))
