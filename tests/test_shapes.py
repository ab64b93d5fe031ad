"""The shapes world (SHAPES.md): exact palette and geometry, placement rules, captions, dataset, checker."""

import io
import json
import math
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from core.images import image_to_tensor
from core.shapes.captions import (
    HELDOUT_MARKERS,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    caption,
    describe,
    make_caption,
)
from core.shapes.checker import measure, object_mask, score
from core.shapes.dataset import ShapesDataset, collate, write_folder
from core.shapes.world import (
    ATTRIBUTES,
    COLORS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    coverage,
    render,
    render_array,
    sample_scene,
)

ALL = frozenset(ATTRIBUTES)


def scenes(n, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(n)]


# --- the world -----------------------------------------------------------------------------------

def test_palette_and_vocabulary_are_exactly_shapes_md():
    assert PALETTE == {
        "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (40, 170, 70),
        "cyan": (40, 200, 220), "gray": (128, 128, 128), "blue": (40, 80, 220), "purple": (140, 60, 200),
        "pink": (240, 130, 190), "white": (245, 245, 245), "black": (20, 20, 20), "brown": (130, 80, 40)}
    assert SHAPES == ("circle", "square", "triangle", "diamond", "star", "cross")
    assert SIZES == {"small": 32, "medium": 52, "large": 80}
    assert list(POSITIONS) == ["top left", "top", "top right", "left", "center", "right",
                               "bottom left", "bottom", "bottom right"]


def test_rendered_pixels_are_palette_colours_or_their_antialiased_mix():
    for scene in scenes(40, seed=1):
        pixels = render_array(scene).astype(np.float64)
        bg, fg = np.array(PALETTE[scene.background]), np.array(PALETTE[scene.color])
        assert (pixels[0, 0] == bg).all() and (pixels[-1, -1] == bg).all()
        cx, cy = int(scene.x + scene.s / 2), int(scene.y + scene.s / 2)
        assert (pixels[cy, cx] == fg).all(), scene  # every shape covers its box's centre
        # each pixel is bg + k/16 (fg - bg) for a whole number k of the 4x4 samples, rounded
        k = np.rint(((pixels - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg)) * 16)
        assert np.abs(pixels - np.rint(bg + (fg - bg) * k[..., None] / 16)).max() == 0


def _polygon_area(points):
    x, y = np.array(points, dtype=float).T
    return 0.5 * abs(x @ np.roll(y, -1) - y @ np.roll(x, -1))


def _exact_area(shape, s):
    """Areas from the SHAPES.md definitions, computed independently of world.py."""
    h = s / 2
    star = [((h if k % 2 == 0 else 0.4 * h) * math.sin(math.radians(36 * k)),
             -(h if k % 2 == 0 else 0.4 * h) * math.cos(math.radians(36 * k))) for k in range(10)]
    return {"circle": math.pi * h * h, "square": s * s,
            "triangle": _polygon_area([(h, 0), (s, s), (0, s)]),
            "diamond": _polygon_area([(h, 0), (s, h), (h, s), (0, h)]),
            "star": _polygon_area(star), "cross": s * s - 4 * (s / 3) ** 2}[shape]


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_geometry_area_box_and_orientation(shape):
    for s, x, y in [(29.3, 10.25, 40.7), (52.0, 37.6, 5.1), (87.9, 4.0, 31.35)]:
        alpha = coverage(shape, s, x, y)
        assert alpha.sum() == pytest.approx(_exact_area(shape, s), rel=0.015)
        rows, cols = np.nonzero(alpha)
        # the covered pixels span the shape's extent: s, except the star's (0.951 s wide, 0.905 s tall)
        width, height = (0.951 * s, 0.905 * s) if shape == "star" else (s, s)
        assert cols.max() + 1 - cols.min() == pytest.approx(width, abs=1.5)
        assert rows.max() + 1 - rows.min() == pytest.approx(height, abs=1.5)
        assert cols.min() >= math.floor(x) and cols.max() < math.ceil(x + s)
        assert rows.min() >= math.floor(y) and rows.max() < math.ceil(y + s)
        top, bottom = alpha[rows.min() + 1].sum(), alpha[rows.max() - 1].sum()
        if shape in ("triangle", "star"):  # apex / one point up
            peak = np.argmax(alpha[rows.min() + 1])
            assert peak + 0.5 == pytest.approx(x + s / 2, abs=1)
        if shape == "triangle":
            assert top < 0.3 * bottom
        if shape == "star":  # two feet at 144 degrees from up: x = centre +- 0.294 s, nothing between
            feet = np.nonzero(alpha[rows.max() - 1])[0] + 0.5 - (x + s / 2)
            assert np.abs(np.abs(feet) - 0.294 * s).max() < 2.5 and (np.abs(feet) > 0.2 * s).all()
        if shape == "diamond":  # corners of the box are empty, the middle row is full
            assert alpha[int(y + 2), int(x + 2)] == 0 and alpha[int(y + s / 2)].sum() == pytest.approx(s, abs=1.5)
        if shape == "cross":  # arms s/3 thick: the top row is a third of the middle row
            assert top / alpha[int(y + s / 2)].sum() == pytest.approx(1 / 3, abs=0.05)


def test_sizes_positions_and_colours_follow_the_rules():
    sample = scenes(3000, seed=2)
    counts = {"color": {}, "background": {}, "shape": {}, "size": {}, "position": {}}
    for sc in sample:
        assert sc.color != sc.background
        assert 0.9 <= sc.s / SIZES[sc.size] <= 1.1
        column, row = POSITIONS[sc.position]
        for edge, index in ((sc.x, column), (sc.y, row)):
            assert 4 <= edge <= 124 - sc.s  # the 4 px margin
            assert abs(edge - (4 + (120 - sc.s) * index / 2)) <= 4  # 0 / 50 / 100 % of the free range, +- 4
        for attribute, table in counts.items():
            table[getattr(sc, attribute)] = table.get(getattr(sc, attribute), 0) + 1
    for attribute, words in (("color", COLORS), ("background", COLORS), ("shape", SHAPES), ("size", SIZES),
                             ("position", POSITIONS)):
        expected = len(sample) / len(words)
        assert sorted(counts[attribute]) == sorted(words)
        assert all(abs(c - expected) < 0.25 * expected for c in counts[attribute].values()), counts[attribute]


def test_same_seed_same_bytes():
    first = [render(sc).tobytes() for sc in scenes(20, seed=5)]
    assert first == [render(sc).tobytes() for sc in scenes(20, seed=5)]
    assert first != [render(sc).tobytes() for sc in scenes(20, seed=6)]
    a, b = ShapesDataset(3, 50), ShapesDataset(3, 50)
    later = b[7]  # items do not depend on what was made before
    for i in (7, 0, 7):
        assert torch.equal(a[i].image, b[i].image) and a[i].caption == b[i].caption
    assert torch.equal(a[7].image, later.image)
    assert not torch.equal(ShapesDataset(4, 50)[7].image, later.image)


# --- captions ------------------------------------------------------------------------------------

def test_template_sets_are_large_and_disjoint():
    assert len(TRAIN_TEMPLATES) >= 30 and len(HELDOUT_TEMPLATES) >= 8
    assert len(set(TRAIN_TEMPLATES)) == len(TRAIN_TEMPLATES)
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    for template in TRAIN_TEMPLATES + HELDOUT_TEMPLATES:
        fields = re.findall(r"\{(\w+)\}", template)
        attributes = sorted({"pos": "position", "bg": "background"}.get(f.split("_")[0], f) for f in fields)
        assert attributes == sorted(ATTRIBUTES), template  # each attribute exactly once
        outside = re.sub(r"\[[^\]]*\]", "", template)
        assert re.findall(r"\{(\w+)\}", outside) == ["shape"], template  # only the noun is never dropped


def test_heldout_phrasings_never_occur_in_training_captions():
    rng = np.random.default_rng(8)
    training = [caption(sc, rng, "train")[0] for sc in scenes(5000, seed=8)]
    for marker in HELDOUT_MARKERS:
        assert not any(marker in text for text in training), marker
    # ... while every held-out caption carries its template's marker, whatever was left out
    marker_of = dict(zip(HELDOUT_TEMPLATES, HELDOUT_MARKERS, strict=True))
    rng = np.random.default_rng(9)
    used = set()
    for sc in scenes(2000, seed=9):
        text, _, template = make_caption(sc, rng, "heldout", drop_prob=0.5, empty_prob=0.0)
        assert template in marker_of and marker_of[template] in text, (template, text)
        used.add(template)
    assert used == set(HELDOUT_TEMPLATES)
    # and no training template, filled for the same scene, says what a held-out one says
    for sc in scenes(20, seed=10):
        for mentioned in (ALL, frozenset({"color", "shape"})):
            train = {describe(sc, t, mentioned) for t in TRAIN_TEMPLATES}
            assert not train & {describe(sc, t, mentioned) for t in HELDOUT_TEMPLATES}


def test_empty_caption_share():
    rng = np.random.default_rng(11)
    sample = scenes(5000, seed=11)
    texts = [caption(sc, rng)[0] for sc in sample]
    assert 0.085 <= texts.count("") / len(texts) <= 0.115  # default 10 %
    assert "" not in [caption(sc, rng, empty_prob=0.0)[0] for sc in sample[:1000]]
    assert all(caption(sc, rng, empty_prob=1.0) == ("", frozenset()) for sc in sample[:100])
    assert ShapesDataset(0, 10, split="heldout").empty_prob == 0.0


@pytest.mark.parametrize("templates", ["train", "heldout"])
def test_caption_words_are_exactly_the_mentioned_attributes(templates):
    rng = np.random.default_rng(12)
    dropped = {a: 0 for a in ATTRIBUTES}
    for sc in scenes(3000, seed=12):
        text, mentioned = caption(sc, rng, templates, empty_prob=0.0)
        words = set(re.findall(r"[a-z]+", text))
        colours = {c for c in COLORS if c in words}
        assert colours == {getattr(sc, a) for a in ("color", "background") if a in mentioned}, text
        assert {s for s in SHAPES if s in words} == ({sc.shape} if "shape" in mentioned else set()), text
        assert {s for s in ("small", "large", "medium") if s in words} == (
            {sc.size} if "size" in mentioned else set()), text
        assert sc.size != "medium" or "size" not in mentioned  # medium has no word
        position_words = words & {"top", "bottom", "left", "right", "center"}
        if "position" in mentioned:
            assert re.search(rf"\b{sc.position}\b", text), text
        else:
            assert not position_words, text
        if "background" in mentioned and templates == "train":  # a bare colour always means the object
            bg = sc.background
            assert re.search(rf"\b{bg} (background|behind)\b|\b(on|of|background|plain) (a )?{bg}\b", text), text
        assert mentioned, text
        for a in ATTRIBUTES:
            dropped[a] += a not in mentioned
    assert all(count > 100 for count in dropped.values()), dropped  # each attribute is left out sometimes


def test_captions_are_deterministic_from_the_rng():
    sample = scenes(200, seed=13)
    first = [caption(sc, np.random.default_rng(i)) for i, sc in enumerate(sample)]
    assert first == [caption(sc, np.random.default_rng(i)) for i, sc in enumerate(sample)]
    assert len({text for text, _ in first}) > 150
    with pytest.raises(ValueError, match="templates"):
        caption(sample[0], np.random.default_rng(0), templates="test")


# --- dataset -------------------------------------------------------------------------------------

def test_dataset_items_and_collate():
    ds = ShapesDataset(21, 8)
    item = ds[3]
    assert item.image.shape == (3, 128, 128) and item.image.dtype == torch.float32
    assert item.image.min() >= -1 and item.image.max() <= 1
    assert torch.equal(item.image, image_to_tensor(render(item.scene))[0])  # same arithmetic as the VAE path
    images, captions, scene_list, mentioned = collate([ds[i] for i in range(4)])
    assert images.shape == (4, 3, 128, 128) and len(captions) == len(scene_list) == len(mentioned) == 4
    with pytest.raises(IndexError):
        ds[8]
    train, heldout = ShapesDataset(21, 50), ShapesDataset(21, 50, split="heldout")
    assert [train.scene_and_caption(i)[0] for i in range(50)] != [heldout.scene_and_caption(i)[0] for i in range(50)]


def test_dataset_speed():
    ds = ShapesDataset(0, 600)
    rates = []
    for part in range(3):  # best of three: other jobs on a shared machine only ever slow a run down
        start = time.perf_counter()
        for i in range(part * 200, part * 200 + 200):
            ds[i]
        rates.append(200 / (time.perf_counter() - start))
    assert max(rates) > 300, f"{max(rates):.0f} items/s"  # ~2,000/s measured on one core


def test_write_folder(tmp_path):
    ds = ShapesDataset(5, 10)
    write_folder(ds, 3, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000.png", "00000.txt", "00001.png", "00001.txt", "00002.png", "00002.txt"]
    for i in range(3):
        item = ds[i]
        with Image.open(tmp_path / f"{i:05d}.png") as image:
            assert image.mode == "RGB" and torch.equal(image_to_tensor(image)[0], item.image)
            assert Scene(**{k: v for k, v in json.loads(image.text["scene"]).items() if k != "mentioned"}) \
                == item.scene
        assert (tmp_path / f"{i:05d}.txt").read_text(encoding="utf-8") == item.caption
    with pytest.raises(ValueError, match="10"):
        write_folder(ds, 11, tmp_path)


# --- checker -------------------------------------------------------------------------------------

def test_checker_reads_ground_truth_perfectly():
    wrong = []
    for sc in scenes(1000, seed=31):
        result = score(measure(render(sc)), sc, ALL)
        if not all(result.values()):
            wrong.append((sc, result))
    assert not wrong, wrong[:3]


def _jpeg(image):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _noise(image, rng, sigma=8.0):
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, sigma, (128, 128, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)  # also checks ndarray input


@pytest.mark.parametrize("perturb", ["blur", "jpeg", "noise"])
def test_checker_survives_blur_jpeg_and_noise(perturb):
    rng = np.random.default_rng(32)
    change = {"blur": lambda im: im.filter(ImageFilter.GaussianBlur(1)), "jpeg": _jpeg,
              "noise": lambda im: _noise(im, rng)}[perturb]
    sample = scenes(300, seed=33)
    correct = sum(all(score(measure(change(render(sc))), sc, ALL).values()) for sc in sample)
    assert correct / len(sample) >= 0.99  # 100 % measured on 2,500 scenes each


def test_checker_scores_only_what_the_caption_names():
    sc = Scene("black", "red", "star", "large", "top left", 80.0, 6.0, 5.0)
    measured = measure(render(sc))
    assert (measured.background, measured.color, measured.shape, measured.size, measured.position) == (
        "black", "red", "star", "large", "top left")
    assert score(measured, sc, frozenset({"color", "shape"})) == {"color": True, "shape": True}
    other = Scene("black", "blue", "cross", "small", "center", 32.0, 48.0, 48.0)
    assert score(measured, other, ALL) == {"background": True, "color": False, "shape": False,
                                           "size": False, "position": False}
    assert score(measured, other, frozenset()) == {}
    with pytest.raises(ValueError, match="colour"):
        score(measured, sc, {"colour"})


def test_checker_on_a_blank_and_a_larger_image():
    blank = measure(Image.new("RGB", (128, 128), PALETTE["green"]))
    assert blank.background == "green" and blank.shape is None and blank.color is None
    sc = Scene("white", "purple", "triangle", "small", "bottom right", 33.0, 88.0, 87.0)
    big = render(sc).resize((512, 512), Image.Resampling.NEAREST)
    assert all(score(measure(big), sc, ALL).values())


def test_object_mask_is_the_rendered_object_of_a_ground_truth_scene():
    """The mask measure() reads the object from is the drawn shape: the pixels the scene's own geometry
    (world.coverage, not the checker) covers more than half. A pixel covered exactly half is a tie that the
    8-bit rounding of its colour decides, so it is left out of the second, exact comparison."""
    for sc in scenes(200, seed=34):
        alpha = coverage(sc.shape, sc.s, sc.x, sc.y)
        drawn, mask = alpha > 0.5, object_mask(render(sc))
        assert mask.shape == (128, 128) and mask.dtype == bool
        assert (mask & drawn).sum() / (mask | drawn).sum() > 0.9, sc
        clear = alpha != 0.5
        assert np.array_equal(mask[clear], drawn[clear]), sc
    assert not object_mask(Image.new("RGB", (128, 128), PALETTE["green"])).any()
