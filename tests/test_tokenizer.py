"""The CLIP tokenizer against OpenAI's reference (open_clip's copy of `SimpleTokenizer`)."""

from __future__ import annotations

import importlib.util
import random
import string
import time
from pathlib import Path

import pytest

from core.families import BANG_ID, EOS_ID, SD1, SD2, SDXL
from core.text.tokenizer import ClipTokenizer, tokenizer_dir

ROOT = Path(__file__).resolve().parent.parent


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_tokenizer():
    return _load_by_path("make_tokenizer", ROOT / "scripts" / "make_tokenizer.py")


@pytest.fixture(scope="module")
def reference(make_tokenizer):
    # `import open_clip` needs torchvision; its tokenizer module alone does not.
    bpe = make_tokenizer.find_bpe_file()
    return _load_by_path("open_clip_tokenizer", bpe.parent / "tokenizer.py").SimpleTokenizer(str(bpe))


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer()


WORDS = ("a photo of the cat dog portrait landscape masterpiece best quality highly detailed "
         "sharp focus 8k uhd octane render trending on artstation by greg rutkowski cinematic "
         "lighting don't it's we're they've i'm you'll he'd isn't volumetric fog").split()
A1111 = ("(word:1.3)", "[x]", r"\(", r"\)", "((masterpiece))", "[[bad]]", "(a cat:0.8)", "[dog:cat:0.5]",
         "<lora:detail_tweaker:0.7>", "BREAK", "AND", "{red|blue}", "__wildcard__", "embedding:easyneg")
HTML = ("&amp;", "&lt;b&gt;", "&#39;", "&quot;", "&eacute;", "&amp;amp;", "&#x1F600;", "&nbsp;", "&copy;",
        "&#8217;", "&hellip;", "&unknown;", "& amp;", "&#0;", "&#x80;")
EMOJI = ("😀", "👩‍💻", "🇯🇵", "👍🏽", "❤️", "🐈‍⬛", "🤖", "✨", "🔥", "🌸", "⭐", "☕")
SPACES = (" ", "  ", "\t", "\n", "\r\n", "\u3000", "\xa0", "\u2003", " \n\t ", "\u200b", "\x85")
ACCENTED = ("café", "naïve", "e\u0301", "Ångström", "Øresund", "straße", "İstanbul", "Ελληνικά", "Москва",
            "Tiếng Việt", "العربية", "עברית", "हिन्दी", "ภาษาไทย", "ﬁne", "ＡＢＣ１２３", "ǅ", "ﬀ")
RANGES = ((0x4E00, 0x9FFF), (0x3040, 0x309F), (0x30A0, 0x30FF), (0xAC00, 0xD7A3),   # CJK, kana, Hangul
          (0x1F300, 0x1F64F), (0x00C0, 0x024F), (0x0300, 0x036F), (0x2000, 0x206F))   # emoji, Latin, combining, punct


def _mojibake(rng: random.Random) -> str:
    word = rng.choice(ACCENTED + EMOJI + ("l’été", "“quoted”", "—dash", "résumé"))
    return word.encode("utf-8").decode(rng.choice(("latin-1", "cp1252")), errors="replace")


def _fragment(rng: random.Random) -> str:
    kind = rng.randrange(12)
    if kind == 0:
        return rng.choice(WORDS)
    if kind == 1:
        return "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(1, 14)))
    if kind == 2:
        return "".join(rng.choice(string.punctuation) for _ in range(rng.randint(1, 5)))
    if kind == 3:
        return rng.choice((str(rng.randint(0, 10**6)), f"{rng.uniform(0, 2):.{rng.randint(1, 3)}f}",
                           f"{rng.choice((512, 768, 1024))}x{rng.choice((512, 768, 1024))}", "3d", "1girl"))
    if kind == 4:
        return rng.choice(A1111)
    if kind == 5:
        return rng.choice(HTML)
    if kind == 6:
        return rng.choice(EMOJI)
    if kind == 7:
        low, high = rng.choice(RANGES)
        return "".join(chr(rng.randint(low, high)) for _ in range(rng.randint(1, 6)))
    if kind == 8:
        return rng.choice(ACCENTED)
    if kind == 9:
        return _mojibake(rng)
    if kind == 10:
        return rng.choice(SPACES)
    return rng.choice(WORDS).upper() + rng.choice(",.;:!?'\"")


def varied_strings(n: int, seed: int = 0) -> list[str]:
    """`n` deterministic prompts: every kind of fragment above, some well past 77 tokens."""
    rng = random.Random(seed)
    texts = ["", " ", "\n\n", "a", "!", "a photo of a cat", "A  PHOTO\tof   a\ncat ", "&amp;amp;lt;"]
    while len(texts) < n:
        count = rng.choice((1, 2, 5, 10, 20, 80)) if rng.random() < 0.9 else rng.randint(100, 250)
        sep = rng.choice((" ", ", ", "", " , ", "\n"))
        texts.append(sep.join(_fragment(rng) for _ in range(count)))
    return texts


def test_vocab_and_spot_ids(tok):
    assert tok.vocab_size == 49408
    assert tok.encoder["!"] == 0 and tok.encoder["a</w>"] == 320 and tok.encoder["photo</w>"] == 1125
    assert (tok.bos_id, tok.eos_id) == (49406, 49407) == (49406, EOS_ID)
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]


def test_matches_reference_on_varied_strings(tok, reference):
    texts = varied_strings(1200)
    assert sum(len(reference.encode(t)) > 75 for t in texts) >= 50     # plenty of over-long prompts
    mismatches = [t for t in texts if tok.encode(t) != reference.encode(t)]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]!r}"


def test_special_tokens_in_text(tok):
    # OpenAI's reference splits its own specials out of the text (open_clip renamed them, so not compared there).
    assert tok.encode("a <|endoftext|> b") == [320, 49407, 321]
    assert tok.encode("<|STARTOFTEXT|>") == [49406]


def test_call_pads_and_truncates(tok):
    ids = tok("a photo of a cat", pad_id=EOS_ID)
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70
    assert tok("a photo of a cat", pad_id=BANG_ID)[7:] == [0] * 70
    assert [spec.pad_id for spec in (*SD1.text_encoders, *SD2.text_encoders, *SDXL.text_encoders)] == \
        [EOS_ID, BANG_ID, EOS_ID, BANG_ID]

    long = tok("cat " * 100, pad_id=BANG_ID)
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407 and long[1:-1] == [2368] * 75
    assert tok("", pad_id=BANG_ID, length=5) == [49406, 49407, 0, 0, 0]
    assert tok("a b c d", pad_id=BANG_ID, length=4) == [49406, 320, 321, 49407]


def test_decode_round_trip(tok):
    for text in ("a photo of a cat", "café 日本 😀, (masterpiece:1.2)"):
        assert tok.decode(tok(text, pad_id=BANG_ID)) == tok.decode(tok.encode(text))
    assert tok.decode(tok("a photo of a cat", pad_id=BANG_ID)) == "a photo of a cat"


def test_speed(tok):
    texts = varied_strings(1000, seed=1)
    for text in texts[:50]:
        tok.encode(text)
    start = time.perf_counter()
    for text in texts:
        tok.encode(text)
    assert time.perf_counter() - start < 2.0


def test_script_reproduces_shipped_files(make_tokenizer, tmp_path):
    paths = make_tokenizer.write_tokenizer_files(make_tokenizer.find_bpe_file(), tmp_path)
    for path in paths:
        assert path.read_bytes() == (tokenizer_dir() / path.name).read_bytes(), path.name
    assert ClipTokenizer(tmp_path).encode("a photo") == [320, 1125]
