"""Write tests/golden/builtin.png: the built-in model's image for the golden request (tests/test_builtin_model.py).

Run only after retraining the built-in model:  python scripts/make_golden.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.loading.checkpoint import load_model  # noqa: E402
from core.generate import generate  # noqa: E402
from core.resources import resolve_model  # noqa: E402
from tests.test_builtin_model import GOLDEN, golden_request  # noqa: E402


def main() -> int:
    model = load_model(resolve_model("builtin"))
    image = generate(golden_request(model), model).images[0]
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    image.save(GOLDEN)
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
