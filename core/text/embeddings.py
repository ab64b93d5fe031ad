"""Textual-inversion embeddings in prompts: learned token vectors a prompt uses by writing their name.

A file holds n vectors (1 to 75) as wide as a text encoder's token embeddings (read and fitted to a
model by core/loading/embedding_files.py); writing the file's name (its stem, A1111's rule) in a prompt
or negative prompt puts those n vectors where the name's tokens were (core.text.prompts,
core.text.encoder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from core.errors import LatentDeskError, ModelLoadError
from core.families import FAMILIES
from core.text.encoder import TextEncoder
from core.text.prompts import prompt_chunks
from core.text.tokenizer import AddedWords

FAMILY_BY_WIDTHS = {(768,): "sd1", (1024,): "sd2", (768, 1280): "sdxl"}


@dataclass(frozen=True)
class Embedding:
    """An embedding file fitted to one text encoder: its vectors in the order of the encoder's models."""

    name: str
    path: Path
    vectors: tuple[Tensor, ...]        # (n, width of model k), float32

    @property
    def count(self) -> int:
        return self.vectors[0].shape[0]


def described_widths(widths: Sequence[int]) -> str:
    """'768 + 1280 wide (Stable Diffusion XL)'."""
    family = FAMILY_BY_WIDTHS.get(tuple(widths))
    return " + ".join(map(str, widths)) + " wide" + (f" ({FAMILIES[family].title})" if family else "")


def set_embeddings(text_encoder: TextEncoder, embeddings: Sequence[Embedding]) -> None:
    """From now on prompts encoded with `text_encoder` (encode_prompt / encode_pair) put each embedding's
    vectors where its name appears; `[]` restores plain behaviour. Session-only: no file is written.

    A name is matched as A1111 matches it: by its tokens, the longest name first where several start alike.
    """
    if not embeddings:
        text_encoder.set_added_words(None)
        return
    widths = [model.config.hidden_size for model in text_encoder.models]
    tokenizer = text_encoder.tokenizer
    spelled_by: dict[tuple[int, ...], Embedding] = {}
    for embedding in embeddings:
        if [v.shape[1] for v in embedding.vectors] != widths:
            raise LatentDeskError(f"The embedding {embedding.name!r} was fitted to another model's text encoders "
                                  f"({described_widths([v.shape[1] for v in embedding.vectors])}, not {described_widths(widths)}).")
        spelling = tuple(tokenizer.encode(embedding.name))
        if not spelling:
            raise ModelLoadError(embedding.path, "its name has nothing a prompt could write: rename the file")
        if (other := spelled_by.get(spelling)) is not None:
            raise ModelLoadError(embedding.path, f"its name reads the same as the embedding {other.path.name}'s in a "
                                                 "prompt; rename one of them")
        spelled_by[spelling] = embedding
    words = AddedWords(tokenizer.vocab_size, [(e.name, spelling, e.count) for spelling, e in spelled_by.items()])
    ordered = list(spelled_by.values())
    vectors = [torch.cat([e.vectors[k] for e in ordered]) for k in range(len(widths))]
    text_encoder.set_added_words(words, vectors)


def embeddings_used(text_encoder: TextEncoder, *prompts: str) -> list[str]:
    """The names of the embeddings (of those set) these prompts use, in order of first use (the PNG's TI hashes)."""
    words = text_encoder.added_words
    if words is None:
        return []
    found: dict[str, None] = {}
    for prompt in prompts:
        for chunk in prompt_chunks(text_encoder.tokenizer, prompt, words):
            for token in chunk.tokens:
                if (index := words.word_of(token)) is not None:
                    found[words.names[index]] = None
    return list(found)
