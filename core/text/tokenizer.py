"""CLIP's byte-level BPE tokenizer, as OpenAI's reference `SimpleTokenizer` does it.

Every Stable Diffusion text encoder (SD1's CLIP-L, SD2's OpenCLIP-H, SDXL's
CLIP-L + OpenCLIP-bigG) uses this one vocabulary; the families differ only in
the padding token (see `core.families`). transformers' `CLIPTokenizer` skips
OpenAI's ftfy/HTML clean-up, so it splits mojibake and `&amp;`-style text
differently; this file follows the reference exactly.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from functools import cache
from itertools import pairwise
from pathlib import Path

import ftfy
import regex

from core.resources import resources_dir

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
CONTEXT_LENGTH = 77

# OpenAI's pre-split: the two specials, English clitics, letter runs, single digits, other symbol runs.
_PRE_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_CACHE_LIMIT = 100_000   # words; a long session of prompts stays far below this


def tokenizer_dir() -> Path:
    """Where vocab.json and merges.txt ship: `resources/tokenizer/` next to the `core` package."""
    return resources_dir() / "tokenizer"


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the other 68 (space, controls, ...)
    map to U+0100 onwards, so a BPE symbol is never whitespace or a control char.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table     # insertion order (printable first) is the order of the vocabulary's first 256 ids


def clean(text: str) -> str:
    """OpenAI's text clean-up: fix mojibake, unescape HTML twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Text -> CLIP token ids (49,408-token vocabulary)."""

    def __init__(self, folder: str | Path | None = None):
        folder = Path(folder) if folder is not None else tokenizer_dir()
        self.encoder: dict[str, int] = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        self.ranks: dict[tuple[str, ...], int] = {pair: rank for rank, pair in enumerate(merges)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.bos_id, self.eos_id = self.encoder[BOS], self.encoder[EOS]
        self._byte_chars = [bytes_to_unicode()[b] for b in range(256)]
        self._char_bytes = {c: b for b, c in bytes_to_unicode().items()}
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS and without length limit."""
        return [token for _, word_ids in self.encode_words(text) for token in word_ids]

    def encode_words(self, text: str) -> list[tuple[str, list[int]]]:
        """`text` as the words it is split into (cleaned, lower-case), each with its token ids."""
        words = []
        for word in _PRE_SPLIT.findall(clean(text)):
            word_ids = self._cache.get(word)
            if word_ids is None:
                word_ids = self._encode_word(word)
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[word] = word_ids
            words.append((word, word_ids))
        return words

    def __call__(self, text: str, pad_id: int, length: int = CONTEXT_LENGTH) -> list[int]:
        """BOS, the prompt's tokens cut to `length - 2`, EOS, then `pad_id` up to `length`."""
        ids = [self.bos_id, *self.encode(text)[: length - 2], self.eos_id]
        return ids + [pad_id] * (length - len(ids))

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text of `ids`; with `skip_special`, BOS is dropped and everything from the first EOS on (padding)."""
        ids = [int(i) for i in ids]          # also takes a 1-D tensor
        if skip_special:
            ids = [i for i in ids if i != self.bos_id]
            ids = ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids
        text = "".join(self.decoder[i] for i in ids)
        data = bytes(self._char_bytes[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def _encode_word(self, word: str) -> list[int]:
        if word in (BOS, EOS):
            return [self.encoder[word]]
        symbols = [self._byte_chars[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"          # marks the word's end, so "a" alone and "a" in "at" differ
        return [self.encoder[s] for s in self._bpe(symbols)]

    def _bpe(self, symbols: list[str]) -> list[str]:
        """Apply merges lowest rank first, each to every (non-overlapping, left-to-right) occurrence."""
        ranks = self.ranks
        while len(symbols) > 1:
            best = min(pairwise(symbols), key=lambda pair: ranks.get(pair, len(ranks)))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols


class AddedWords:
    """Words the vocabulary lacks, for one session: textual-inversion embeddings, one word per file.

    A word (name, spelling, count) is spelled with ordinary tokens (its name, as `encode` splits it)
    and stands for `count` reserved ids from `first_id` on, past the vocabulary so that none is a real
    token. Words get consecutive ids in the order given. Nothing is written to vocab.json or merges.txt.
    """

    def __init__(self, first_id: int, words: Sequence[tuple[str, Sequence[int], int]]):
        self.first_id = first_id
        self.names: list[str] = []
        self.spellings: list[tuple[int, ...]] = []
        self.reserved: list[tuple[int, ...]] = []
        next_id = first_id
        for name, spelling, count in words:
            if not spelling or count < 1:
                raise ValueError(f"the added word {name!r} needs tokens and at least one id: {spelling!r}, {count}")
            self.names.append(name)
            self.spellings.append(tuple(spelling))
            self.reserved.append(tuple(range(next_id, next_id + count)))
            next_id += count
        self.count = next_id - first_id
        # A1111's `ids_lookup`: the words by their first token, longest spelling first.
        self._by_first: dict[int, list[int]] = {}
        for index, spelling in enumerate(self.spellings):
            self._by_first.setdefault(spelling[0], []).append(index)
        for indices in self._by_first.values():
            indices.sort(key=lambda i: len(self.spellings[i]), reverse=True)

    def match(self, ids: Sequence[int], position: int) -> int | None:
        """The index of the word spelled by `ids` from `position` on (the longest, as A1111's
        `find_embedding_at_position` picks), or None."""
        for index in self._by_first.get(ids[position], ()):
            spelling = self.spellings[index]
            if tuple(ids[position:position + len(spelling)]) == spelling:
                return index
        return None

    def word_of(self, token_id: int) -> int | None:
        """The index of the word a reserved id belongs to; None for a vocabulary id."""
        for index, reserved in enumerate(self.reserved):
            if reserved and reserved[0] <= token_id <= reserved[-1]:
                return index
        return None
