"""Acceptance: models loaded by our loaders compute what diffusers computes from the same files.

Two routes per family, fp32 compute, random weights:
  (a) a diffusers folder, written by diffusers, read by `load_model` and by diffusers' `from_pretrained`;
  (b) a single original-layout `.safetensors`, read by `load_model` and by diffusers' own
      `from_single_file` converters (the independent route).
Criterion: max |ours - reference| <= 1e-4 * max |reference| for every output.
"""

from __future__ import annotations

import pytest
import torch

from core.loading.checkpoint import load_model
from core.nets.unet import sdxl_added_condition
from tests.tiny_models import TEXT_PROJECTION, write_diffusers_folder, write_single_file

TOLERANCE = 1e-4
PROMPTS = ["a large red star in the top left corner on a yellow background", ""]
CASES = {  # name: (family, prediction, stored dtype of the single file)
    "sd1": ("sd1", "epsilon", torch.float32),
    "sd1-fp16-file": ("sd1", "epsilon", torch.float16),
    "sd1-bf16-file": ("sd1", "epsilon", torch.bfloat16),
    "sd2-eps": ("sd2", "epsilon", torch.float32),
    "sd2-v": ("sd2", "v", torch.float32),
    "sdxl": ("sdxl", "epsilon", torch.float32),
}


def relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def reference_prompt_embeddings(pipe, family: str):
    with torch.no_grad():
        if family == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            return embeds, pooled
        embeds, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
        return embeds, None


def compare(model, pipe, family: str) -> dict[str, float]:
    """Every network's outputs, ours against diffusers', on the same random inputs."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10.0, 700.0])
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    diffs = {}
    with torch.no_grad():
        kwargs, y = {}, None
        if family == "sdxl":
            pooled = torch.randn(2, TEXT_PROJECTION, generator=g)
            time_ids = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0], [64.0, 48.0, 8.0, 4.0, 32.0, 32.0]])
            kwargs = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
            y = sdxl_added_condition(pooled, time_ids)
        diffs["unet"] = relative(model.unet(x, t, context, y), pipe.unet(x, t, context, **kwargs).sample)

        image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
        ours_posterior, ref_posterior = model.vae.encode(image), pipe.vae.encode(image).latent_dist
        diffs["vae encode mean"] = relative(ours_posterior.mean, ref_posterior.mean)
        diffs["vae encode std"] = relative(ours_posterior.std, ref_posterior.std)
        z = torch.randn(1, 4, 16, 16, generator=g)
        diffs["vae decode"] = relative(model.vae.decode(z), pipe.vae.decode(z).sample)
        assert model.vae.config.scale_factor == pipe.vae.config.scaling_factor

        context, pooled = model.text_encoder.encode(PROMPTS)
        ref_context, ref_pooled = reference_prompt_embeddings(pipe, family)
        diffs["text context"] = relative(context, ref_context)
        if family == "sdxl":
            diffs["text pooled"] = relative(pooled, ref_pooled)
    return diffs


FOLDERS: dict = {}
FOLDER_CASES = [name for name, (_, _, stored) in CASES.items() if stored == torch.float32]


def diffusers_folder(name: str, tmp_path_factory):
    """One folder per family and prediction type, shared by the tests that need it."""
    family, prediction, _ = CASES[name]
    if (family, prediction) not in FOLDERS:
        FOLDERS[family, prediction] = write_diffusers_folder(
            family, tmp_path_factory.mktemp(f"{family}-{prediction}") / "diffusers", seed=3,
            prediction="v_prediction" if prediction == "v" else "epsilon")
    return FOLDERS[family, prediction]


@pytest.mark.parametrize("name", FOLDER_CASES)
def test_diffusers_folder_matches_diffusers(name, tmp_path_factory):
    family, prediction, _ = CASES[name]
    folder = diffusers_folder(name, tmp_path_factory)
    model = load_model(folder)
    pipe = pipeline_class(family).from_pretrained(folder, local_files_only=True)
    diffs = compare(model, pipe, family)
    print(f"\n[parity] {name} diffusers-folder {diffs}")
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert model.family.name == family
    assert (model.prediction, model.prediction_source) == (prediction, "scheduler config (prediction_type)")


@pytest.mark.parametrize("name", list(CASES))
def test_single_file_matches_diffusers_converters(name, tmp_path_factory):
    family, prediction, stored = CASES[name]
    metadata = {"modelspec.prediction_type": prediction} if prediction == "v" else None
    single_file = write_single_file(family, tmp_path_factory.mktemp(name) / "model.safetensors", seed=5,
                                    dtype=stored, metadata=metadata)
    model = load_model(single_file)
    # diffusers converts the original layout itself; the folder only lends it the architecture's config.
    pipe = pipeline_class(family).from_single_file(str(single_file), config=str(diffusers_folder(name, tmp_path_factory)),
                                                   local_files_only=True, torch_dtype=torch.float32)
    diffs = compare(model, pipe, family)
    print(f"\n[parity] {name} single-file {diffs}")
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert model.family.name == family and model.dtype == torch.float32
    if prediction == "v":
        assert (model.prediction, model.prediction_source) == ("v", "file metadata (modelspec.prediction_type)")
    elif family == "sd2":
        assert model.prediction_source == "one-step probe"
    else:
        assert model.prediction == "epsilon"


@pytest.mark.parametrize("name", ["sd1", "sd2-v"])
def test_user_override_beats_every_signal(name, tmp_path_factory):
    prediction = CASES[name][1]
    other = "epsilon" if prediction == "v" else "v"
    model = load_model(diffusers_folder(name, tmp_path_factory), prediction=other)
    assert (model.prediction, model.prediction_source) == (other, "set by user")
