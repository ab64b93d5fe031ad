"""The shapes world exactly as docs/SHAPES.md defines it: words, a scene, and its picture.

    PALETTE, SHAPES, SIZES, POSITIONS    the vocabulary (docs/SHAPES.md tables, in their order)
    Scene                                one picture's attributes plus its exact geometry
    sample_scene(rng)                    uniform over the words, then size and placement jitter
    coverage(shape, s, x, y)             (128, 128) float alpha of one shape, 4x4 supersampled
    render(scene)                        the 128x128 RGB picture

Coordinates are pixels with pixel j covering [j, j + 1); (x, y) is the left/top of
the object's s x s box. Every shape is an exact geometric figure; anti-aliasing is
the fraction of a pixel's 4 x 4 sample points inside it (a box filter over a 4x
supersampled drawing), so a pixel wholly inside or outside is an exact palette colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_SIZE = 128
MARGIN = 4          # the box keeps this far from every image edge
JITTER = 4.0        # +- px around the 0 / 50 / 100 % placement
SIZE_JITTER = 0.10  # +- 10 % around the nominal size
SUPERSAMPLE = 4    # samples per pixel side; coverage() packs 4 samples into one uint32

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 70),
    "cyan": (40, 200, 220),
    "gray": (128, 128, 128),
    "blue": (40, 80, 220),
    "purple": (140, 60, 200),
    "pink": (240, 130, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "brown": (130, 80, 40),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
# "medium" has no word in captions (docs/SHAPES.md): a caption never names it.
SIZES: dict[str, float] = {"small": 32.0, "medium": 52.0, "large": 80.0}
# position word -> (column, row) as 0 = start, 1 = middle, 2 = end of the free range
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
ATTRIBUTES = ("background", "color", "shape", "size", "position")
# The words each attribute can take, in a fixed order: class indices for a caption's attributes.
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {"background": COLORS, "color": COLORS, "shape": SHAPES,
                                                "size": tuple(SIZES), "position": tuple(POSITIONS)}


def attribute_labels(scene: Scene, mentioned: frozenset[str]) -> list[int]:
    """Per attribute (ATTRIBUTES order), the index of the scene's value where the caption names it, else -1."""
    return [ATTRIBUTE_VALUES[a].index(getattr(scene, a)) if a in mentioned else -1 for a in ATTRIBUTES]

STAR_INNER = 0.4  # inner radius / outer radius (docs/SHAPES.md); a true pentagram would be 0.382
# Area of each shape over s^2 and its centroid inside the unit box (the checker reads
# size and placement back from these). Star: 10 triangles of sides R, r at 36 degrees.
AREA_RATIO = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5,
              "star": 5 * 0.5 * (STAR_INNER * 0.5) * math.sin(math.radians(36)), "cross": 5 / 9}
CENTROID = {"circle": (0.5, 0.5), "square": (0.5, 0.5), "triangle": (0.5, 2 / 3), "diamond": (0.5, 0.5),
            "star": (0.5, 0.5), "cross": (0.5, 0.5)}


@dataclass(frozen=True)
class Scene:
    """One picture: the five words, plus the object's size s and its box's left/top (x, y) in px."""

    background: str
    color: str
    shape: str
    size: str
    position: str
    s: float
    x: float
    y: float


def free_range(s: float) -> tuple[float, float]:
    """Where the box's left (or top) edge may lie for object size s: [4, 124 - s]."""
    return MARGIN, IMAGE_SIZE - MARGIN - s


def placement(s: float, index: int) -> float:
    """The box edge for start / middle / end (index 0 / 1 / 2) of the free range, before jitter."""
    lo, hi = free_range(s)
    return lo + (hi - lo) * index / 2


def sample_scene(rng: np.random.Generator) -> Scene:
    """A scene uniform over the words (object colour != background), sized and placed by the rules."""
    background = COLORS[rng.integers(len(COLORS))]
    others = [c for c in COLORS if c != background]
    color = others[rng.integers(len(others))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = tuple(SIZES)[rng.integers(len(SIZES))]
    position = tuple(POSITIONS)[rng.integers(len(POSITIONS))]
    s = SIZES[size] * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    jx, jy = rng.uniform(-JITTER, JITTER, size=2)
    column, row = POSITIONS[position]
    lo, hi = free_range(s)
    x = float(np.clip(placement(s, column) + jx, lo, hi))
    y = float(np.clip(placement(s, row) + jy, lo, hi))
    return Scene(background, color, shape, size, position, float(s), x, y)


def star_vertices(s: float) -> list[tuple[float, float]]:
    """The 10 vertices around the centre, outer ones at 0, 72, ... degrees clockwise from straight up."""
    radii = [s / 2 if k % 2 == 0 else STAR_INNER * s / 2 for k in range(10)]
    return [(r * math.sin(math.radians(36 * k)), -r * math.cos(math.radians(36 * k))) for k, r in enumerate(radii)]


def _inside_star(adx: np.ndarray, dy: np.ndarray, s: float) -> np.ndarray:
    """The star, mirrored onto its right half (adx = |x - cx| >= 0, dy = y - cy, y down).

    With inner/outer = 0.4 the star is not convex (the angle at an inner vertex is
    reflex), but rays from the centre through the inner vertices cut it into convex
    pieces. On the right half: the half top point (0..36 deg from up, one edge), the
    right point (36..108 deg, two edges) and the lower right point (108..180 deg, two edges).
    """
    v = star_vertices(s)

    def centre_side(p: tuple[float, float], q: tuple[float, float]) -> np.ndarray:
        # the side of the line p -> q that holds the centre (the origin)
        (px, py), (qx, qy) = p, q
        sign = 1.0 if (qx - px) * (-py) - (qy - py) * (-px) >= 0 else -1.0
        return sign * ((qx - px) * (dy - py) - (qy - py) * (adx - px)) >= 0

    def clockwise_of(p: tuple[float, float]) -> np.ndarray:
        # further clockwise than the ray from the centre through p (screen coordinates)
        return p[0] * dy - p[1] * adx >= 0

    beyond_36, beyond_108 = clockwise_of(v[1]), clockwise_of(v[3])
    top = ~beyond_36 & centre_side(v[0], v[1])
    right = beyond_36 & ~beyond_108 & centre_side(v[1], v[2]) & centre_side(v[2], v[3])
    lower = beyond_108 & centre_side(v[3], v[4]) & centre_side(v[4], v[5])
    return top | right | lower


def _inside(shape: str, px: np.ndarray, py: np.ndarray, s: float, x: float, y: float) -> np.ndarray:
    """Which sample points (px a row vector, py a column vector) lie inside the shape."""
    cx, cy, h = x + s / 2, y + s / 2, s / 2
    dx, dy = px - cx, py - cy
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # apex (cx, y), base from (x, y + s) to (x + s, y + s)
        return (np.abs(dx) <= (py - y) / 2) & (py <= y + s)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= h
    if shape == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= s / 6) & (ay <= h)) | ((ay <= s / 6) & (ax <= h))
    if shape == "star":
        return _inside_star(np.abs(dx), dy, s)
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def coverage(shape: str, s: float, x: float, y: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) float32 alpha: the share of each pixel's 4x4 sample points inside the shape."""
    alpha = np.zeros((size, size), dtype=np.float32)
    x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
    x1, y1 = min(math.ceil(x + s), size), min(math.ceil(y + s), size)
    if x1 <= x0 or y1 <= y0:
        return alpha
    n = SUPERSAMPLE
    px = (x0 + (np.arange((x1 - x0) * n) + 0.5) / n)[None, :]
    py = (y0 + (np.arange((y1 - y0) * n) + 0.5) / n)[:, None]
    inside = np.ascontiguousarray(_inside(shape, px, py, s, x, y), dtype=bool)
    # Count the 4x4 samples per pixel: each run of 4 bools along a row is read as one
    # uint32 and the 4 rows of a pixel are added bytewise (no carries: each byte <= 4);
    # multiplying by 0x01010101 then sums the 4 bytes into the top byte. About 30x
    # faster than reshape().mean(axis=(1, 3)), which is most of the rendering time.
    words = inside.view(np.uint32).reshape(y1 - y0, n, x1 - x0)
    packed = words[:, 0] + words[:, 1] + words[:, 2] + words[:, 3]
    counts = (packed * np.uint32(0x01010101)) >> np.uint32(24)
    alpha[y0:y1, x0:x1] = counts * np.float32(1 / (n * n))
    return alpha


def render_array(scene: Scene) -> np.ndarray:
    """The scene as a (128, 128, 3) uint8 array."""
    alpha = coverage(scene.shape, scene.s, scene.x, scene.y)[:, :, None]
    background = np.array(PALETTE[scene.background], dtype=np.float32)
    color = np.array(PALETTE[scene.color], dtype=np.float32)
    return np.rint(background + (color - background) * alpha).astype(np.uint8)


def render(scene: Scene) -> Image.Image:
    """The scene as a 128x128 RGB image."""
    return Image.fromarray(render_array(scene), mode="RGB")
