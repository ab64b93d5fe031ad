"""Captions for scenes: many templates and word orders, attributes left out at random.

    caption(scene, rng, templates="train", drop_prob=DROP_PROB, empty_prob=0.1) -> (text, mentioned)
    make_caption(...)                 the same, plus the template used (None for the empty caption)
    describe(scene, template, mentioned)  one template filled in, without randomness

Only the words of docs/SHAPES.md carry meaning: the 12 colours, the 6 shapes, "small" and
"large" (medium has no word, so a medium object's size is never mentioned), the 9
position words, and "background"/"corner"/"side" plus function words. When every
shape word is left out the noun is "shape". In training captions the background colour
always comes with "background", "behind" or "on" ("resting on", "upon", "on plain"), so a
bare colour word always means the object.

Held-out templates (HELDOUT_TEMPLATES) test that the model follows phrasings it was
not trained on: each has a marker phrase in its fixed text (HELDOUT_MARKERS) that no
training template can produce, e.g. "there is a ... of the picture", "placed at",
"against", "this star is red".

Template syntax: `{field}` is a word or phrase for one attribute; `[...]` is an
optional group, dropped whole when a field in it is left out. Fields: size, color,
shape (always outside groups), bg, and the position styles pos (bare), pos_in
("in the top left corner", "on the left", "at the top"), pos_at ("at the top left")
and pos_side ("top left corner", "left side").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from core.shapes.world import ATTRIBUTES, Scene

TRAIN_TEMPLATES: tuple[str, ...] = (
    "a[ {size}][ {color}] {shape}[ {pos_in}][ on a {bg} background]",
    "[{bg} background, ]a[ {size}][ {color}] {shape}[ {pos_at}]",
    "[{bg} background, ][{size} ][{color} ]{shape}[ {pos_at}]",
    "a[ {size}][ {color}] {shape}[, {pos_side}][, on {bg}]",
    "[{size} ][{color} ]{shape}[, {pos}][, {bg} background]",
    "[{pos_in}, ]a[ {size}][ {color}] {shape}[ on {bg}]",
    "[on a {bg} background, ]a[ {size}][ {color}] {shape}[ {pos_in}]",
    "[{color} ]{shape}[, {size}][, {pos}][, {bg} background]",
    "[{color} ]{shape}[ {pos_at}][ on a {bg} background][, {size}]",
    "[{size} ]{shape}[, {color}][, {pos_side}][, {bg} background]",
    "a[ {color}][ {size}] {shape}[ {pos_in}][, {bg} background]",
    "[{pos_side}, ]a[ {size}][ {color}] {shape}[, {bg} background]",
    "[on {bg}, ][{size} ][{color} ]{shape}[ {pos_at}]",
    "a[ {size}][ {color}] {shape}[ on a {bg} background][ {pos_in}]",
    "[{size} ][{color} ]{shape}[ on {bg}][, {pos}]",
    "a {shape}[, {color}][, {size}][, {pos_side}][, on {bg}]",
    "[{bg} background][, {pos}][, {size}][, {color}], {shape}",
    "{shape}[ {pos_in}][, {color}][, {size}][, {bg} background]",
    "the[ {size}][ {color}] {shape}[ {pos_in}][ on a {bg} background]",
    "[{color} ]{shape}[ {pos_at}][, {size}][, {bg} background]",
    "a[ {size}][ {color}] {shape}[ on {bg}][ {pos_at}]",
    "[{pos} ][{size} ][{color} ]{shape}[ on {bg}]",
    "[{bg} background and ]a[ {size}][ {color}] {shape}[ {pos_in}]",
    "a {shape}[ {pos_in}][, {size}][, {color}][, on a {bg} background]",
    "[{color} ][{size} ]{shape}[ {pos_in}][ on {bg}]",
    "[{size} ]{shape}[, {pos_side}][, {color}][, on {bg}]",
    "[{bg} background, ]{shape}[, {color}][, {size}][, {pos}]",
    "[{pos_in} ]a[ {size}][ {color}] {shape}[ on {bg}]",
    "[on a {bg} background ]a[ {color}][ {size}] {shape}[, {pos_side}]",
    "[{pos}, ][{color} ]{shape}[, {size}][, on a {bg} background]",
    "[{size} ][{color} ]{shape}[ on a {bg} background][ {pos_in}]",
    "[{bg} background, ][{pos_side}, ]a[ {size}][ {color}] {shape}",
    "the {shape}[ {pos_at}][, {color}][, {size}][, on {bg}]",
    "[{size} ][{color} ]{shape}[ {pos_in}][, on {bg}]",
    # More ways to name the background, so that no single preposition carries it: the held-out
    # phrasings ("over", "against", "the background is", "all around") then differ from
    # training as much as these differ from each other.
    "a[ {size}][ {color}] {shape}[ {pos_in}][ with {bg} behind it]",
    "[{size} ][{color} ]{shape}[ resting on {bg}][, {pos}]",
    "[the background {bg}, ]a[ {size}][ {color}] {shape}[ {pos_at}]",
    "a[ {color}] {shape}[ {pos_in}][, {size}][, and a {bg} background]",
    "[{color} ]{shape}[ upon a {bg} background][ {pos_in}][, {size}]",
    "a[ {size}][ {color}] {shape}[ sitting {pos_in}][ on plain {bg}]",
    "[a {bg} background behind ]a[ {size}][ {color}] {shape}[ {pos_at}]",
    "[{size} ][{color} ]{shape}[ {pos_at}][, with {bg} behind]",
    "a[ {size}][ {color}] {shape}[, background {bg}][, {pos_side}]",
    "[{bg} behind, ]a[ {size}][ {color}] {shape}[ {pos_in}]",
    "[plain {bg} background, ]a[ {size}][ {color}] {shape}[, {pos}]",
)

# (template, a phrase in its fixed text that no training caption contains)
_HELDOUT: tuple[tuple[str, str], ...] = (
    ("there is a[ {size}][ {color}] {shape}[ in the {pos} of the picture][ and the background is {bg}]",
     "there is"),
    ("a picture of a[ {size}][ {color}] {shape}[ {pos_in}][ with a {bg} background]", "picture of"),
    ("[{bg} background with ]one[ {size}][ {color}] {shape}[ placed at the {pos}]", "one "),
    ("an image showing a[ {size}][ {color}] {shape}[ toward the {pos}][ against {bg}]", "showing"),
    ("{shape}:[ {size},][ {color},][ {pos},][ {bg} background]", ":"),
    ("this {shape}[ is {color}][, {size}][, located {pos_in}][; the background is {bg}]", "this "),
    ("draw a[ {size}][ {color}] {shape}[ {pos_at}][ over {bg}]", "draw "),
    ("{shape} only[, in {color}][, {size} size][, {pos_at}][, {bg} all around]", " only"),
    ("a single[ {size}][ {color}] {shape}[ near the {pos}][ set against a {bg} background]", "single"),
    ("you see a[ {size}][ {color}] {shape}[ toward the {pos}][ in front of a {bg} background]", "you see"),
)
HELDOUT_TEMPLATES: tuple[str, ...] = tuple(t for t, _ in _HELDOUT)
HELDOUT_MARKERS: tuple[str, ...] = tuple(m for _, m in _HELDOUT)
TEMPLATE_SETS = {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}

FIELD_ATTRIBUTE = {"size": "size", "color": "color", "shape": "shape", "bg": "background",
                   "pos": "position", "pos_in": "position", "pos_at": "position", "pos_side": "position"}
# Shapes are named most often: a caption without its noun is the least natural one.
DROP_PROB: Mapping[str, float] = {"background": 0.3, "color": 0.2, "shape": 0.1, "size": 0.3, "position": 0.3}
EMPTY_PROB = 0.1

_FIELD = re.compile(r"\{(\w+)\}")
_GROUP = re.compile(r"\[([^\[\]]*)\]")


class Caption(NamedTuple):
    text: str
    mentioned: frozenset[str]
    template: str | None  # None for the empty caption


def _position_phrases(position: str) -> dict[str, str]:
    corner = " " in position
    if corner:
        pos_in, pos_side = f"in the {position} corner", f"{position} corner"
    elif position == "center":
        pos_in, pos_side = "in the center", "center"
    elif position in ("left", "right"):
        pos_in, pos_side = f"on the {position}", f"{position} side"
    else:  # top, bottom
        pos_in, pos_side = f"at the {position}", position
    return {"pos": position, "pos_in": pos_in, "pos_at": f"at the {position}", "pos_side": pos_side}


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,;:])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"\ba (?=[aeiou])", "an ", text)
    # a trailing ":" stays: "star:" is what the "{shape}: ..." template says with nothing else
    return text.lstrip(" ,;:").rstrip(" ,;")


def describe(scene: Scene, template: str, mentioned: frozenset[str]) -> str:
    """The template filled in for the scene, with only the `mentioned` attributes in words."""
    words = {"size": scene.size if scene.size != "medium" else "", "color": scene.color,
             "shape": scene.shape, "bg": scene.background, **_position_phrases(scene.position)}
    words = {field: (value if FIELD_ATTRIBUTE[field] in mentioned else "") for field, value in words.items()}
    words["shape"] = words["shape"] or "shape"

    def fill(match: re.Match) -> str:
        return words[match.group(1)]

    def group(match: re.Match) -> str:
        inner = match.group(1)
        return _FIELD.sub(fill, inner) if all(words[f] for f in _FIELD.findall(inner)) else ""

    return _tidy(_FIELD.sub(fill, _GROUP.sub(group, template)))


def make_caption(scene: Scene, rng: np.random.Generator, templates: str = "train",
                 drop_prob: float | Mapping[str, float] = DROP_PROB, empty_prob: float = EMPTY_PROB) -> Caption:
    """A random caption for the scene: maybe empty, else a random template with attributes left out.

    Every draw is made whatever the outcome, so the rng advances the same way each call.
    """
    if templates not in TEMPLATE_SETS:
        raise ValueError(f"templates must be one of {sorted(TEMPLATE_SETS)}, got {templates!r}")
    pool = TEMPLATE_SETS[templates]
    probs = drop_prob if isinstance(drop_prob, Mapping) else dict.fromkeys(ATTRIBUTES, drop_prob)
    empty = rng.random() < empty_prob
    template = pool[rng.integers(len(pool))]
    drops = rng.random(len(ATTRIBUTES))
    if empty:
        return Caption("", frozenset(), None)
    mentioned = {a for a, u in zip(ATTRIBUTES, drops, strict=True) if u >= probs[a]}
    if scene.size == "medium":
        mentioned.discard("size")
    if not mentioned:  # a caption that says nothing would be a second, unmarked empty caption
        mentioned.add("shape")
    mentioned = frozenset(mentioned)
    return Caption(describe(scene, template, mentioned), mentioned, template)


def caption(scene: Scene, rng: np.random.Generator, templates: str = "train",
            drop_prob: float | Mapping[str, float] = DROP_PROB,
            empty_prob: float = EMPTY_PROB) -> tuple[str, frozenset[str]]:
    """(text, the attributes the text names); deterministic given the rng's state."""
    text, mentioned, _ = make_caption(scene, rng, templates, drop_prob, empty_prob)
    return text, mentioned
