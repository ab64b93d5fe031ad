"""How well a model draws what held-out captions ask for, read back by the analytic checker.

    heldout_cases(n, seed)              -> n EvalCase(caption, scene, mentioned) from the held-out templates
    heldout_structure_cases(n, seed)    -> n EvalCase(..., structure=rule) from the grammar's held-out structures
    score_images(cases, images)         -> Tally: per attribute, how many images show what was asked;
                                           the same per true size (tally.groups["size"]["small"]) and,
                                           for held-out structures, per rule (groups["structure"])
    ground_truth(cases)                 -> Tally of the cases' own renders (the checker's self-test: 100 %)
    evaluate(model, cases, settings)    -> Tally of the model's images for the cases' captions

An attribute counts only where the caption names it ("a red circle" is scored on colour
and shape, not on where the circle is). `Tally.all_named` is the share of images that
get every named attribute right at once. Both case sets draw the same scenes for the same seed
(item i's scene comes first from its generator), so templates and structures compare picture by picture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from PIL import Image

from core.shapes.checker import measure, score
from core.shapes.dataset import ShapesDataset
from core.shapes.grammar import heldout_rules
from core.shapes.world import ATTRIBUTES, SIZES, Scene, render

EVAL_SEED = 1234   # not the training seed: evaluation scenes are drawn afresh


@dataclass(frozen=True)
class EvalCase:
    caption: str
    scene: Scene
    mentioned: frozenset[str]
    structure: str | None = None   # the held-out rule a grammar caption was drawn under


@dataclass
class Tally:
    """Correct / named counts per attribute, and how many images got all their named attributes.

    `groups[kind][value]` is the same tally over the images of one group, e.g. groups["size"]["small"]:
    the scenes whose object is truly small, whether or not their caption names the size.
    """

    correct: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))
    named: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))
    images: int = 0
    all_right: int = 0
    groups: dict[str, dict[str, Tally]] = field(default_factory=dict)

    def add(self, verdict: dict[str, bool], groups: Mapping[str, str] | None = None) -> None:
        for attribute, ok in verdict.items():
            self.named[attribute] += 1
            self.correct[attribute] += ok
        self.images += 1
        self.all_right += all(verdict.values())
        for kind, value in (groups or {}).items():
            self.groups.setdefault(kind, {}).setdefault(value, Tally()).add(verdict)

    def group(self, kind: str, value: str) -> Tally:
        """The tally of one group (an empty one if no image fell in it)."""
        return self.groups.get(kind, {}).get(value, Tally())

    def grouped(self, kind: str) -> list[tuple[str, Tally]]:
        """(value, tally) of each group of a kind; sizes small to large, other kinds by name."""
        tallies = self.groups.get(kind, {})
        order = [v for v in SIZES if v in tallies] if kind == "size" else sorted(tallies)
        return [(value, tallies[value]) for value in order]

    def accuracy(self, attribute: str) -> float:
        return self.correct[attribute] / self.named[attribute] if self.named[attribute] else float("nan")

    @property
    def all_named(self) -> float:
        return self.all_right / self.images if self.images else float("nan")

    def as_dict(self) -> dict:
        """Plain numbers for JSON; an accuracy over nothing named is None (JSON has no NaN)."""
        def number(x: float) -> float | None:
            return None if math.isnan(x) else x

        out = {"images": self.images, "all_named": number(self.all_named),
               **{a: {"accuracy": number(self.accuracy(a)), "correct": self.correct[a], "named": self.named[a]}
                  for a in ATTRIBUTES}}
        for kind in self.groups:
            out[f"by_{kind}"] = {value: tally.as_dict() for value, tally in self.grouped(kind)}
        return out


@dataclass(frozen=True)
class EvalSettings:
    guidance: float
    steps: int
    sampler: str
    seed: int = EVAL_SEED   # image i uses seed + i, so every guidance value starts from the same noise
    size: int = 128


def heldout_cases(n: int, seed: int = EVAL_SEED) -> list[EvalCase]:
    """n scenes with captions from templates never used in training (no empty captions)."""
    data = ShapesDataset(seed, n, split="heldout")
    cases = []
    for i in range(n):
        scene, caption, mentioned = data.scene_and_caption(i)
        cases.append(EvalCase(caption, scene, mentioned))
    return cases


def heldout_structure_cases(n: int, seed: int = EVAL_SEED) -> list[EvalCase]:
    """n scenes with grammar captions in held-out structures only (core/shapes/grammar.py HELDOUT_RULES).

    Each case names at least what its rule needs (the background, say), so these captions name more
    attributes on average than the templates' do; `structure` is the first rule the caption matches.
    """
    data = ShapesDataset(seed, n, split="heldout", captions="grammar")
    cases = []
    for i in range(n):
        scene, (caption, mentioned, structure) = data.phrased(i)
        cases.append(EvalCase(caption, scene, mentioned, heldout_rules(structure)[0]))
    return cases


def score_images(cases: Sequence[EvalCase], images: Iterable[Image.Image]) -> Tally:
    """Score each image against its case; grouped by the scene's true size (and held-out rule, if any)."""
    tally = Tally()
    for case, image in zip(cases, images, strict=True):
        groups = {"size": case.scene.size} | ({"structure": case.structure} if case.structure else {})
        tally.add(score(measure(image), case.scene, case.mentioned), groups)
    return tally


def ground_truth(cases: Sequence[EvalCase]) -> Tally:
    return score_images(cases, (render(case.scene) for case in cases))


def evaluate(model, cases: Sequence[EvalCase], settings: EvalSettings,
             on_image: Callable[[int, EvalCase, Image.Image], None] | None = None) -> Tally:
    """Generate one image per case's caption and score it; `on_image(i, case, image)` after each."""
    from core.generate import generate
    from core.request import GenerationRequest

    def images():
        for i, case in enumerate(cases):
            request = GenerationRequest(prompt=case.caption, steps=settings.steps, guidance=settings.guidance,
                                        sampler=settings.sampler, seed=settings.seed + i, width=settings.size,
                                        height=settings.size)
            image = generate(request, model).images[0]
            if on_image is not None:
                on_image(i, case, image)
            yield image

    return score_images(cases, images())
