"""bfloat16 networks (core/precision.py): close to the float32 image, the sampler kept in float32,
the float32 model untouched, the choice recorded in the PNG and refused when unknown."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli.commands import main
from core.errors import LatentDeskError
from core.generate import generate
from core.images import psnr
from core.loading.checkpoint import load_model
from core.metadata.infotext import to_infotext
from core.precision import at_precision, precision_dtype, sampling_dtype
from core.request import GenerationRequest
from core.sampling.denoiser import Conditioning, Denoiser
from tests.tiny_models import write_single_file


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_single_file("sd1", tmp_path_factory.mktemp("precision") / "tiny.safetensors", seed=8)


@pytest.fixture(scope="module")
def model(tiny_file):
    return load_model(tiny_file)


REQUEST = GenerationRequest(prompt="a red circle", negative_prompt="blue", steps=8, guidance=5.0,
                            sampler="DPM++ 2M", seed=3, width=64, height=64)


def test_bfloat16_networks_make_nearly_the_float32_image_with_a_float32_sampler(model):
    half = at_precision(model, torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16
    assert model.dtype == torch.float32 and model.vae.dtype == torch.float32     # the original is kept
    assert at_precision(model, torch.float32) is model
    latents = []
    result = generate(REQUEST, half, on_step=lambda step: latents.append(step.x.dtype))
    assert set(latents) == {torch.float32} and len(latents) == REQUEST.steps
    exact = generate(REQUEST, model).images[0]
    difference = psnr(result.images[0], exact)
    assert 30 < difference < float("inf")    # close, but not the same computation


def test_the_denoiser_converts_at_the_unet_boundary_only_when_asked():
    seen = []

    def unet(x, t, context, y=None):
        seen.append(x.dtype)
        return torch.zeros_like(x)

    cond = Conditioning(torch.zeros(1, 77, 8))
    x = torch.randn(1, 4, 8, 8)
    out = Denoiser(unet, "epsilon", network_dtype=torch.bfloat16)(x, 1.0, cond)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    Denoiser(unet, "epsilon")(x, 1.0, cond)
    assert seen[-1] == torch.float32


def test_choices_and_their_sampling_dtypes():
    assert precision_dtype("bfloat16") == torch.bfloat16 and precision_dtype("float32") == torch.float32
    with pytest.raises(LatentDeskError, match="precision must be one of float32, bfloat16"):
        precision_dtype("int8")
    assert sampling_dtype(torch.bfloat16) == torch.float32
    assert sampling_dtype(torch.float16) == torch.float16 and sampling_dtype(torch.float32) == torch.float32


def test_infotext_names_the_precision_only_when_it_is_not_exact():
    assert "Precision" not in to_infotext(REQUEST, "m", None, None)
    assert "Precision: bfloat16" in to_infotext(REQUEST, "m", None, None, precision="bfloat16")


def test_cli_generates_in_bfloat16_and_records_it(tiny_file, tmp_path):
    out = tmp_path / "half.png"
    assert main(["generate", "--model", str(tiny_file), "--prompt", "a red circle", "--steps", "3", "--seed", "1",
                 "--width", "64", "--height", "64", "--precision", "bfloat16", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert "Precision: bfloat16" in image.text["parameters"]
        assert np.asarray(image).std() > 0
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--precision", "fp8", "--out", str(tmp_path / "x.png")])


# -- bfloat16 where it pays (issue 22) --------------------------------------------------------------

def test_automatic_precision_is_bf16_only_for_full_size_models_on_a_cpu_where_it_pays(monkeypatch):
    import core.precision as precision
    full_size, small = 4 << 30, 70 << 20        # SD1.5's networks in float32; the built-in model's
    monkeypatch.setattr(precision, "bf16_pays", lambda: True)
    assert precision.automatic_precision(full_size) == "bfloat16"
    assert precision.automatic_precision(small) == "float32"
    assert precision.automatic_precision(full_size, "cuda") == "float32"
    monkeypatch.setattr(precision, "bf16_pays", lambda: False)
    assert precision.automatic_precision(full_size) == "float32"


def test_bf16_pays_follows_the_cpu_flags_and_the_probe(monkeypatch):
    import core.precision as precision
    precision.bf16_pays.cache_clear()
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"sse4_2", "avx2"})      # no bfloat16 units
    assert precision.bf16_pays() is False
    precision.bf16_pays.cache_clear()
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"amx_bf16"})
    monkeypatch.setattr(precision, "_probe_seconds", lambda dtype: 1.0)           # units, but no faster
    assert precision.bf16_pays() is False
    precision.bf16_pays.cache_clear()
    monkeypatch.setattr(precision, "_probe_seconds", lambda dtype: 0.2 if dtype == torch.bfloat16 else 1.0)
    assert precision.bf16_pays() is True
    precision.bf16_pays.cache_clear()


def test_the_cli_and_window_keep_small_models_exact_under_auto(tiny_file):
    from app.cli.commands import chosen_precision
    from app.models import resolve_precision
    from app.widgets.speedups import AUTO
    from core.precision import AUTO as ENGINE_AUTO
    assert AUTO == ENGINE_AUTO
    assert resolve_precision(tiny_file, "auto") == chosen_precision(str(tiny_file), "auto") == "float32"
    assert resolve_precision(tiny_file, "bfloat16") == "bfloat16"      # a choice stays a choice


def test_training_autocasts_to_bf16_on_gpus_and_on_cpus_where_it_pays(monkeypatch):
    import core.precision as precision
    monkeypatch.setattr(precision, "bf16_pays", lambda: False)
    assert precision.autocast_pays(torch.device("cpu")) is False
    assert precision.autocast_pays(torch.device("cuda")) is True
    monkeypatch.setattr(precision, "bf16_pays", lambda: True)
    assert precision.autocast_pays(torch.device("cpu")) is True
