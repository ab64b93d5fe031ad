"""Read a shapes-world picture back into words, as a person would, and score it against a caption.

    measure(image)                     -> Measured(background, color, shape, size, position, s, x, y, fit)
    object_mask(image)                 -> (128, 128) bool: the pixels measure() takes for the object
    score(measured, scene, mentioned)  -> {attribute: bool} for the attributes the caption named

How an image is read:
1. background: the colour most border pixels are nearest to (the object keeps a 4 px margin);
2. object mask: each pixel's coverage t = its share of the way from the background
   colour to the object's colour, t >= 0.5 is object, and only the largest
   8-connected blob counts; the object's colour is first the median of the pixels
   farthest from the background, then the median of the blob (twice);
3. colour: the palette entry nearest the median of the blob's core (t >= 0.75);
4. shape, by fitting every shape and keeping the best: the soft coverage's total
   (area) and centroid fix each candidate's size s and box exactly (AREA_RATIO,
   CENTROID); the candidate drawn there is compared with the soft coverage by soft
   IoU. Moments use every pixel's partial coverage, so they survive blur, JPEG and
   lost star tips, where a bounding box would not;
5. size: the nominal size (32 / 52 / 80) nearest the fitted s;
6. position: the fitted box's left/top as a share of the free range [4, 124 - s], in thirds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.shapes.world import (
    AREA_RATIO,
    ATTRIBUTES,
    CENTROID,
    IMAGE_SIZE,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    coverage,
    free_range,
)

BORDER = 2          # px of border read for the background (the object stays 4 px inside)
MIN_DISTANCE = 40.0  # RGB distance from the background that is surely not background noise;
                     # the closest two palette colours (red, brown) are 98 apart
MIN_AREA = 12.0     # px; less than this is no object (the smallest star covers ~240 px)
WINDOW = 4          # px around the blob in which coverage is summed (blur spreads ~3 px)

_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[n] for n in _PALETTE_NAMES], dtype=np.float32)
_POSITION_AT = {cell: word for word, cell in POSITIONS.items()}


@dataclass(frozen=True)
class Measured:
    """What the image shows; words are None (and numbers nan) where there is no object to read."""

    background: str
    color: str | None
    shape: str | None
    size: str | None
    position: str | None
    s: float = math.nan    # fitted object size, px
    x: float = math.nan    # fitted box left, px
    y: float = math.nan    # fitted box top, px
    fit: float = 0.0       # soft IoU of the fitted shape with the image's coverage (1 = perfect)


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(128, 128, 3) float32 in 0..255 from a PIL image or an (H, W, 3) array in 0..255."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) array, got shape {image.shape}")
        if image.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE):
            return image.astype(np.float32)
        image = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX if image.width > IMAGE_SIZE
                             else Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _nearest(rgb: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for each (..., 3) RGB value."""
    return np.argmin(((rgb[..., None, :] - _PALETTE_RGB) ** 2).sum(-1), axis=-1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected blob of a boolean mask, by union-find over row runs."""
    height, width = mask.shape
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # exclusive; runs come out row-major in both lists
    if len(rows) == 0:
        return mask
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(height + 1))
    for r in range(1, height):
        i, i_end, j, j_end = first[r - 1], first[r], first[r], first[r + 1]
        while i < i_end and j < j_end:
            if starts[j] <= ends[i] and starts[i] <= ends[j]:  # overlapping or diagonal neighbours
                parent[find(j)] = find(i)
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(len(rows))])
    best = np.argmax(np.bincount(roots, weights=ends - starts))
    out = np.zeros_like(mask)
    for r, a, b in zip(rows[roots == best], starts[roots == best], ends[roots == best], strict=True):
        out[r, a:b] = True
    return out


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


@dataclass(frozen=True)
class _Blob:
    """The object as the checker sees it: background, the object pixels, and each pixel's coverage t."""

    background: str
    mask: np.ndarray | None   # (128, 128) bool, the largest t >= 0.5 blob; None where there is no object
    t: np.ndarray | None      # (128, 128) float, share of the way from the background to the object colour


def _find_blob(pixels: np.ndarray) -> _Blob:
    """Steps 1 and 2 of the reading: the background, then the object's blob (module docstring)."""
    # 1. background: the palette colour most border pixels are nearest to
    border = np.concatenate([pixels[:BORDER].reshape(-1, 3), pixels[-BORDER:].reshape(-1, 3),
                             pixels[:, :BORDER].reshape(-1, 3), pixels[:, -BORDER:].reshape(-1, 3)])
    labels = _nearest(border)
    background_index = int(np.bincount(labels, minlength=len(_PALETTE_NAMES)).argmax())
    background_rgb = np.median(border[labels == background_index], axis=0)
    background = _PALETTE_NAMES[background_index]

    # 2. coverage t along the background -> object colour line; the object is the largest t >= 0.5 blob
    offset = pixels - background_rgb
    distance = np.linalg.norm(offset, axis=-1)
    # First guess from the pixels farthest from the background (noise rarely gets half as
    # far as a palette colour), then refined from the blob's own pixels.
    far = distance >= max(MIN_DISTANCE, 0.5 * float(np.quantile(distance, 0.995)))
    if far.sum() < MIN_AREA / 4:
        return _Blob(background, None, None)
    blob = far
    for _ in range(3):
        object_rgb = np.median(offset[blob], axis=0)
        t = offset @ object_rgb / float(object_rgb @ object_rgb)
        blob = _largest_component(t >= 0.5)
        if blob.sum() < MIN_AREA:
            return _Blob(background, None, None)
    return _Blob(background, blob, t)


def object_mask(image: Image.Image | np.ndarray) -> np.ndarray:
    """(128, 128) bool: the pixels measure() reads as the object (all False where it finds none)."""
    found = _find_blob(_as_array(image))
    return found.mask if found.mask is not None else np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)


def measure(image: Image.Image | np.ndarray) -> Measured:
    """Read background, object colour, shape, size word and position word off the image."""
    pixels = _as_array(image)
    found = _find_blob(pixels)
    background, blob, t = found.background, found.mask, found.t
    nothing = Measured(background, None, None, None, None)
    if blob is None:
        return nothing

    # 3. colour of the blob's core (its anti-aliased rim is a mix with the background)
    core = blob & (t >= 0.75)
    color = _PALETTE_NAMES[int(_nearest(np.median(pixels[core if core.any() else blob], axis=0)))]

    # 4. shape: moments of the soft coverage near the blob fix each candidate's s and box
    ys, xs = np.nonzero(blob)
    window = np.zeros_like(blob)
    window[max(ys.min() - WINDOW, 0):ys.max() + WINDOW + 1, max(xs.min() - WINDOW, 0):xs.max() + WINDOW + 1] = True
    soft = np.where(window, t, 0.0)  # unclipped: noise then sums to ~0 instead of a bias
    area = float(soft.sum())
    if area < MIN_AREA:
        return nothing
    centre = np.arange(IMAGE_SIZE) + 0.5
    cx, cy = float(soft.sum(0) @ centre) / area, float(soft.sum(1) @ centre) / area
    observed = np.clip(soft, 0.0, 1.0)
    fits = []
    for shape in SHAPES:
        s = math.sqrt(area / AREA_RATIO[shape])
        x, y = cx - CENTROID[shape][0] * s, cy - CENTROID[shape][1] * s
        fits.append((_soft_iou(coverage(shape, s, x, y), observed), shape, s, x, y))
    fit, shape, s, x, y = max(fits)

    # 5.-6. size and position words of the fitted box
    size = min(SIZES, key=lambda word: abs(SIZES[word] - s))
    lo, hi = free_range(s)
    column, row = (min(max(int((edge - lo) / max(hi - lo, 1e-6) * 3), 0), 2) for edge in (x, y))
    return Measured(background, color, shape, size, _POSITION_AT[(column, row)], s, x, y, fit)


def score(measured: Measured, scene: Scene, mentioned: frozenset[str] | set[str]) -> dict[str, bool]:
    """For each attribute the caption named (in ATTRIBUTES order): does the image show it?"""
    unknown = set(mentioned) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; expected some of {', '.join(ATTRIBUTES)}")
    return {a: getattr(measured, a) == getattr(scene, a) for a in ATTRIBUTES if a in mentioned}
