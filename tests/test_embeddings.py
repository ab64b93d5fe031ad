"""Textual-inversion embeddings: parity with diffusers' `load_textual_inversion`, A1111's chunk and
emphasis rules, the plain path untouched, and hostile files refused with a message naming the file.

diffusers is the oracle: the same tiny random CLIPs (tests/tiny_models) run in its pipelines' `encode_prompt`
after `load_textual_inversion` (SDXL: the clip_l and clip_g halves into text_encoder and text_encoder_2,
as diffusers' SDXL docs show), against ours after `set_embeddings`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import time

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from core.errors import LatentDeskError, ModelLoadError
from core.families import FAMILIES, SD1, SDXL
from core.loading.embedding_files import EmbeddingFile, fit_embedding, read_embedding_file
from core.text.embeddings import embeddings_used, set_embeddings
from core.text.encoder import TextEncoder, build_clip, clip_config_from_state_dict
from core.text.prompts import encode_pair, encode_prompt, prompt_chunks
from core.text.tokenizer import tokenizer_dir
from tests.tiny_models import clip_config, randomize

TOLERANCE = 1e-4
CAT = 2368


def relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def vectors(count: int, width: int, seed: int) -> torch.Tensor:
    # Token embeddings of the tiny CLIPs are ~0.02; larger vectors make the substitution plainly visible.
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def write(path, tensors: dict[str, torch.Tensor]):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


# -- the models: diffusers' pipeline and ours on the same weights ----------------------------------------------

def hf_tokenizer(pad_id: int) -> CLIPTokenizer:
    return CLIPTokenizer(str(tokenizer_dir() / "vocab.json"), str(tokenizer_dir() / "merges.txt"),
                         pad_token="<|endoftext|>" if pad_id == 49407 else "!", model_max_length=77)


def reference_encoders(family: str, seed: int) -> list:
    return [randomize((CLIPTextModelWithProjection if spec.pooled else CLIPTextModel)(clip_config(family, i)),
                      seed + i).eval()
            for i, spec in enumerate(FAMILIES[family].text_encoders)]


def ours_from(family: str, encoders: list) -> TextEncoder:
    """Our TextEncoder from copies of the same weights (diffusers resizes its own in place)."""
    states = [{k: v.clone() for k, v in model.state_dict().items()} for model in encoders]
    return TextEncoder.from_state_dicts(FAMILIES[family].text_encoders, states, trimmed=True)


def sd1_pipeline(encoders):
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline(vae=None, text_encoder=encoders[0], tokenizer=hf_tokenizer(SD1.text_encoders[0].pad_id),
                                   unet=None, scheduler=None, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sdxl_pipeline(encoders):
    from diffusers import StableDiffusionXLPipeline
    first, second = SDXL.text_encoders
    return StableDiffusionXLPipeline(vae=None, unet=None, scheduler=None, text_encoder=encoders[0],
                                     text_encoder_2=encoders[1], tokenizer=hf_tokenizer(first.pad_id),
                                     tokenizer_2=hf_tokenizer(second.pad_id), add_watermarker=False)


# -- parity with diffusers ------------------------------------------------------------------------------------

SD1_FORMS = {
    # format written, its tensors for n vectors of width w
    "emb_params": lambda v: {"emb_params": v},
    "string_to_param": lambda v: {"string_to_param.*": v},
    "diffusers": lambda v: {"<zq-concept>": v[0] if v.shape[0] == 1 else v},   # one vector: stored 1-D
}
FORMAT_NAMES = {"emb_params": "A1111 emb_params", "string_to_param": "A1111 string_to_param",
                "diffusers": "diffusers"}


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("form", list(SD1_FORMS))
def test_sd1_matches_diffusers_load_textual_inversion(tmp_path, form, count):
    encoders = reference_encoders("sd1", seed=5)
    ours = ours_from("sd1", encoders)
    width = encoders[0].config.hidden_size
    style = write(tmp_path / "zqstyle.safetensors", SD1_FORMS[form](vectors(count, width, seed=1)))
    negative = write(tmp_path / "zqneg.safetensors", {"emb_params": vectors(2, width, seed=2)})

    pipe = sd1_pipeline(encoders)
    for path in (style, negative):
        pipe.load_textual_inversion(str(path), token=path.stem)
    files = [read_embedding_file(style), read_embedding_file(negative)]
    assert files[0].format == FORMAT_NAMES[form] and files[0].count == count and files[0].name == "zqstyle"
    set_embeddings(ours, [fit_embedding(f, ours) for f in files])

    prompt, negative_prompt = "a photo of zqstyle on a hill, sunset", "blurry, zqneg"
    with torch.no_grad():
        ref, ref_negative = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative_prompt)
        cond, uncond = encode_pair(ours, prompt, negative_prompt)
        plain = encode_prompt(ours, "a photo of on a hill, sunset")
    print(f"\n[parity] TI sd1 {form} n={count}: {relative(cond.context, ref):.2e} "
          f"negative {relative(uncond.context, ref_negative):.2e}")
    assert relative(cond.context, ref) <= TOLERANCE
    assert relative(uncond.context, ref_negative) <= TOLERANCE
    assert embeddings_used(ours, prompt, negative_prompt) == ["zqstyle", "zqneg"]
    assert not torch.allclose(cond.context[:, 5:], plain.context[:, 5:], atol=1e-3)   # the vectors did something


@pytest.mark.parametrize("count", [1, 3])
def test_sdxl_matches_diffusers_load_textual_inversion(tmp_path, count):
    encoders = reference_encoders("sdxl", seed=7)
    ours = ours_from("sdxl", encoders)
    widths = [m.config.hidden_size for m in encoders]
    halves = {"zqstyle": {"clip_l": vectors(count, widths[0], 3), "clip_g": vectors(count, widths[1], 4)},
              "zqneg": {"clip_l": vectors(2, widths[0], 5), "clip_g": vectors(2, widths[1], 6)}}

    pipe = sdxl_pipeline(encoders)
    embeddings = []
    for name, state in halves.items():
        path = write(tmp_path / f"{name}.safetensors", state)
        tokens = [name] + [f"{name}_{i}" for i in range(1, state["clip_l"].shape[0])]
        pipe.load_textual_inversion(state["clip_l"], token=tokens, text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(state["clip_g"], token=tokens, text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
        file = read_embedding_file(path)
        assert file.format == "SDXL pair" and list(file.vectors) == ["clip_l", "clip_g"]
        embeddings.append(fit_embedding(file, ours))
    set_embeddings(ours, embeddings)

    prompt, negative_prompt = "a zqstyle photo of a red star", "zqneg, blurry"
    with torch.no_grad():
        ref, ref_negative, ref_pooled, ref_negative_pooled = pipe.encode_prompt(
            prompt, device="cpu", do_classifier_free_guidance=True, negative_prompt=negative_prompt)
        cond, uncond = encode_pair(ours, prompt, negative_prompt)
        plain = encode_prompt(ours, "a photo of a red star")
    assert not torch.allclose(cond.pooled, plain.pooled, atol=1e-3)      # the vectors did something
    print(f"\n[parity] TI sdxl n={count}: context {relative(cond.context, ref):.2e} "
          f"pooled {relative(cond.pooled, ref_pooled):.2e} negative {relative(uncond.context, ref_negative):.2e} "
          f"{relative(uncond.pooled, ref_negative_pooled):.2e}")
    assert relative(cond.context, ref) <= TOLERANCE
    assert relative(cond.pooled, ref_pooled) <= TOLERANCE
    assert relative(uncond.context, ref_negative) <= TOLERANCE
    assert relative(uncond.pooled, ref_negative_pooled) <= TOLERANCE


# -- A1111's rules: chunks and emphasis ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1() -> TextEncoder:
    return ours_from("sd1", reference_encoders("sd1", seed=11))


def embedding_for(text_encoder: TextEncoder, tmp_path, name: str, count: int, seed: int = 0):
    width = text_encoder.models[0].config.hidden_size
    return fit_embedding(read_embedding_file(write(tmp_path / f"{name}.safetensors",
                                                   {"emb_params": vectors(count, width, seed)})), text_encoder)


def test_a_multi_vector_name_takes_n_places_and_is_never_split(sd1, tmp_path):
    set_embeddings(sd1, [embedding_for(sd1, tmp_path, "zqstyle", 3)])
    try:
        words = sd1.added_words
        reserved = words.reserved[0]
        assert len(reserved) == 3 and min(reserved) >= sd1.tokenizer.vocab_size
        # 72 cats + 3 vectors fill one chunk exactly; after 73 cats the 3 vectors start the next (A1111's tokenize_line).
        [full] = prompt_chunks(sd1.tokenizer, "cat " * 72 + "zqstyle", words)
        assert full.tokens == (CAT,) * 72 + reserved
        first, second = prompt_chunks(sd1.tokenizer, "cat " * 73 + "zqstyle cat", words)
        assert first.tokens == (CAT,) * 73 and second.tokens == (*reserved, CAT)
        # The name is matched by its tokens, inside any emphasis run, and takes that run's weight.
        [chunk] = prompt_chunks(sd1.tokenizer, "cat, (zqstyle:1.3)", words)
        assert chunk.tokens == (CAT, 267, *reserved) and chunk.weights == (1.0, 1.0, 1.3, 1.3, 1.3)
    finally:
        set_embeddings(sd1, [])


def test_emphasis_weighs_the_embedding_positions_like_a1111(sd1, tmp_path):
    set_embeddings(sd1, [embedding_for(sd1, tmp_path, "zqstyle", 2)])
    try:
        plain = encode_prompt(sd1, "a zqstyle photo").context
        weighted = encode_prompt(sd1, "a (zqstyle:1.3) photo").context
    finally:
        set_embeddings(sd1, [])
    # A1111's "Original" emphasis, computed here: scale the two vector positions (2 and 3), restore the mean.
    multipliers = torch.ones(1, 77, 1)
    multipliers[0, 2:4] = 1.3
    expected = plain * multipliers * (plain.mean() / (plain * multipliers).mean())
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-6)


def test_longest_name_wins_where_two_start_alike(sd1, tmp_path):
    short, long = embedding_for(sd1, tmp_path, "zq", 1, seed=1), embedding_for(sd1, tmp_path, "zq-style", 2, seed=2)
    set_embeddings(sd1, [short, long])
    try:
        words = sd1.added_words
        [chunk] = prompt_chunks(sd1.tokenizer, "zq-style zq", words)
        assert chunk.tokens == words.reserved[1] + words.reserved[0]
        assert embeddings_used(sd1, "zq and a cat") == ["zq"]
    finally:
        set_embeddings(sd1, [])


def test_prompts_without_the_name_are_bit_identical_and_clearing_restores_everything(sd1, tmp_path):
    files = [tokenizer_dir() / "vocab.json", tokenizer_dir() / "merges.txt"]
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    prompts = ["a photo of a cat", "(red:1.2) star, " * 30, "zqstyle on a hill"]
    before = [encode_prompt(sd1, p).context for p in prompts]
    embedding = embedding_for(sd1, tmp_path, "zqstyle", 3)

    set_embeddings(sd1, [embedding])
    during = [encode_prompt(sd1, p).context for p in prompts]
    token_embedding = getattr(sd1.models[0], "text_model", sd1.models[0]).embeddings.token_embedding
    assert not token_embedding._forward_hooks            # the substitution lives only during a call
    set_embeddings(sd1, [])
    after = [encode_prompt(sd1, p).context for p in prompts]

    assert torch.equal(during[0], before[0]) and torch.equal(during[1], before[1])
    assert not torch.equal(during[2], before[2])
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert sd1.added_words is None and sd1.tokenizer.vocab_size == 49408
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == digests


def test_embeddings_work_on_a_bf16_text_encoder(sd1, tmp_path):
    embedding = embedding_for(sd1, tmp_path, "zqstyle", 2)
    half = copy.deepcopy(sd1).to(torch.bfloat16)
    set_embeddings(sd1, [embedding])
    set_embeddings(half, [embedding])
    try:
        full_context = encode_prompt(sd1, "a zqstyle photo").context
        half_context = encode_prompt(half, "a zqstyle photo").context
    finally:
        set_embeddings(sd1, [])
    assert half_context.dtype == torch.bfloat16
    assert relative(half_context.float(), full_context) < 0.05


# -- what does not fit, and hostile files ----------------------------------------------------------------------

def meta_text_encoder(family: str) -> TextEncoder:
    """A text encoder of the released widths (768, 1280), on the meta device: shapes only."""
    models = []
    for i, spec in enumerate(FAMILIES[family].text_encoders):
        width = {0: 768, 1: 1280}[i] if family == "sdxl" else {"sd1": 768, "sd2": 1024}[family]
        config = clip_config_from_state_dict({
            "text_model.embeddings.token_embedding.weight": torch.empty(49408, width, device="meta"),
            "text_model.embeddings.position_embedding.weight": torch.empty(77, width, device="meta"),
            "text_model.encoder.layers.0.mlp.fc1.weight": torch.empty(4 * width, width, device="meta")},
            openclip=spec.layout == "openclip")
        models.append(build_clip(config, with_projection=spec.pooled))
    return TextEncoder(models, FAMILIES[family].text_encoders)


@pytest.mark.parametrize(("file_widths", "family", "says"), [
    ({"clip_l": 768}, "sdxl", ["768 wide (Stable Diffusion 1.x)", "768 + 1280 wide (Stable Diffusion XL)"]),
    ({"clip_l": 768, "clip_g": 1280}, "sd1", ["768 + 1280 wide (Stable Diffusion XL)", "768 wide (Stable Diffusion 1.x)"]),
    ({"clip_h": 1024}, "sd1", ["1024 wide (Stable Diffusion 2.x)", "768 wide (Stable Diffusion 1.x)"]),
    ({"clip_g": 1280}, "sdxl", ["1280 wide", "768 + 1280 wide (Stable Diffusion XL)"]),
])
def test_an_embedding_for_another_family_is_refused_naming_both(tmp_path, file_widths, family, says):
    path = tmp_path / "someone.safetensors"
    file = EmbeddingFile(path, {k: torch.zeros(1, w) for k, w in file_widths.items()}, "A1111 emb_params")
    with pytest.raises(ModelLoadError) as caught:
        fit_embedding(file, meta_text_encoder(family))
    assert str(path) in str(caught.value)
    for text in says:
        assert text in str(caught.value)


def test_sd1_sd2_and_sdxl_files_fit_their_own_family(tmp_path):
    for family, tensors in [("sd1", {"emb_params": torch.zeros(2, 768)}), ("sd2", {"emb_params": torch.zeros(1, 1024)}),
                            ("sdxl", {"clip_g": torch.zeros(4, 1280), "clip_l": torch.zeros(4, 768)})]:
        file = read_embedding_file(write(tmp_path / f"{family}.safetensors", tensors))
        assert file.family == family
        embedding = fit_embedding(file, meta_text_encoder(family))
        assert [v.shape[1] for v in embedding.vectors] == [m.config.hidden_size for m in meta_text_encoder(family).models]


def test_a_width_no_encoder_has_is_refused(sd1, tmp_path):
    path = write(tmp_path / "odd.safetensors", {"emb_params": torch.zeros(1, 100)})
    with pytest.raises(ModelLoadError, match="100 wide.*64 wide") as caught:
        fit_embedding(read_embedding_file(path), sd1)
    assert str(path) in str(caught.value)


def test_two_names_that_read_the_same_are_refused(sd1, tmp_path):
    a = embedding_for(sd1, tmp_path, "ZqStyle", 1)
    (tmp_path / "other").mkdir()
    b = embedding_for(sd1, tmp_path / "other", "zqstyle", 1)
    with pytest.raises(ModelLoadError, match="reads the same"):
        set_embeddings(sd1, [a, b])
    assert sd1.added_words is None


def test_an_embedding_fitted_to_another_model_is_refused(sd1, tmp_path):
    other = ours_from("sdxl", reference_encoders("sdxl", seed=1))
    pair = write(tmp_path / "pair.safetensors", {"clip_l": torch.zeros(1, 64), "clip_g": torch.zeros(1, 96)})
    with pytest.raises(LatentDeskError, match="another model"):
        set_embeddings(sd1, [fit_embedding(read_embedding_file(pair), other)])


def raw_file(path, header: dict, data: bytes = b"", size: int | None = None):
    """A .safetensors file written by hand; `size` makes it sparse (a huge file that takes no disk)."""
    encoded = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + data)
        if size is not None:
            f.truncate(8 + len(encoded) + size)
    return path


def nan_vector():
    v = torch.zeros(2, 64)
    v[1, 3] = float("nan")
    return v


HOSTILE = {
    "nan": (lambda p: write(p, {"emb_params": nan_vector()}), "NaN"),
    "inf": (lambda p: write(p, {"emb_params": torch.full((1, 64), float("inf"))}), "NaN or infinite"),
    "rank 3": (lambda p: write(p, {"emb_params": torch.zeros(1, 2, 64)}), "shape"),
    "rank 0": (lambda p: write(p, {"emb_params": torch.tensor(1.0)}), "shape"),
    "76 vectors": (lambda p: write(p, {"emb_params": torch.zeros(76, 64)}), "76 vectors"),
    "no vectors": (lambda p: write(p, {"emb_params": torch.zeros(0, 64)}), "0 vectors"),
    "zero wide": (lambda p: write(p, {"emb_params": torch.zeros(1, 0)}), "0 wide"),
    "too wide": (lambda p: write(p, {"emb_params": torch.zeros(1, 10_000)}), "10000 wide"),
    "integers": (lambda p: write(p, {"emb_params": torch.zeros(1, 64, dtype=torch.int32)}), "I32"),
    "empty file": (lambda p: p.write_bytes(b""), "0 bytes"),
    "no tensors": (lambda p: raw_file(p, {}), "no tensors"),
    "three tensors": (lambda p: write(p, {k: torch.zeros(1, 64) for k in "abc"}), "3 tensors"),
    "pair of unequal halves": (lambda p: write(p, {"clip_l": torch.zeros(2, 64), "clip_g": torch.zeros(3, 96)}),
                               "different numbers"),
    "pickle named safetensors": (lambda p: torch.save({"string_to_param": {"*": torch.zeros(1, 64)}}, p), "pickle"),
    # 10^6 vectors declared, 3 GB of (sparse) data: refused from the header, nothing read.
    "huge header shape": (lambda p: raw_file(p, {"emb_params": {"dtype": "F32", "shape": [10**6, 768],
                                                                "data_offsets": [0, 4 * 768 * 10**6]}},
                                             size=4 * 768 * 10**6), "1000000 vectors"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_refused_naming_the_file(tmp_path, case):
    make, says = HOSTILE[case]
    path = tmp_path / "hostile.safetensors"
    make(path)
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as caught:
        read_embedding_file(path)
    assert time.perf_counter() - started < 2
    assert str(path) in str(caught.value) and says in str(caught.value)


def test_a_pickle_is_refused_by_its_name_without_being_opened(tmp_path):
    path = tmp_path / "old.pt"
    path.write_bytes(b"\x80\x04 not even a real pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        read_embedding_file(path)
