"""The caption grammar (core/shapes/grammar.py, issue #26 step 1), its held-out structures, the
grammar option of the dataset, per-size tallies and `latentdesk eval shapes --captions structures`.

Captions are read back here by a parser of our own, written from docs/SHAPES.md and issue #26's
synonym list, not from the grammar's tables: every caption must name exactly its `mentioned`
attributes, with the scene's values, in words a reader knows.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from app.cli.commands import main
from core.shapes.captions import HELDOUT_MARKERS, TRAIN_TEMPLATES, describe, make_caption
from core.shapes.dataset import ShapesDataset
from core.shapes.evaluate import Tally, ground_truth, heldout_cases, heldout_structure_cases, score_images
from core.shapes.grammar import HELDOUT_RULES, JOINERS, grammar_caption, heldout_rules, template
from core.shapes.world import ATTRIBUTES, COLORS, POSITIONS, SHAPES, render, sample_scene

# the fixture (an untrained model exported as the built-in one is), shared rather than copied
from tests.test_measure import tiny_shapes_model  # noqa: F401

# The reader's vocabulary: docs/SHAPES.md's words plus issue #26's synonyms ("tiny", "big", "little",
# "huge" for the sizes; "upper left", "middle", "lower right", "centre" for places; "grey").
COLOR_WORDS = {c: c for c in COLORS} | {"grey": "gray"}
SIZE_WORDS = {"small": "small", "tiny": "small", "little": "small", "large": "large", "big": "large",
              "huge": "large"}
POSITION_WORDS = {p: p for p in POSITIONS} | {"upper left": "top left", "upper right": "top right",
                                              "lower left": "bottom left", "lower right": "bottom right",
                                              "centre": "center", "middle": "center"}
GLUE = {"a", "an", "the", "in", "at", "on", "with", "and", "background", "corner", "side", "shape"}
_COLOR = "|".join(COLOR_WORDS)
_POSITION = re.compile(r"\b(" + "|".join(sorted(POSITION_WORDS, key=len, reverse=True)) + r")\b")


def read(text: str) -> dict[str, tuple[str, int]]:
    """{attribute: (value, where in the text it starts)} for what the caption names."""
    found: dict[str, list[tuple[str, int]]] = {a: [] for a in ATTRIBUTES}
    # (the match: its start orders the phrases, its colour word's start is not the object's colour)
    background = list(re.finditer(rf"\b({_COLOR}) background\b", text))
    background += re.finditer(rf"\bon ({_COLOR})\b(?! background)", text)
    if not background:
        background = list(re.finditer(rf"\bbackground ({_COLOR})\b", text))
    found["background"] = [(COLOR_WORDS[m.group(1)], m.start()) for m in background]
    taken = {m.start(1) for m in background}
    found["color"] = [(COLOR_WORDS[m.group(1)], m.start()) for m in re.finditer(rf"\b({_COLOR})\b", text)
                      if m.start() not in taken]
    found["shape"] = [(m.group(1), m.start()) for m in re.finditer(rf"\b({'|'.join(SHAPES)})\b", text)]
    found["size"] = [(SIZE_WORDS[m.group(1)], m.start())
                     for m in re.finditer(rf"\b({'|'.join(SIZE_WORDS)})\b", text)]
    found["position"] = [(POSITION_WORDS[m.group(1)], m.start()) for m in _POSITION.finditer(text)]
    assert all(len(hits) <= 1 for hits in found.values()), (text, found)
    return {a: hits[0] for a, hits in found.items() if hits}


def text_rules(text: str) -> set[str]:
    """The held-out rules, judged from the words alone (not from the grammar's structure)."""
    named = read(text)
    noun = re.search(r"\bshape\b", text)   # the object when its shape is not named
    spans = sorted([(at, a) for a, (_, at) in named.items()] + ([(noun.start(), "shape")] if noun else []))
    rules = set()
    if spans[0][1] == "background" and "with" in text[spans[0][0]:spans[1][0]].split():
        rules.add("scene first")
    if [a for _, a in spans[:2]] == ["position", "background"]:
        rules.add("place then scene")
    words = re.findall(r"[a-z]+", text)
    noun = named["shape"][1] if "shape" in named else noun.start()
    after_noun = sum(a in named and named[a][1] > noun for a in ("color", "size"))
    phrases = 1 + ("position" in named) + ("background" in named) + after_noun
    if "," not in text and not set(words) & {"a", "an", "the", "in", "at", "on", "with", "and"} and phrases >= 3:
        rules.add("terse")
    return rules


def draws(split: str, n: int, seed: int, **kw):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        scene = sample_scene(rng)
        yield scene, grammar_caption(scene, rng, split, empty_prob=0.0, **kw)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_caption_names_exactly_its_mentioned_attributes(split):
    words_seen, left_out = Counter(), Counter()
    for scene, (text, mentioned, _) in draws(split, 4000, seed=1):
        named = read(text)
        assert set(named) == mentioned, (text, sorted(mentioned))
        assert all(named[a][0] == getattr(scene, a) for a in named), (text, scene)
        assert ("shape" in re.findall(r"[a-z]+", text)) == ("shape" not in mentioned), text   # the noun is there
        words = re.findall(r"[a-z]+", text)
        vocabulary = set(GLUE) | {w for table in (COLOR_WORDS, SIZE_WORDS, POSITION_WORDS) for p in table
                                  for w in p.split()} | set(SHAPES)
        assert set(words) <= vocabulary, text
        assert scene.size != "medium" or "size" not in mentioned
        words_seen.update(words)
        left_out.update(set(ATTRIBUTES) - mentioned)
    # every word of the old vocabulary and every synonym comes up
    for phrase in (*COLOR_WORDS, *SIZE_WORDS, *POSITION_WORDS, *SHAPES):
        assert all(words_seen[w] for w in phrase.split()), phrase
    if split == "train":
        assert all(left_out[a] > 300 for a in ATTRIBUTES), left_out   # any attribute may be left out


def test_synonyms_map_to_their_one_meaning():
    by_word: dict[str, set[str]] = {}
    for scene, (text, mentioned, _) in draws("train", 4000, seed=2):
        for word, attribute in (("tiny", "size"), ("little", "size"), ("big", "size"), ("huge", "size"),
                                ("upper left", "position"), ("lower right", "position"),
                                ("centre", "position"), ("middle", "position")):
            if re.search(rf"\b{word}\b", text):
                assert attribute in mentioned, text
                by_word.setdefault(word, set()).add(getattr(scene, attribute))
        if re.search(r"\bgrey background\b|\bon grey\b|\bbackground grey\b", text):
            by_word.setdefault("grey background", set()).add(scene.background)
        elif "grey" in text:
            by_word.setdefault("grey", set()).add(scene.color)
    assert by_word == {"tiny": {"small"}, "little": {"small"}, "big": {"large"}, "huge": {"large"},
                       "grey": {"gray"}, "grey background": {"gray"}, "upper left": {"top left"},
                       "lower right": {"bottom right"}, "centre": {"center"}, "middle": {"center"}}


def test_structures_vary_in_order_forms_and_joiners():
    structures, joiners, firsts, lasts = Counter(), Counter(), Counter(), Counter()
    for _, (_, _, structure) in draws("train", 3000, seed=3):
        structures[template(structure)] += 1
        joiners.update(slot.joiner for slot in structure[1:])
        firsts[structure[0].unit] += 1
        lasts[structure[-1].unit] += 1
    assert len(structures) > 1000
    assert set(joiners) == set(JOINERS)
    assert set(firsts) == {"object", "position", "background"}            # any of them may open a caption
    assert set(lasts) == {"object", "size", "color", "position", "background"}   # "a size word at the end"


def test_heldout_structures_never_come_up_in_training():
    for _, (text, _, structure) in draws("train", 20000, seed=4):
        assert heldout_rules(structure) == (), text
        assert text_rules(text) == set(), text
        assert not any(marker in text for marker in HELDOUT_MARKERS), text   # old held-out templates stay held out
    rules = Counter()
    for _, (text, _, structure) in draws("heldout", 3000, seed=5):
        assert heldout_rules(structure) and text_rules(text) == set(heldout_rules(structure)), text
        rules.update(heldout_rules(structure))
        assert not any(marker in text for marker in HELDOUT_MARKERS), text
    assert set(rules) == set(HELDOUT_RULES) and min(rules.values()) > 600, rules


def test_heldout_structures_are_not_the_old_training_templates_either():
    """So the model trained on the templates is measured on structures it never saw."""
    for case in heldout_structure_cases(300):   # the very cases `eval shapes --captions structures` scores
        assert case.caption not in {describe(case.scene, t, case.mentioned) for t in TRAIN_TEMPLATES}, case
        assert not any(marker in case.caption for marker in HELDOUT_MARKERS), case


def test_grammar_is_deterministic_from_the_rng():
    first = [p for _, p in draws("train", 300, seed=7)]
    assert first == [p for _, p in draws("train", 300, seed=7)]
    assert first != [p for _, p in draws("train", 300, seed=8)]
    assert len({p.text for p in first}) > 280
    with pytest.raises(ValueError, match="split"):
        grammar_caption(sample_scene(np.random.default_rng(0)), np.random.default_rng(0), split="test")
    texts = [grammar_caption(sample_scene(np.random.default_rng(i)), np.random.default_rng(i)).text
             for i in range(2000)]
    assert 0.08 <= texts.count("") / len(texts) <= 0.12   # the same 10 % empty captions as the templates


def test_dataset_grammar_option_keeps_the_template_default():
    templates, grammar = ShapesDataset(3, 40), ShapesDataset(3, 40, captions="grammar")
    for i in range(40):
        scene, text, mentioned = templates.scene_and_caption(i)
        rng = np.random.default_rng((3, 0, i))
        assert scene == sample_scene(rng) and (text, mentioned) == make_caption(scene, rng)[:2]   # unchanged
        assert grammar.scene_and_caption(i)[0] == scene    # same scenes, other words
        assert read(grammar.scene_and_caption(i)[1]).keys() == grammar.scene_and_caption(i)[2]
    assert [grammar.scene_and_caption(i) for i in range(40)] == [
        ShapesDataset(3, 40, captions="grammar").scene_and_caption(i) for i in range(40)]
    assert len(set(ShapesDataset(3, 5, captions="grammar", captions_per_item=4).captions(2))) == 4
    with pytest.raises(ValueError, match="captions must be one of"):
        ShapesDataset(3, 5, captions="free text")


def test_heldout_structure_cases():
    cases = heldout_structure_cases(300)
    assert len(cases) == 300 and cases == heldout_structure_cases(300) and cases != heldout_structure_cases(300, 7)
    assert [c.scene for c in cases[:50]] == [c.scene for c in heldout_cases(50)]   # the same pictures
    assert all(c.caption and c.structure in HELDOUT_RULES and c.structure in text_rules(c.caption) for c in cases)
    assert min(Counter(c.structure for c in cases).values()) >= 80
    truth = ground_truth(cases)
    assert truth.all_named == 1.0 and all(truth.accuracy(a) == 1.0 for a in ATTRIBUTES)
    sizes = dict(truth.grouped("size"))
    assert list(sizes) == ["small", "medium", "large"] and sum(t.images for t in sizes.values()) == 300
    assert sizes["medium"].named["size"] == 0 and sizes["small"].named["shape"] > 50


def test_tally_per_size_follows_the_scene_not_the_caption():
    cases = heldout_structure_cases(120)
    # small objects drawn as the wrong shape; the others right
    wrong = {"circle": "square", "square": "star", "triangle": "circle", "diamond": "cross", "star": "triangle",
             "cross": "diamond"}
    images = [render(replace(c.scene, shape=wrong[c.scene.shape]) if c.scene.size == "small" else c.scene)
              for c in cases]
    tally = score_images(cases, images)
    small, medium, large = (tally.group("size", s) for s in ("small", "medium", "large"))
    assert small.accuracy("shape") == 0.0 and small.named["shape"] > 10
    # right in all named only where the caption leaves the shape out
    assert small.all_right == sum(c.scene.size == "small" and "shape" not in c.mentioned for c in cases)
    assert medium.accuracy("shape") == 1.0 and large.all_named == 1.0
    assert tally.correct["shape"] == medium.correct["shape"] + large.correct["shape"]
    assert small.accuracy("color") == 1.0   # the right colour, the wrong outline
    as_dict = tally.as_dict()
    assert list(as_dict["by_size"]) == ["small", "medium", "large"]
    assert as_dict["by_size"]["small"]["shape"]["accuracy"] == 0.0
    assert as_dict["by_size"]["medium"]["size"]["accuracy"] is None          # medium is never named: no NaN
    assert sum(t["images"] for t in as_dict["by_structure"].values()) == 120
    empty = Tally()
    empty.add({"shape": True}, {"size": "large"})
    assert empty.group("size", "small").images == 0 and empty.group("size", "large").accuracy("shape") == 1.0


def test_eval_shapes_on_heldout_structures_prints_and_writes_per_size(tmp_path, capsys, request):
    model = request.getfixturevalue("tiny_shapes_model")
    out = tmp_path / "eval.json"
    assert main(["eval", "shapes", "--model", str(model), "--captions", "structures", "templates",
                 "--n", "4", "--json", str(out), "--images", str(tmp_path / "images")]) == 0
    printed = capsys.readouterr().out
    assert "held-out structures" in printed and "held-out captions (templates" in printed
    assert printed.count("rendered ground truth") == 2
    results = json.loads(out.read_text())
    assert set(results["sets"]) == {"structures", "templates"}
    structures = results["sets"]["structures"]
    assert structures["n"] == 4 and structures["ground_truth"]["all_named"] == 1.0
    run = structures["guidance"]["3"]
    assert run["images"] == 4 and sum(t["images"] for t in run["by_size"].values()) == 4
    assert sum(t["images"] for t in run["by_structure"].values()) == 4
    for size in run["by_size"]:
        assert re.search(rf"^  {size} \(\d+\)", printed, re.MULTILINE)
    assert len(list((tmp_path / "images" / "structures").glob("g3_*.png"))) == 4


def test_eval_shapes_defaults_to_the_templates(tmp_path, request):
    model = request.getfixturevalue("tiny_shapes_model")
    out = tmp_path / "eval.json"
    assert main(["eval", "shapes", "--model", str(model), "--n", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["captions"] == "templates" and results["n"] == 2 and "by_size" in results["guidance"]["3"]


def test_training_reads_the_grammar_when_asked():
    from core.train.data import shapes
    templates = shapes(0, 50)
    grammar = shapes(0, 50, captions="grammar")
    assert [templates[i][1] for i in range(50)] != [grammar[i][1] for i in range(50)]
    assert all(torch.equal(templates[i][0], grammar[i][0]) for i in range(5))    # the same scenes


def test_the_diffusion_stage_takes_the_caption_style_from_the_command_line():
    from types import SimpleNamespace

    from app.cli.train_args import dataset_from
    args = SimpleNamespace(data=None, shapes=True, shapes_items=20, seed=0, shapes_captions=1, caption_style="grammar")
    dataset, name = dataset_from(args, 100)
    assert len(dataset) == 20 and name.endswith("grammar captions")
    plain, plain_name = dataset_from(SimpleNamespace(**{**vars(args), "caption_style": "templates"}), 100)
    assert "grammar" not in plain_name and dataset[3][1] != plain[3][1]


def test_mixed_captions_phrase_each_scene_from_the_grammar_or_the_training_templates():
    from core.shapes.captions import TRAIN_TEMPLATES
    from core.shapes.grammar import heldout_rules

    mixed = ShapesDataset(3, 400, captions="mixed", captions_per_item=4)
    grammar, templates = ShapesDataset(3, 400, captions="grammar"), ShapesDataset(3, 400)
    structures = [mixed.phrased(i)[1].structure for i in range(400)]
    from_templates = [s for s in structures if s in TRAIN_TEMPLATES]
    from_grammar = [s for s in structures if s is not None and s not in TRAIN_TEMPLATES]
    assert 0.4 <= len(from_templates) / 400 <= 0.6 and 0.35 <= len(from_grammar) / 400 <= 0.6
    assert not any(heldout_rules(s) for s in from_grammar)                 # held-out structures stay held out
    for i in range(400):
        scene, (text, mentioned, structure) = mixed.phrased(i)
        assert scene == grammar.scene_and_caption(i)[0] == templates.scene_and_caption(i)[0]   # same scenes
        if structure in TRAIN_TEMPLATES:
            assert scene.shape in text or "shape" not in mentioned
        elif text:
            assert read(text).keys() == mentioned    # a grammar caption says what it claims
    assert mixed.captions(7) == ShapesDataset(3, 400, captions="mixed", captions_per_item=4).captions(7)
    assert len(set(mixed.captions(7))) == 4
