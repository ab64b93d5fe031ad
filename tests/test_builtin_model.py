"""The shipped built-in model (resources/models/builtin.safetensors): loads as any model does, and
draws today what it drew when it shipped.

The golden image and its request come from `scripts/make_golden.py`; regenerate it only when the model
itself is retrained, never to make this test pass.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from core.generate import generate
from core.images import psnr
from core.loading.checkpoint import load_model
from core.resources import builtin_model_path, resolve_model
from core.shapes.checker import measure

ROOT = Path(__file__).resolve().parents[1]


def _make_golden():
    """scripts/make_golden.py, which defines the golden request (a script, so loaded by its path)."""
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_script = _make_golden()
GOLDEN, golden_request = _script.GOLDEN, _script.golden_request


@pytest.fixture(scope="module")
def builtin():
    return load_model(resolve_model("builtin"))


def test_the_builtin_model_ships_small_and_states_how_to_sample_it(builtin):
    assert builtin_model_path().stat().st_size <= 40_000_000
    family = builtin.family
    assert (family.default_size, family.default_steps) == (128, 20)
    assert builtin.prediction == "v" and family.zero_terminal_snr and family.pooled_text_y
    assert builtin.source == builtin_model_path()


def test_golden_image(builtin):
    """Fixed seed and prompt: within a small tolerance of the committed PNG (other CPUs round differently)."""
    image = generate(golden_request(builtin), builtin).images[0]
    reference = Image.open(GOLDEN).convert("RGB")
    assert image.size == reference.size == (128, 128)
    similarity = psnr(image, reference)
    print(f"\n[golden] PSNR {similarity:.1f} dB")
    assert similarity >= 40.0


def test_golden_image_shows_what_the_prompt_asks():
    """The reference itself, read back by the checker: a guard against committing a bad golden image."""
    seen = measure(Image.open(GOLDEN).convert("RGB"))
    assert (seen.color, seen.background, seen.shape, seen.size, seen.position) == (
        "red", "blue", "star", "large", "top left")
