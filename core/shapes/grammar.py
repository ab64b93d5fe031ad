"""Captions as people write them (issue #26): attribute phrases in any order, many forms, several joiners.

    grammar_caption(scene, rng, split="train", drop_prob=DROP_PROB, empty_prob=EMPTY_PROB)
        -> Phrasing(text, mentioned, structure)        structure is None for the empty caption
    draw_structure(scene, mentioned, rng, rule=None)  -> Structure that says `mentioned` (None if it missed `rule`)
    heldout_rules(structure)                          -> names of the HELDOUT_RULES it falls under
    realise(structure, scene, mentioned, rng)         -> the text, synonyms picked at random

A caption is a sequence of attribute phrases (Slot: unit, form, joiner). The units are the object
("a small red star": an optional article, the size and colour words that sit before the noun, the
noun), and separately named size ("small"), colour ("red"), position ("in the top left corner") and
background ("a blue background"). The object always comes; its own colour phrase follows it straight
away, its own size phrase anywhere after it; position and background go anywhere. Joiners: nothing, a comma, "and", "with", "on". Which joiner may
come before which phrase (`_fits`) keeps a bare colour always the object's: a background colour
always comes with "background" or after "on".

A STRUCTURE is the slots without the words: e.g. "a {background} background with a {size} {color}
{shape}, in the {position} corner". The words are the vocabulary of docs/SHAPES.md plus SYNONYMS
("tiny", "little", "grey", "upper left", "middle", "centre", ...), drawn per caption; a synonym is never
a structure. Structures that match a HELDOUT_RULES entry are never drawn for training (split
"train"); split "heldout" draws only them, so an evaluation on it measures new structures, not only
new words in known ones. None of the old held-out templates' marker phrases
(captions.HELDOUT_MARKERS) can come out of this grammar, so those templates stay held out too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from core.shapes.captions import DROP_PROB, EMPTY_PROB
from core.shapes.world import ATTRIBUTES, Scene

# Each canonical word first; only synonyms with one meaning here ("little" is always small, "middle"
# always the centre). Issue #26 names these; typos and plurals are out of scope.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little"), "large": ("large", "big", "huge"), "gray": ("gray", "grey"),
    "top left": ("top left", "upper left"), "top right": ("top right", "upper right"),
    "bottom left": ("bottom left", "lower left"), "bottom right": ("bottom right", "lower right"),
    "center": ("center", "centre", "middle"),
}
ARTICLES = ("a", "the", "")
ARTICLE_WEIGHTS = (0.5, 0.15, 0.35)
JOINERS = ("", ",", "and", "with", "on")
# A phrase whose first word is one of these is not bare (the "terse" rule wants bare phrases only).
FUNCTION_WORDS = frozenset({"a", "the", "in", "at", "on", "with", "and"})
# How often a named size / colour sits before the noun ("a small red star") rather than after it. Training
# puts the colour after the noun less often than the held-out structures do: the second v2 run, trained with
# 0.7, learnt that a bare colour after the object is the object's and misread the old templates that give
# the background that way ("a red star against brown"; #26); 0.8 is the third run's try, not yet measured in
# images. The held-out draws keep 0.7, so every run is measured on the same captions.
BEFORE_NOUN = {"size": 0.6, "color": 0.8}
HELDOUT_BEFORE_NOUN = {"size": 0.6, "color": 0.7}

POSITION_FORMS: dict[str, tuple[str, ...]] = {
    "corner": ("{position}", "{position} corner", "in the {position}", "in the {position} corner",
               "at the {position}", "at the {position} corner"),
    "side": ("{position}", "{position} side", "on the {position}", "on the {position} side", "at the {position}"),
    "edge": ("{position}", "at the {position}"),
    "center": ("{position}", "in the {position}", "at the {position}"),
}
BARE_BACKGROUND = "{background}"            # only after "on": "on blue"
BACKGROUND_FIRST = "background {background}"  # only first or after a comma: ", background blue"
BACKGROUND_FORMS = ("{background} background", "a {background} background", "the {background} background",
                    BARE_BACKGROUND, BACKGROUND_FIRST)
_NAMED_BACKGROUNDS = BACKGROUND_FORMS[:3]   # end in "background"
_ON_FORMS = (*_NAMED_BACKGROUNDS, BARE_BACKGROUND)
_WITH_FORMS = _NAMED_BACKGROUNDS[:2]        # "with a blue background", never "with the blue background"


class Slot(NamedTuple):
    unit: str     # "object", "size", "color", "position" or "background"
    form: str     # the phrase with {size} {color} {shape} {position} {background} for the words
    joiner: str   # what comes before it: one of JOINERS ("on" may open a caption)


Structure = tuple[Slot, ...]


class Phrasing(NamedTuple):
    text: str
    mentioned: frozenset[str]
    structure: Structure | str | None   # the grammar's structure (ShapesDataset: a template); None if empty


def template(structure: Structure) -> str:
    """The structure written out with placeholders: 'a {background} background with a {color} {shape}'."""
    return _join(structure, {})


def _is_bare(slot: Slot) -> bool:
    return slot.form.split()[0] not in FUNCTION_WORDS


def _scene_first(structure: Structure) -> bool:
    return len(structure) >= 2 and structure[0].unit == "background" and structure[1].unit == "object" and (
        structure[1].joiner == "with")


def _place_then_scene(structure: Structure) -> bool:
    return len(structure) >= 3 and structure[0].unit == "position" and structure[1].unit == "background"


def _terse(structure: Structure) -> bool:
    return len(structure) >= 3 and all(s.joiner == "" and _is_bare(s) for s in structure)


# The held-out structures: ways of putting phrases together that people use and training never
# shows, though every phrase form and joiner word in them is trained elsewhere. Training has two-phrase
# terse captions ("red star top left") but none of three; it has "with" only before a background,
# since the object can follow a background directly only in the first two structures here.
HELDOUT_RULES = {
    "scene first": (_scene_first, "the background opens the caption and the object follows it, joined by "
                                  "'with': 'a blue background with a small red star in the top left'"),
    "terse": (_terse, "three or more phrases and not one joiner, article or preposition: "
                      "'small red star top left corner blue background'"),
    "place then scene": (_place_then_scene, "the position opens the caption and the background comes second: "
                                            "'in the top left corner, on blue, a small red star'"),
}
# What a held-out caption must name for its rule to be possible.
_RULE_NEEDS = {"scene first": ("background",), "place then scene": ("position", "background"),
               "terse": ("position", "background")}
MAX_TRIES = 1000


def heldout_rules(structure: Structure) -> tuple[str, ...]:
    """The held-out rules the structure matches (empty: it may be used for training)."""
    return tuple(name for name, (matches, _) in HELDOUT_RULES.items() if matches(structure))


def _fits(before: Slot | None, slot: Slot) -> bool:
    """May this phrase, with its joiner, follow `before` (None: open the caption)?

    The rules keep every caption readable one way only: a colour is the background's exactly when
    "background" or "on" goes with it, and a size word never sits where it could be the background's.
    """
    unit, form, joiner = slot
    if before is None:
        return joiner == "" and form != BARE_BACKGROUND or joiner == "on" and form in _ON_FORMS
    if joiner == "on":
        return unit == "background" and form in _ON_FORMS
    if joiner == "with":   # "with a blue background"; "a blue background with a red star"
        return unit == "background" and form in _WITH_FORMS or unit == "object" and before.form in _NAMED_BACKGROUNDS
    if form == BARE_BACKGROUND or form == BACKGROUND_FIRST and joiner != ",":
        return False
    if joiner == ",":
        return True
    if before.form in (BARE_BACKGROUND, BACKGROUND_FIRST):
        return False       # "on blue red star", "on blue and red": whose colour is red?
    if joiner == "":
        if unit in ("size", "color"):
            return before.unit in ("object", "size", "color")    # "star red small"
        if unit == "background":  # never "small blue background": is the background small?
            return form == "{background} background" and before.unit in ("object", "position")
        return True        # "red star top left", "top left red star", "blue background red star"
    # "and" joins lists: "on blue and in the top left", "a blue background and a red star"
    if before.unit == "position" and _is_bare(before):
        return False       # "top and large"
    if unit == "size":
        return before.unit in ("color", "position")   # "a star, red and small"
    if unit == "position":
        return not _is_bare(slot) and before.unit != "object"
    if unit == "background":
        return before.unit in ("object", "position")  # never "orange and green background"
    return unit == "object" and before.form in _NAMED_BACKGROUNDS


def _object_form(mentioned: frozenset[str], rng: np.random.Generator, terse: bool,
                 before_noun: Mapping[str, float]) -> tuple[str, list[str]]:
    """The object's phrase, and the attributes named after it as phrases of their own."""
    before, after = [], []
    for attribute in ("size", "color"):
        if attribute in mentioned:
            (before if rng.random() < before_noun[attribute] else after).append(attribute)
    if rng.random() < 0.15:
        before.reverse()   # "a red small star" also happens
    article = "" if terse else ARTICLES[rng.choice(len(ARTICLES), p=ARTICLE_WEIGHTS)]
    words = [article, *(f"{{{a}}}" for a in before), "{shape}"]
    if rng.random() < 0.5:
        after.reverse()
    return " ".join(w for w in words if w), after


def _position_kind(position: str) -> str:
    if " " in position:
        return "corner"
    return {"left": "side", "right": "side", "top": "edge", "bottom": "edge"}.get(position, "center")


def _order(units: list[str], rng: np.random.Generator, rule: str | None) -> list[str]:
    """Units in caption order: the object then its own colour and maybe size; the rest anywhere."""
    after = [u for u in units if u in ("size", "color")]
    block = ["object", *[u for u in after if u == "color" or rng.random() < 0.5]]
    if "size" in after and "size" in block and rng.random() < 0.5:
        block.remove("size")
        block.insert(1, "size")
    free_size = "size" in after and "size" not in block
    others = [u for u in ("position", "background") if u in units]
    if rule == "scene first":
        order = [["background"], block, *[[u] for u in others if u != "background"]]
    elif rule == "place then scene":
        order = [["position"], ["background"], block]
    else:
        order = [block, *[[u] for u in others]]
        order = [order[k] for k in rng.permutation(len(order))]
    flat = [u for group in order for u in group]
    if free_size:
        flat.insert(int(rng.integers(flat.index(block[-1]) + 1, len(flat) + 1)), "size")
    return flat


def draw_structure(scene: Scene, mentioned: frozenset[str], rng: np.random.Generator,
                   rule: str | None = None) -> Structure | None:
    """A random structure naming `mentioned`, steered towards `rule` (None when the draw missed it).

    Without a rule the result may still match a held-out rule; grammar_caption() draws again then.
    """
    terse = rule == "terse"
    object_form, after = _object_form(mentioned, rng, terse, BEFORE_NOUN if rule is None else HELDOUT_BEFORE_NOUN)
    units = ["object", *after, *(u for u in ("position", "background") if u in mentioned)]
    forms = {"object": object_form, "size": "{size}", "color": "{color}"}
    choices = POSITION_FORMS[_position_kind(scene.position)]
    if terse:
        choices = tuple(form for form in choices if form.split()[0] not in FUNCTION_WORDS)
    forms["position"] = choices[rng.integers(len(choices))]
    background_choices = ("{background} background",) if terse else (
        _NAMED_BACKGROUNDS if rule == "scene first" else BACKGROUND_FORMS)
    forms["background"] = background_choices[rng.integers(len(background_choices))]
    slots: list[Slot] = []
    for unit in _order(units, rng, rule):
        before = slots[-1] if slots else None
        allowed = [j for j in JOINERS if _fits(before, Slot(unit, forms[unit], j))]
        if terse and "" in allowed:
            allowed = [""]
        elif rule == "scene first" and unit == "object" and len(slots) == 1 and "with" in allowed:
            allowed = ["with"]
        if not allowed:
            return None
        slots.append(Slot(unit, forms[unit], allowed[rng.integers(len(allowed))]))
    structure = tuple(slots)
    if rule is not None and rule not in heldout_rules(structure):
        return None
    return structure


def _join(structure: Structure, words: Mapping[str, str]) -> str:
    parts = []
    for k, (_, form, joiner) in enumerate(structure):
        lead = (f"{joiner} " if joiner else "") if k == 0 else {"": " ", ",": ", "}.get(joiner, f" {joiner} ")
        parts.append(lead + (form.format(**words) if words else form))
    return re.sub(r"\ba (?=[aeiou])", "an ", "".join(parts))


def realise(structure: Structure, scene: Scene, mentioned: frozenset[str], rng: np.random.Generator) -> str:
    """The structure's text for the scene, each word drawn from its synonyms; the noun is "shape" if unnamed."""
    words = {}
    for field in ("size", "color", "shape", "position", "background"):
        options = SYNONYMS.get(getattr(scene, field), (getattr(scene, field),))
        words[field] = options[rng.integers(len(options))]
    if "shape" not in mentioned:
        words["shape"] = "shape"
    return _join(structure, words)


def _mentioned(scene: Scene, rng: np.random.Generator, probs: Mapping[str, float]) -> set[str]:
    drops = rng.random(len(ATTRIBUTES))
    mentioned = {a for a, u in zip(ATTRIBUTES, drops, strict=True) if u >= probs[a]}
    if scene.size == "medium":
        mentioned.discard("size")   # medium has no word (docs/SHAPES.md)
    return mentioned or {"shape"}


def grammar_caption(scene: Scene, rng: np.random.Generator, split: str = "train",
                    drop_prob: float | Mapping[str, float] = DROP_PROB, empty_prob: float = EMPTY_PROB) -> Phrasing:
    """A random caption for the scene from the grammar; deterministic given the rng's state.

    "train" draws only structures outside HELDOUT_RULES; "heldout" draws a rule at random and a
    structure under it, naming at least what the rule needs (the background, say). The rng advances
    by a varying amount (structures are drawn again until they fit); each dataset item has its own.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    probs = drop_prob if isinstance(drop_prob, Mapping) else dict.fromkeys(ATTRIBUTES, drop_prob)
    if rng.random() < empty_prob:
        return Phrasing("", frozenset(), None)
    rule = None if split == "train" else tuple(HELDOUT_RULES)[rng.integers(len(HELDOUT_RULES))]
    mentioned = frozenset(_mentioned(scene, rng, probs) | set(_RULE_NEEDS.get(rule, ())))
    for _ in range(MAX_TRIES):
        structure = draw_structure(scene, mentioned, rng, rule)
        if structure is not None and (rule is not None or not heldout_rules(structure)):
            return Phrasing(realise(structure, scene, mentioned, rng), mentioned, structure)
    raise RuntimeError(f"no {split} structure found in {MAX_TRIES} draws for {scene}")   # a bug, not bad input
