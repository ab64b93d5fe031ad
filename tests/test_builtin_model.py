"""The shipped built-in model (resources/models/builtin.safetensors): loads as any model does, and
draws today what it drew when it shipped.

The golden image was made with `scripts/make_golden.py`; regenerate it only when the model
itself is retrained, never to make this test pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.loading.checkpoint import load_model
from core.generate import generate
from core.images import psnr
from core.request import GenerationRequest
from core.resources import builtin_model_path, resolve_model
from core.shapes.checker import measure

GOLDEN = Path(__file__).parent / "golden" / "builtin.png"
GOLDEN_REQUEST = GenerationRequest(prompt="a large red star in the top left corner on a blue background",
                                   seed=7, width=128, height=128)


def golden_request(model) -> GenerationRequest:
    """The golden prompt at the model's own defaults: what a user gets without touching anything."""
    family = model.family
    return GenerationRequest(prompt=GOLDEN_REQUEST.prompt, seed=GOLDEN_REQUEST.seed, steps=family.default_steps,
                             guidance=family.default_guidance, sampler=family.default_sampler,
                             width=family.default_size, height=family.default_size)


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
