"""Attention maps: where in the picture each word of the prompt was listened to (DAAM, Tang et al. 2022).

    AttentionSettings(steps)          which sampler steps to sum (None: all); generate(..., attention=) takes it
    attention_maps(probe, image, prompt_words, negative_words) -> AttentionMaps of one image
    grey_image(word_map, size)        the map at image size, 0 = none of the word's attention, 255 = its peak
    heat_overlay(image, word_map)     the map over the picture, coloured where the word was attended
    save_attention_maps(maps, image, folder)  NN-word.png, overlay-NN-word.png and words.json

A word's map is the sum of its tokens' rows of the summed cross-attention probabilities
(core/sampling/attention_probe.py); a word typed twice is one entry, both places summed. Its `total`
is its share of the attention that went to the prompt's words (BOS, EOS and padding, which take most
of every softmax, left out).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.atomic_files import fsync_file, write_json
from core.sampling.attention_probe import CrossAttentionProbe
from core.text.prompt_words import PromptWord


@dataclass(frozen=True)
class AttentionSettings:
    steps: Collection[int] | None = None    # 0-based sampler steps whose attention is summed; None: every step


@dataclass(frozen=True)
class WordMap:
    word: str                   # as typed, lower-case
    tokens: tuple[int, ...]     # its token ids
    map: torch.Tensor           # (h, w) float32 at latent resolution: the word's summed attention
    total: float                # its share of the attention the prompt's words got, 0..1


@dataclass(frozen=True)
class AttentionMaps:
    """One image's maps: the prompt's words, and the negative prompt's (empty if no step was guided)."""

    prompt: list[WordMap]
    negative: list[WordMap]
    steps: int                  # how many sampler steps were summed

    def word(self, text: str, negative: bool = False) -> WordMap | None:
        return next((m for m in (self.negative if negative else self.prompt) if m.word == text.lower()), None)


def attention_maps(probe: CrossAttentionProbe, image: int, prompt: Sequence[PromptWord],
                   negative: Sequence[PromptWord]) -> AttentionMaps:
    """Image `image`'s maps from a probe that ran through a generation."""
    cond = None if probe.cond is None else probe.cond[image]
    uncond = None if probe.uncond is None else probe.uncond[image]
    return AttentionMaps(word_maps(cond, prompt), word_maps(uncond, negative), len(probe.steps_summed))


def placed_in(maps: AttentionMaps, box: tuple[int, int, int, int], canvas: tuple[int, int],
              cell: int = 8) -> AttentionMaps:
    """Maps of a region (an inpainting's "masked" area, `box` in canvas pixels) set into a map of the whole
    canvas (width, height), one value per `cell` pixels, zero outside the region, so the greyscale images
    and overlays line up with the picture that comes back, not with the cut-out the model drew."""
    left, top, right, bottom = (round(v / cell) for v in box)
    grid = (max(1, round(canvas[1] / cell)), max(1, round(canvas[0] / cell)))

    def moved(word_map: WordMap) -> WordMap:
        whole = torch.zeros(grid, dtype=word_map.map.dtype, device=word_map.map.device)
        size = (max(1, min(bottom, grid[0]) - top), max(1, min(right, grid[1]) - left))
        whole[top:top + size[0], left:left + size[1]] = F.interpolate(
            word_map.map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return replace(word_map, map=whole)

    return replace(maps, prompt=[moved(m) for m in maps.prompt], negative=[moved(m) for m in maps.negative])


def word_maps(sums: torch.Tensor | None, words: Sequence[PromptWord]) -> list[WordMap]:
    """sums (S, h, w), one map per context token -> one map per distinct word, in order of first use."""
    if sums is None:
        return []
    by_word: dict[str, tuple[tuple[int, ...], torch.Tensor]] = {}
    for word in words:
        rows = sums[list(word.positions)].sum(dim=0)                    # (h, w)
        tokens, total = by_word.get(word.text, (word.tokens, 0))
        by_word[word.text] = (tokens, rows + total)
    everything = sum(float(m.sum()) for _, m in by_word.values()) or 1.0
    return [WordMap(text, tokens, m, float(m.sum()) / everything) for text, (tokens, m) in by_word.items()]


def grey_image(word_map: WordMap, size: tuple[int, int]) -> Image.Image:
    """The map brought to `size` (width, height) by bilinear interpolation, scaled so its peak is 255."""
    width, height = size
    big = F.interpolate(word_map.map[None, None].float(), size=(height, width), mode="bilinear",
                        align_corners=False)[0, 0].clamp_min(0)
    peak = float(big.max())
    scaled = big / peak if peak > 0 else big
    return Image.fromarray((scaled * 255).round().to(torch.uint8).numpy(), mode="L")


# The heat scale attention maps are usually shown in (DAAM's figures): cold blue, cyan, yellow, hot red. The
# overlay's opacity follows the value too, so weak attention leaves the picture visible.
_HEAT_STOPS = np.array([[0, 0, 160], [0, 90, 255], [0, 230, 230], [255, 230, 0], [230, 0, 0]], dtype=np.float32)


def heat_colours(grey: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) float32 RGB along the heat scale."""
    position = grey.astype(np.float32) / 255 * (len(_HEAT_STOPS) - 1)
    low = np.floor(position).clip(0, len(_HEAT_STOPS) - 2).astype(np.int64)
    frac = (position - low)[..., None]
    return _HEAT_STOPS[low] * (1 - frac) + _HEAT_STOPS[low + 1] * frac


def heat_overlay(image: Image.Image, word_map: WordMap, opacity: float = 0.7) -> Image.Image:
    """The picture with the word's map laid over it: opaque in proportion to the attention, so the
    places the word was not listened to show the picture as it is."""
    grey = np.asarray(grey_image(word_map, image.size))
    picture = np.asarray(image.convert("RGB"), dtype=np.float32)
    alpha = (grey.astype(np.float32) / 255 * min(max(opacity, 0.0), 1.0))[..., None]
    mixed = picture * (1 - alpha) + heat_colours(grey) * alpha
    return Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8), mode="RGB")


_NOT_A_NAME = re.compile(r"[^\w]+")     # what a file name may not hold: keep letters, digits and _


def map_file_names(maps: AttentionMaps) -> list[str]:
    """`NN-word.png` for each of the prompt's words, NN counting from 01."""
    digits = max(2, len(str(len(maps.prompt))))
    return [f"{i:0{digits}d}-{_NOT_A_NAME.sub('_', m.word)}.png" for i, m in enumerate(maps.prompt, 1)]


def save_attention_maps(maps: AttentionMaps, image: Image.Image, folder: str | os.PathLike) -> list[Path]:
    """Write each prompt word's greyscale map and overlay, and words.json, into `folder` (made if needed).

    words.json maps each word (lower-case) to {"file", "overlay", "tokens", "total"}. Every file is
    written whole or not at all; words.json last, so a folder with it is complete.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, index = [], {}
    for word_map, name in zip(maps.prompt, map_file_names(maps), strict=True):
        for file, picture in ((name, grey_image(word_map, image.size)), (f"overlay-{name}", heat_overlay(image, word_map))):
            written.append(_save_whole(picture, folder / file))
        index[word_map.word] = {"file": name, "overlay": f"overlay-{name}", "tokens": list(word_map.tokens),
                                "total": round(word_map.total, 6)}
    write_json(folder / "words.json", index)
    return [*written, folder / "words.json"]


def _save_whole(picture: Image.Image, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    picture.save(tmp, format="PNG")
    fsync_file(tmp)
    os.replace(tmp, path)
    return path
