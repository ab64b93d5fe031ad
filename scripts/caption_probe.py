"""What a caption mix teaches a reader: train the built-in recipe's text encoder on it alone, score held-out phrasings.

    python scripts/caption_probe.py [--grammar-share S] [--color-before-noun P] [--steps N] [--json FILE]

Issue #26's runs each take hours of CPU, and what decides a run's template scores is partly how its captions
are mixed (`core.shapes.dataset.MIXED_GRAMMAR_SHARE`, `core.shapes.grammar.BEFORE_NOUN`). This asks the cheaper
question first, in minutes: trained on captions drawn that way, can the recipe's text encoder (with its
attribute head, the recipe's `attribute_loss`, as the only loss) name each attribute of captions phrased in
ways it never saw: the old held-out templates (per marker phrase: "against", "over", "all around", ...) and
the grammar's held-out structures? The diffusion model cannot use what its encoder does not separate
(recipe item 10), so a mix whose reader misreads "a red star against brown" is a poor mix for a run. It is a
proxy, not the image score: in a real run the diffusion loss also shapes the encoder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.shapes import dataset as shapes_dataset  # noqa: E402
from core.shapes import grammar  # noqa: E402
from core.shapes.captions import HELDOUT_MARKERS, HELDOUT_TEMPLATES  # noqa: E402
from core.shapes.dataset import ShapesDataset  # noqa: E402
from core.shapes.evaluate import EVAL_SEED  # noqa: E402
from core.shapes.world import ATTRIBUTES, attribute_labels  # noqa: E402
from core.text.encoder import TextEncoder  # noqa: E402
from core.text.tokenizer import ClipTokenizer  # noqa: E402
from core.train.attributes import attribute_cross_entropy, attribute_logits  # noqa: E402
from core.train.data import BatchOrder  # noqa: E402
from core.train.diffusion import POOLED_TEXT_SPEC, token_ids  # noqa: E402
from core.train.recipe import RECIPES  # noqa: E402


def captions(data: ShapesDataset, tokenizer: ClipTokenizer, per_item: bool) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Token ids (N, 77), labels (N, attributes) and each caption's group (template marker or held-out rule)."""
    ids, labels, groups = [], [], []
    for i in range(len(data)):
        scene, phrasing = data.phrased(i)
        phrasings = data.phrasings(i) if per_item else [phrasing[:2]]
        for text, mentioned in phrasings:
            ids.append(token_ids(tokenizer, text))
            labels.append(attribute_labels(scene, mentioned))
        structure = phrasing.structure
        if structure in HELDOUT_TEMPLATES:
            groups.append(HELDOUT_MARKERS[HELDOUT_TEMPLATES.index(structure)])
        else:   # a held-out structure's rule; training captions need no group
            rules = grammar.heldout_rules(structure) if structure and not isinstance(structure, str) else ()
            groups.append(rules[0] if rules else "")
    return torch.tensor(ids), torch.tensor(labels), groups


def score(encoder: TextEncoder, head: nn.Linear, classes, ids, labels, groups) -> dict:
    """Per attribute, the share of captions naming it whose attribute the head reads right; also per group."""
    with torch.no_grad():
        context, _ = encoder([ids])
        right = torch.stack([z.argmax(1) for z in attribute_logits(head, classes, context, ids)], 1) == labels
    named = labels >= 0
    out = {}
    for group in ["all", *sorted(set(groups))]:
        rows = torch.tensor([group in ("all", g) for g in groups])
        out[group] = {a: round(float(right[rows & named[:, k], k].float().mean()), 3)
                      for k, a in enumerate(ATTRIBUTES) if (rows & named[:, k]).any()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="v2", choices=sorted(RECIPES))
    parser.add_argument("--grammar-share", type=float, default=shapes_dataset.MIXED_GRAMMAR_SHARE,
                        help="share of mixed captions from the grammar (the rest from the training templates)")
    parser.add_argument("--color-before-noun", type=float, default=grammar.BEFORE_NOUN["color"],
                        help="how often training grammar captions put the object's colour before the noun")
    parser.add_argument("--items", type=int, default=4000, help="training scenes (each phrased as the recipe does)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval", type=int, default=1000, help="held-out captions of each kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the scores here")
    args = parser.parse_args()

    recipe = RECIPES[args.recipe]
    shapes_dataset.MIXED_GRAMMAR_SHARE = args.grammar_share
    grammar.BEFORE_NOUN = {**grammar.BEFORE_NOUN, "color": args.color_before_noun}
    tokenizer = ClipTokenizer()
    began = time.perf_counter()
    train = ShapesDataset(args.seed, args.items, "train", captions_per_item=recipe.captions_per_item,
                          captions=recipe.caption_style)
    ids, labels, _ = captions(train, tokenizer, per_item=True)
    held_out = {kind: captions(ShapesDataset(EVAL_SEED, args.eval, "heldout", captions=kind), tokenizer, False)
                for kind in ("templates", "grammar")}
    print(f"{len(ids)} training captions, {args.eval} held-out of each kind ({time.perf_counter() - began:.0f} s)")

    torch.manual_seed(args.seed)
    from transformers import CLIPTextModel
    encoder = TextEncoder([CLIPTextModel(recipe.text.clip_config())], [POOLED_TEXT_SPEC])
    classes = ShapesDataset.label_classes
    head = nn.Linear(recipe.text.hidden_size, sum(classes))
    params = [*encoder.models[0].parameters(), *head.parameters()]
    settings = recipe.diffusion_train
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    order = BatchOrder(len(ids), args.batch_size, args.seed)
    for step in range(args.steps):
        rows = torch.tensor(order.indices(step))
        context, _ = encoder([ids[rows]])
        loss = attribute_cross_entropy(attribute_logits(head, classes, context, ids[rows]), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 250 == 0:
            print(f"step {step + 1}: loss {float(loss.detach()):.4f}", flush=True)
    encoder.models[0].eval()
    result = {"grammar_share": args.grammar_share, "color_before_noun": args.color_before_noun,
              "items": args.items, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
              "seconds": round(time.perf_counter() - began),
              **{kind: score(encoder, head, classes, *held_out[kind]) for kind in held_out}}
    for kind in held_out:
        for group, accuracy in result[kind].items():
            print(f"{kind:9} {group[:34]:34} " + "  ".join(f"{a} {v * 100:5.1f}" for a, v in accuracy.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
