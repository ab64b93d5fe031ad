"""Derive the shipped CLIP tokenizer files from OpenAI's BPE merge list.

    python scripts/make_tokenizer.py [path/to/bpe_simple_vocab_16e6.txt.gz] [--out resources/tokenizer]

OpenAI's CLIP ships one gzip'd list of BPE merges; transformers' `vocab.json` /
`merges.txt` for every CLIP model (SD1, SD2, SDXL) are derived from it the same
way `SimpleTokenizer.__init__` builds its encoder: the 256 byte characters, the
same with `</w>`, one token per merge (48,894 merges), then the two specials —
49,408 ids in all. The output is byte-identical on every run.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.text.tokenizer import BOS, EOS, bytes_to_unicode  # noqa: E402

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2       # OpenAI's CLIP uses the first 48,894 merges of the list
VOCAB_SIZE = 49408


def find_bpe_file() -> Path:
    """The merge list inside an installed open_clip (or OpenAI clip) package, without importing it."""
    for package in ("open_clip", "clip"):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / BPE_NAME
            if path.is_file():
                return path
    raise FileNotFoundError(f"{BPE_NAME} not found; install open_clip_torch or pass its path")


def build_vocab(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """(token -> id, merge lines "a b") in OpenAI's order."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]          # line 0 is a "#version" header
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    assert len(vocab) == len(tokens) == VOCAB_SIZE, "duplicate tokens: not OpenAI's CLIP merge list"
    return vocab, merges


def write_tokenizer_files(bpe_path: Path, out_dir: Path) -> tuple[Path, Path]:
    vocab, merges = build_vocab(bpe_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    # write_bytes, not write_text: no platform newline translation, so the bytes match on Windows too
    vocab_path.write_bytes(json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    merges_path.write_bytes(("\n".join(["#version: 0.2", *merges]) + "\n").encode("utf-8"))
    return vocab_path, merges_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bpe", nargs="?", type=Path, help=f"path to {BPE_NAME} (default: from open_clip)")
    parser.add_argument("--out", type=Path, default=ROOT / "resources" / "tokenizer")
    args = parser.parse_args(argv)
    for path in write_tokenizer_files(args.bpe or find_bpe_file(), args.out):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
