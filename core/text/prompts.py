"""Prompt text -> weighted tokens -> 75-token chunks -> the UNet's context, as A1111 does it.

The de-facto prompt syntax is AUTOMATIC1111's (stable-diffusion-webui
`modules/prompt_parser.py` and `modules/sd_hijack_clip.py`); users paste prompts
between apps, so this follows it token for token:

- `(word)` multiplies the weight by 1.1, `[word]` divides it by 1.1, `(word:1.3)`
  sets a factor; nesting multiplies. `\\(` `\\)` `\\[` `\\]` `\\\\` are literal.
  An unmatched `)` or `]` is plain text; an unclosed `(` or `[` weighs to the end.
- `BREAK` (upper case, a word of its own) ends the current chunk.
- Any prompt length: tokens are cut into chunks of 75, each encoded on its own
  as BOS + 75 + EOS/padding = 77 ids, and the contexts are concatenated.
- Weights are applied A1111's "Original" way: multiply each token's hidden state,
  then rescale the chunk so its mean is what it was before weighting.
- A textual-inversion embedding's name (core.text.embeddings) is replaced by its n
  vectors, which take n of the chunk's 75 places and the name's weight; one that
  does not fit in what is left of a chunk starts the next.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.errors import LatentDeskError
from core.text.encoder import TextEncoder
from core.text.tokenizer import AddedWords, ClipTokenizer

ROUND = 1.1                # "(...)": A1111's attention multiplier
SQUARE = 1 / 1.1           # "[...]"
CHUNK_TOKENS = 75          # prompt tokens per chunk; BOS and EOS make 77
COMMA_BACKTRACK = 20       # A1111's default "comma_padding_backtrack"
# 2,400 tokens, far past what any model attends to usefully; without a bound 100 k characters of
# "BREAK " made 16,667 chunks (7 GiB of SD1.5 context) from one pasted or restored prompt.
MAX_CHUNKS = 32
BREAK = ("BREAK", -1.0)    # the marker parse_emphasis emits for the BREAK keyword (A1111's convention)

# One alternative per token of A1111's emphasis syntax, in its order of precedence: the escapes
# (\( \) \[ \] \\ and a lone backslash), the openers, ":weight)" closing a round bracket, the plain
# closers, runs of plain text, and a colon that closes nothing.
_EMPHASIS = re.compile(r"""
    \\[()\[\]\\]? | [(\[] | :\s*([+-]?[.\d]+)\s*\) | [)\]] | [^\\()\[\]:]+ | :
""", re.VERBOSE)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """A1111 emphasis syntax -> (text, weight) runs; `BREAK` appears as the `BREAK` marker.

    Adjacent runs of equal weight are merged (each run is tokenized on its own, so
    this matters for the tokens). The result is never empty: "" gives [("", 1.0)].
    >>> parse_emphasis("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")[1]
    ('house', 1.5730000000000004)
    """
    runs: list[list] = []          # [text, weight, is_break]
    round_open: list[int] = []     # index into runs where each open bracket began
    square_open: list[int] = []

    def weigh_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            if not run[2]:         # A1111 also multiplies its BREAK marker, turning it into the word "break"
                run[1] *= factor

    for match in _EMPHASIS.finditer(text):
        token, factor = match.group(0), _number(match.group(1))
        if token.startswith("\\"):
            runs.append([token[1:], 1.0, False])    # a lone backslash disappears, as in A1111
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif factor is not None and round_open:
            weigh_from(round_open.pop(), factor)
        elif token == ")" and round_open:
            weigh_from(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            weigh_from(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK_WORD.split(token)):
                if i:
                    runs.append([*BREAK, True])
                runs.append([part, 1.0, False])

    # Unclosed brackets weigh everything after them; round first, then square, as A1111 does.
    for start in round_open:
        weigh_from(start, ROUND)
    for start in square_open:
        weigh_from(start, SQUARE)

    merged: list[list] = []
    for run in runs:
        if not run[0]:
            continue
        if merged and not run[2] and not merged[-1][2] and merged[-1][1] == run[1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, w) for t, w, _ in merged] or [("", 1.0)]


def _number(text: str | None) -> float | None:
    """The weight in "(word:1.3)"; None when absent or not a number (A1111 crashes on "(word:1.2.3)")."""
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class PromptChunk:
    """Up to 75 prompt tokens and their weights, without BOS/EOS."""

    tokens: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()

    def ids(self, tokenizer: ClipTokenizer, pad_id: int) -> list[int]:
        """The 77 ids one encoder sees: BOS, the tokens, EOS, then `pad_id`."""
        return [tokenizer.bos_id, *self.tokens, tokenizer.eos_id] + [pad_id] * (CHUNK_TOKENS - len(self.tokens))

    def multipliers(self) -> list[float]:
        """One weight per id of `ids()`; BOS, EOS and padding weigh 1."""
        return [1.0, *self.weights] + [1.0] * (CHUNK_TOKENS + 1 - len(self.weights))


EMPTY_CHUNK = PromptChunk()


def prompt_chunks(tokenizer: ClipTokenizer, prompt: str, added: AddedWords | None = None) -> list[PromptChunk]:
    """A prompt's weighted tokens, cut into chunks as A1111's `tokenize_line` cuts them.

    A full chunk normally ends after its 75th token. If the token that would start the
    next chunk is not a comma, and a comma sits within the chunk's last 20 tokens, the
    chunk ends after that comma instead and the tokens after it move on, so a phrase
    is not split between two chunks. `BREAK` ends a chunk early (even an empty one).
    Where the tokens spell one of the `added` words, its reserved ids take their place,
    all in one chunk: a word longer than what is left of the chunk starts the next.
    """
    return chunk_prompt(tokenizer, prompt, added).chunks


@dataclass(frozen=True)
class ChunkedPrompt:
    """prompt_chunks' result, and for each token the word of the prompt it came from."""

    chunks: list[PromptChunk]
    origins: list[tuple[int, ...]]   # per chunk, per token: an index into `words`
    words: list[str]                 # the prompt's words as the tokenizer split them (an embedding: its name)


def chunk_prompt(tokenizer: ClipTokenizer, prompt: str, added: AddedWords | None = None) -> ChunkedPrompt:
    """prompt_chunks, keeping track of which typed word each token stands for (for attention maps)."""
    comma = tokenizer.encoder[",</w>"]
    chunks: list[PromptChunk] = []
    origins: list[tuple[int, ...]] = []
    words: list[str] = []
    tokens: list[int] = []
    weights: list[float] = []
    sources: list[int] = []
    last_comma = -1

    def close(keep: int = CHUNK_TOKENS) -> None:
        nonlocal tokens, weights, sources, last_comma
        if len(chunks) == MAX_CHUNKS:
            raise LatentDeskError(f"The prompt is too long: at most {MAX_CHUNKS} chunks of {CHUNK_TOKENS} tokens "
                                  f"({MAX_CHUNKS * CHUNK_TOKENS} tokens, BREAK starting a new chunk) can be used.")
        chunks.append(PromptChunk(tuple(tokens[:keep]), tuple(weights[:keep])))
        origins.append(tuple(sources[:keep]))
        tokens, weights, sources, last_comma = tokens[keep:], weights[keep:], sources[keep:], -1

    for text, weight in parse_emphasis(prompt):
        if (text, weight) == BREAK:
            close()
            continue
        ids: list[int] = []
        word_of: list[int] = []
        for word, word_ids in tokenizer.encode_words(text):
            word_of += [len(words)] * len(word_ids)
            words.append(word)
            ids += word_ids
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK_TOKENS and last_comma != -1 and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK:
                close(keep=last_comma + 1)
            if len(tokens) == CHUNK_TOKENS:
                close()
            word = added.match(ids, position) if added is not None else None
            if word is None:
                tokens.append(token)
                weights.append(weight)
                sources.append(word_of[position])
                position += 1
                continue
            reserved = added.reserved[word]
            if len(tokens) + len(reserved) > CHUNK_TOKENS:
                close()
            tokens.extend(reserved)
            weights.extend([weight] * len(reserved))
            sources.extend([word_of[position]] * len(reserved))
            words[word_of[position]] = added.names[word]     # the map is the embedding's, under its name
            position += len(added.spellings[word])
    if tokens or not chunks:
        close()
    return ChunkedPrompt(chunks, origins, words)


@dataclass(frozen=True)
class PromptEmbedding:
    """What the UNet is conditioned on for one prompt."""

    context: Tensor              # (1, 77 * chunks, D): the chunks' contexts side by side
    pooled: Tensor | None        # (1, P): SDXL's pooled vector of the first chunk; None for SD1/SD2

    @property
    def chunks(self) -> int:
        return self.context.shape[1] // (CHUNK_TOKENS + 2)


def encode_prompt(text_encoder: TextEncoder, prompt: str, clip_skip: int = 1) -> PromptEmbedding:
    """One prompt -> its weighted context (any length) and pooled vector.

    Without emphasis and within 75 tokens this equals `text_encoder.encode(prompt)` exactly.
    """
    return encode_chunks(text_encoder, prompt_chunks(text_encoder.tokenizer, prompt, text_encoder.added_words),
                         clip_skip)


def encode_pair(text_encoder: TextEncoder, prompt: str, negative: str,
                clip_skip: int = 1) -> tuple[PromptEmbedding, PromptEmbedding]:
    """(cond, uncond) with the same number of chunks, so classifier-free guidance can batch them.

    The shorter one is padded with empty-prompt chunks, as A1111's "pad prompt/negative
    prompt to be same length" does (its default instead runs two UNet passes).
    """
    cond = prompt_chunks(text_encoder.tokenizer, prompt, text_encoder.added_words)
    uncond = prompt_chunks(text_encoder.tokenizer, negative, text_encoder.added_words)
    count = max(len(cond), len(uncond))
    cond += [EMPTY_CHUNK] * (count - len(cond))
    uncond += [EMPTY_CHUNK] * (count - len(uncond))
    return encode_chunks(text_encoder, cond, clip_skip), encode_chunks(text_encoder, uncond, clip_skip)


def encode_chunks(text_encoder: TextEncoder, chunks: Sequence[PromptChunk], clip_skip: int = 1) -> PromptEmbedding:
    """Encode each chunk on its own (one batch), weight it, and lay the chunks side by side."""
    tokenizer = text_encoder.tokenizer
    device = text_encoder.models[0].device
    ids = [torch.tensor([chunk.ids(tokenizer, spec.pad_id) for chunk in chunks], device=device)
           for spec in text_encoder.specs]                                    # (k, 77) per encoder
    context, pooled = text_encoder(ids, clip_skip)                            # (k, 77, D), (k, P)
    multipliers = torch.tensor([chunk.multipliers() for chunk in chunks], dtype=context.dtype, device=device)
    # A1111 hooks each encoder separately (SDXL's two are two modules), so the mean is restored per encoder.
    widths = [model.config.hidden_size for model in text_encoder.models]
    context = torch.cat([_emphasize(part, multipliers) for part in context.split(widths, dim=-1)], dim=-1)
    first_pooled = pooled[:1] if pooled is not None else None
    return PromptEmbedding(context.reshape(1, -1, context.shape[-1]), first_pooled)


def _emphasize(z: Tensor, multipliers: Tensor) -> Tensor:
    """A1111's "Original" emphasis: z * weight per token, then restore each chunk's mean. z: (k, 77, C)."""
    if bool((multipliers == 1).all()):
        return z            # nothing to weight; and 0/0 below when a zero-bias final LayerNorm gives mean 0
    z = z.contiguous()      # a slice of SDXL's concatenation; the same layout as `weighted` sums the same way
    mean_before = z.mean(dim=(1, 2), keepdim=True)
    weighted = z * multipliers[..., None]
    mean_after = weighted.mean(dim=(1, 2), keepdim=True)
    return weighted * torch.where(mean_after == 0, 1.0, mean_before / mean_after)
