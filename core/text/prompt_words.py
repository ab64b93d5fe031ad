"""Where each word of a prompt sits in the UNet's context: the keys of its cross-attention.

A word of several tokens ("sunflower" may be two) owns all of them; a word typed twice owns both
places; an embedding's name owns its vectors. Positions count in the context the UNet reads, 77 per
chunk (BOS, 75 prompt tokens, EOS/padding), so a long prompt's later chunks map back too. Emphasis
and BREAK change weights and chunking, not which word a token came from. SDXL's two encoders lay
their outputs side by side on the same positions, so one mapping serves both.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.text.prompts import CHUNK_TOKENS, chunk_prompt
from core.text.tokenizer import AddedWords, ClipTokenizer


@dataclass(frozen=True)
class PromptWord:
    text: str                   # as typed, after CLIP's clean-up (lower-case)
    tokens: tuple[int, ...]     # its token ids (an embedding: its reserved ids)
    positions: tuple[int, ...]  # the context positions of those tokens, chunk * 77 + 1 + index in the chunk


def prompt_words(tokenizer: ClipTokenizer, prompt: str, added: AddedWords | None = None) -> list[PromptWord]:
    """The prompt's words with letters or digits, in order, each occurrence on its own (punctuation skipped)."""
    chunked = chunk_prompt(tokenizer, prompt, added)
    tokens: dict[int, list[int]] = {}
    positions: dict[int, list[int]] = {}
    for c, (chunk, origins) in enumerate(zip(chunked.chunks, chunked.origins, strict=True)):
        for i, (token, word) in enumerate(zip(chunk.tokens, origins, strict=True)):
            tokens.setdefault(word, []).append(token)
            positions.setdefault(word, []).append(c * (CHUNK_TOKENS + 2) + 1 + i)
    return [PromptWord(chunked.words[w], tuple(tokens[w]), tuple(positions[w])) for w in sorted(tokens)
            if any(ch.isalnum() for ch in chunked.words[w])]
