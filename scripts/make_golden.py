"""Write tests/golden/builtin.png: the built-in model's image for the golden request.

Run only after retraining the built-in model:  python scripts/make_golden.py

The request is defined here, once: tests/test_builtin_model.py loads this file to check that the
model still draws the committed image for it, so the script and the test cannot drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.generate import generate  # noqa: E402
from core.loading.checkpoint import load_model  # noqa: E402
from core.request import GenerationRequest  # noqa: E402
from core.resources import resolve_model  # noqa: E402

GOLDEN = ROOT / "tests" / "golden" / "builtin.png"
GOLDEN_PROMPT = "a large red star in the top left corner on a blue background"
GOLDEN_SEED = 7


def golden_request(model) -> GenerationRequest:
    """The golden prompt at the model's own defaults: what a user gets without touching anything."""
    family = model.family
    return GenerationRequest(prompt=GOLDEN_PROMPT, seed=GOLDEN_SEED, steps=family.default_steps,
                             guidance=family.default_guidance, sampler=family.default_sampler,
                             width=family.default_size, height=family.default_size)


def main() -> int:
    model = load_model(resolve_model("builtin"))
    image = generate(golden_request(model), model).images[0]
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    image.save(GOLDEN)
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
