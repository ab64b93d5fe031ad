"""How well a model draws what held-out captions ask for, read back by the analytic checker.

    heldout_cases(n, seed)              -> n EvalCase(caption, scene, mentioned) from the held-out templates
    score_images(cases, images)         -> Tally: per attribute, how many images show what was asked
    ground_truth(cases)                 -> Tally of the cases' own renders (the checker's self-test: 100 %)
    evaluate(model, cases, settings)    -> Tally of the model's images for the cases' captions

An attribute counts only where the caption names it ("a red circle" is scored on colour
and shape, not on where the circle is). `Tally.all_named` is the share of images that
get every named attribute right at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from core.shapes.checker import measure, score
from core.shapes.dataset import ShapesDataset
from core.shapes.world import ATTRIBUTES, Scene, render

EVAL_SEED = 1234   # not the training seed: evaluation scenes are drawn afresh


@dataclass(frozen=True)
class EvalCase:
    caption: str
    scene: Scene
    mentioned: frozenset[str]


@dataclass
class Tally:
    """Correct / named counts per attribute, and how many images got all their named attributes."""

    correct: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))
    named: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))
    images: int = 0
    all_right: int = 0

    def add(self, verdict: dict[str, bool]) -> None:
        for attribute, ok in verdict.items():
            self.named[attribute] += 1
            self.correct[attribute] += ok
        self.images += 1
        self.all_right += all(verdict.values())

    def accuracy(self, attribute: str) -> float:
        return self.correct[attribute] / self.named[attribute] if self.named[attribute] else float("nan")

    @property
    def all_named(self) -> float:
        return self.all_right / self.images if self.images else float("nan")

    def as_dict(self) -> dict:
        return {"images": self.images, "all_named": self.all_named,
                **{a: {"accuracy": self.accuracy(a), "correct": self.correct[a], "named": self.named[a]}
                   for a in ATTRIBUTES}}


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


def score_images(cases: Sequence[EvalCase], images: Iterable[Image.Image]) -> Tally:
    tally = Tally()
    for case, image in zip(cases, images, strict=True):
        tally.add(score(measure(image), case.scene, case.mentioned))
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
