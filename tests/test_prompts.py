"""Prompt emphasis, chunking and weighted encoding, checked against A1111's behaviour.

Expected emphasis lists come from A1111's own doctests (`modules/prompt_parser.py`)
where it has them; the chunk rules from `modules/sd_hijack_clip.py`. Encoding runs
on tiny random CLIPs (width 64/96, 2 layers) with the real vocabulary and tokenizer.
"""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from core.families import SD1, SD2, SDXL
from core.text.encoder import TextEncoder
from core.text.prompts import (
    BREAK,
    EMPTY_CHUNK,
    ROUND,
    SQUARE,
    encode_pair,
    encode_prompt,
    parse_emphasis,
    prompt_chunks,
)
from core.text.tokenizer import ClipTokenizer

CAT, DOG, BIRD, COMMA = 2368, 1929, 3329, 267      # one token each in CLIP's vocabulary
BOS, EOS = 49406, 49407

EMPHASIS_CASES = [
    # A1111's doctests
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    # nesting multiplies, innermost bracket first
    ("((a))", [("a", 1.0 * ROUND * ROUND)]),
    ("[[a]]", [("a", 1.0 * SQUARE * SQUARE)]),
    ("([a])", [("a", 1.0 * SQUARE * ROUND)]),
    ("([a])b", [("ab", 1.0)]),                            # 1/1.1 * 1.1 is exactly 1.0, so the runs merge
    ("((a:1.5))", [("a", 1.5 * ROUND)]),
    ("(a (b:2) c)", [("a ", 1.1), ("b", 2.0 * 1.1), (" c", 1.1)]),
    # explicit weights
    ("(a:1.3)", [("a", 1.3)]),
    ("(word: 1.5 )", [("word", 1.5)]),
    ("(a:0)", [("a", 0.0)]),
    ("(a:-1)", [("a", -1.0)]),
    ("(a:.5)", [("a", 0.5)]),
    # escapes
    ("\\(a\\)", [("(a)", 1.0)]),
    ("\\((a)\\)", [("(", 1.0), ("a", 1.1), (")", 1.0)]),
    ("a \\[b\\] c", [("a [b] c", 1.0)]),
    ("back\\\\slash", [("back\\slash", 1.0)]),
    ("lone\\backslash", [("lonebackslash", 1.0)]),        # A1111 drops a backslash that escapes nothing
    # unbalanced brackets
    ("a)", [("a)", 1.0)]),
    ("a]", [("a]", 1.0)]),
    ("[a", [("a", SQUARE)]),
    ("((a)", [("a", 1.0 * ROUND * ROUND)]),
    ("(a]", [("a]", 1.1)]),
    ("[a)", [("a)", SQUARE)]),
    ("a:1.2) b", [("a:1.2) b", 1.0)]),                   # ":w)" closes nothing without an open "("
    ("(a:1.2.3)", [("a:1.2.3)", 1.1)]),                  # A1111 raises here; we keep it as text
    ("x (y [z", [("x ", 1.0), ("y ", 1.1), ("z", 1.0 * ROUND * SQUARE)]),
    # colons that are not weights
    ("a: b", [("a: b", 1.0)]),
    ("(a: b)", [("a: b", 1.1)]),
    # BREAK
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), BREAK, BREAK, ("b", 1.0)]),
    ("BREAK", [BREAK]),
    ("BREAK a", [BREAK, ("a", 1.0)]),
    ("aBREAK break", [("aBREAK break", 1.0)]),             # a word of its own, upper case
    ("(a BREAK b)", [("a", 1.1), BREAK, ("b", 1.1)]),     # A1111 would weigh the marker into the word "break"
    # empty
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    ("(a)()(b)", [("ab", 1.1)]),
]


@pytest.mark.parametrize(("text", "expected"), EMPHASIS_CASES, ids=[c[0] or "empty" for c in EMPHASIS_CASES])
def test_parse_emphasis(text, expected):
    assert parse_emphasis(text) == expected


# -- chunks ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


def test_short_prompt_is_one_chunk_with_token_weights(tokenizer):
    [chunk] = prompt_chunks(tokenizer, "cat (dog:1.3) [bird]")
    assert chunk.tokens == (CAT, DOG, BIRD)
    assert chunk.weights == (1.0, 1.3, SQUARE)
    assert chunk.ids(tokenizer, EOS) == [BOS, CAT, DOG, BIRD] + [EOS] * 73
    assert chunk.ids(tokenizer, 0) == [BOS, CAT, DOG, BIRD, EOS] + [0] * 72      # SD2/SDXL-bigG padding
    assert chunk.multipliers() == [1.0, 1.0, 1.3, SQUARE] + [1.0] * 73


def test_each_emphasis_run_is_tokenized_on_its_own(tokenizer):
    # As in A1111: "cat(dog)" is the two words cat + dog, not the one word "catdog".
    [chunk] = prompt_chunks(tokenizer, "cat(dog)")
    assert chunk.tokens == (CAT, DOG) != tuple(tokenizer.encode("catdog"))
    assert chunk.weights == (1.0, 1.1)


def test_empty_prompt_is_one_chunk_of_bos_eos_padding(tokenizer):
    assert prompt_chunks(tokenizer, "") == [EMPTY_CHUNK]
    assert EMPTY_CHUNK.ids(tokenizer, EOS) == tokenizer("", EOS)
    assert EMPTY_CHUNK.ids(tokenizer, 0) == tokenizer("", 0)
    assert EMPTY_CHUNK.multipliers() == [1.0] * 77


@pytest.mark.parametrize(("count", "sizes"), [(75, [75]), (76, [75, 1]), (80, [75, 5]), (150, [75, 75]),
                                               (151, [75, 75, 1])])
def test_chunks_of_75_tokens(tokenizer, count, sizes):
    chunks = prompt_chunks(tokenizer, "cat " * count)
    assert [len(c.tokens) for c in chunks] == sizes
    assert all(c.tokens == (CAT,) * len(c.tokens) for c in chunks)
    assert all(len(c.ids(tokenizer, EOS)) == 77 and len(c.multipliers()) == 77 for c in chunks)


def test_weights_follow_their_tokens_across_chunks(tokenizer):
    first, second = prompt_chunks(tokenizer, "(cat:1.5) " * 80)
    assert first.multipliers() == [1.0] + [1.5] * 75 + [1.0]
    assert second.multipliers() == [1.0] + [1.5] * 5 + [1.0] * 71


def test_comma_in_last_20_tokens_moves_the_rest_to_the_next_chunk(tokenizer):
    # 70 cats, a comma at position 70, then 10 dogs: the 76th token finds the comma 5 back.
    first, second = prompt_chunks(tokenizer, "cat " * 70 + ", " + "(dog:1.2) " * 10)
    assert first.tokens == (CAT,) * 70 + (COMMA,)
    assert first.weights == (1.0,) * 71
    assert second.tokens == (DOG,) * 10
    assert second.weights == (1.2,) * 10


@pytest.mark.parametrize(("cats", "backtracks"), [(55, True), (54, False), (74, True)])
def test_comma_backtrack_window_is_20_tokens(tokenizer, cats, backtracks):
    first, second = prompt_chunks(tokenizer, "cat " * cats + ", " + "dog " * 30)
    if backtracks:      # the comma at index `cats` is within 75 - 20 of the end: the chunk ends after it
        assert first.tokens == (CAT,) * cats + (COMMA,)
        assert second.tokens == (DOG,) * 30
    else:
        assert first.tokens == (CAT,) * cats + (COMMA,) + (DOG,) * (74 - cats)
        assert second.tokens == (DOG,) * (30 - (74 - cats))


def test_no_backtrack_without_comma_or_when_the_comma_would_start_the_next_chunk(tokenizer):
    first, second = prompt_chunks(tokenizer, "cat " * 75 + ", dog")
    assert first.tokens == (CAT,) * 75
    assert second.tokens == (COMMA, DOG)


def test_break_starts_a_new_chunk(tokenizer):
    chunks = prompt_chunks(tokenizer, "cat BREAK dog")
    assert [c.tokens for c in chunks] == [(CAT,), (DOG,)]
    assert [c.tokens for c in prompt_chunks(tokenizer, "cat BREAK")] == [(CAT,)]
    assert [c.tokens for c in prompt_chunks(tokenizer, "BREAK cat")] == [(), (CAT,)]
    assert [c.tokens for c in prompt_chunks(tokenizer, "cat BREAK BREAK dog")] == [(CAT,), (), (DOG,)]
    long = prompt_chunks(tokenizer, "cat " * 80 + "BREAK dog")
    assert [len(c.tokens) for c in long] == [75, 5, 1]


# -- encoding ----------------------------------------------------------------------------------------

def tiny_clip(width: int, *, pooled: bool = False, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                            num_attention_heads=1, max_position_embeddings=77, projection_dim=32,
                            hidden_act="quick_gelu", bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1)
    model = (CLIPTextModelWithProjection if pooled else CLIPTextModel)(config)
    with torch.no_grad():      # LayerNorms as initialised (weight 1, bias 0) would give a context of mean ~0
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def sd1(tokenizer) -> TextEncoder:
    return TextEncoder([tiny_clip(64)], SD1.text_encoders, tokenizer)


@pytest.fixture(scope="module")
def sd2(tokenizer) -> TextEncoder:
    return TextEncoder([tiny_clip(64, seed=1)], SD2.text_encoders, tokenizer)


@pytest.fixture(scope="module")
def sdxl(tokenizer) -> TextEncoder:
    # SDXL conditions on the penultimate layer, so clip skip 2 needs a third
    encoders = [tiny_clip(64, seed=2, layers=3), tiny_clip(96, pooled=True, seed=3, layers=3)]
    return TextEncoder(encoders, SDXL.text_encoders, tokenizer)


@pytest.mark.parametrize("prompt", ["a photo of a cat", "", "a photo: of, a cat", "cat " * 75])
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_without_emphasis_equals_plain_encode(sd1, sd2, sdxl, prompt, clip_skip):
    for encoder in (sd1, sd2, sdxl):
        context, pooled = encoder.encode(prompt, clip_skip)
        ours = encode_prompt(encoder, prompt, clip_skip)
        assert torch.equal(ours.context, context)
        assert ours.chunks == 1
        assert (ours.pooled is None) == (pooled is None)
        if pooled is not None:
            assert torch.equal(ours.pooled, pooled)


def test_weighted_token_hidden_state_is_scaled_then_mean_restored(sd1):
    plain = sd1.encode("a cat photo")[0]                      # the same tokens: a, cat, photo
    weighted = encode_prompt(sd1, "a (cat:1.5) photo").context
    # Every position is scaled by its weight and one common factor c (the mean restoration).
    c = weighted[0, 1] / plain[0, 1]                           # "a": weight 1
    torch.testing.assert_close(weighted[0, 2] / plain[0, 2], 1.5 * c, rtol=1e-5, atol=0)
    torch.testing.assert_close(weighted[0, 40] / plain[0, 40], c, rtol=1e-5, atol=0)     # padding: weight 1
    assert not torch.allclose(c, torch.ones_like(c))
    # c is what A1111 computes: the mean before weighting over the mean after.
    multipliers = torch.ones(1, 77, 1)
    multipliers[0, 2] = 1.5
    expected_c = plain.mean() / (plain * multipliers).mean()
    torch.testing.assert_close(c, expected_c.expand_as(c), rtol=1e-5, atol=0)
    torch.testing.assert_close(weighted.mean(), plain.mean(), rtol=1e-5, atol=1e-7)


def test_sdxl_mean_is_restored_per_encoder(sdxl):
    plain, _ = sdxl.encode("a cat photo")
    weighted = encode_prompt(sdxl, "a (cat:1.5) [photo]")
    for part_w, part_p in zip(weighted.context.split([64, 96], -1), plain.split([64, 96], -1), strict=True):
        torch.testing.assert_close(part_w.mean(), part_p.mean(), rtol=1e-5, atol=1e-7)
        assert not torch.allclose(part_w, part_p)


def test_long_prompt_gives_one_77_token_context_per_chunk(sd1, sdxl):
    prompt = "cat " * 80
    for encoder, width in ((sd1, 64), (sdxl, 160)):
        emb = encode_prompt(encoder, prompt)
        assert emb.context.shape == (1, 154, width)
        assert emb.chunks == 2
        first, first_pooled = encoder.encode("cat " * 75)
        second, _ = encoder.encode("cat " * 5)
        torch.testing.assert_close(emb.context[:, :77], first, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(emb.context[:, 77:], second, rtol=1e-5, atol=1e-6)
        if first_pooled is not None:      # SDXL's pooled vector is the first chunk's
            torch.testing.assert_close(emb.pooled, first_pooled, rtol=1e-5, atol=1e-6)
    assert encode_prompt(sd1, "cat BREAK dog BREAK bird").context.shape == (1, 3 * 77, 64)


@pytest.mark.parametrize("long_side", ["prompt", "negative"])
def test_pair_pads_the_shorter_with_empty_chunks(sdxl, long_side):
    long, short = "cat, " * 60 + "dog " * 60, "ugly"
    prompt, negative = (long, short) if long_side == "prompt" else (short, long)
    cond, uncond = encode_pair(sdxl, prompt, negative)
    chunks = len(prompt_chunks(sdxl.tokenizer, long))
    assert chunks == 3
    assert cond.context.shape == uncond.context.shape == (1, 77 * chunks, 160)
    padded = uncond if long_side == "prompt" else cond
    empty, _ = sdxl.encode("")
    for i in (1, 2):
        torch.testing.assert_close(padded.context[:, 77 * i:77 * (i + 1)], empty, rtol=1e-5, atol=1e-6)
    short_alone = encode_prompt(sdxl, short)
    torch.testing.assert_close(padded.context[:, :77], short_alone.context, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded.pooled, short_alone.pooled, rtol=1e-5, atol=1e-6)
    assert torch.cat([cond.context, uncond.context]).shape == (2, 231, 160)   # batchable for CFG



def test_emphasis_survives_a_zero_mean_embedding():
    """A zero-bias final LayerNorm makes each chunk's mean 0; restoring the mean must not divide 0 by 0."""
    from core.text.prompts import _emphasize

    z = torch.randn(1, 77, 8)
    z = z - z.mean(dim=-1, keepdim=True)
    z[0, 0] -= z.mean() * 77 * 8   # the chunk's mean exactly 0
    for multipliers in (torch.ones(1, 77), torch.full((1, 77), 1.1)):
        assert torch.isfinite(_emphasize(z, multipliers)).all()
    assert torch.equal(_emphasize(z, torch.ones(1, 77)), z)
    assert torch.isfinite(_emphasize(torch.zeros(1, 77, 8), torch.full((1, 77), 1.3))).all()


def test_a_prompt_of_too_many_chunks_is_refused_before_it_is_encoded(tokenizer):
    """100 k characters of "BREAK " once made 16,667 chunks (7 GiB of SD1.5 context) without a word."""
    import time

    from core.errors import LatentDeskError
    from core.text.prompts import MAX_CHUNKS

    assert len(prompt_chunks(tokenizer, " BREAK ".join(["a red star"] * MAX_CHUNKS))) == MAX_CHUNKS
    started = time.perf_counter()
    with pytest.raises(LatentDeskError, match=f"at most {MAX_CHUNKS} chunks"):
        prompt_chunks(tokenizer, "BREAK " * 16_667)
    with pytest.raises(LatentDeskError, match="too long"):
        prompt_chunks(tokenizer, "word " * 100_000)
    assert time.perf_counter() - started < 10
