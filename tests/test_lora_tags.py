"""LoRA names and weights as users write them, found and recorded: no torch, no model.

- `<lora:name:w>` / `<lyco:...>` in the prompt (core/text/lora_tags.py), as A1111's modules/extra_networks.py
  takes them out; `--lora NAME|PATH[:W]` on the command line (a Windows drive's colon kept);
- the request's rules on LoRAs (core/request.py check_loras);
- where LoRAs and embeddings are found by name (core/fetch/addons.py);
- A1111's hashes (core/metadata/hashing.py) against hashlib on the file's bytes, as A1111's modules/hashes.py
  computes them, and our "LoRAs" infotext key read back (core/metadata/infotext.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct

import pytest

from app.cli.commands import lora_argument
from core.errors import LatentDeskError
from core.fetch.addons import AddOns, addon_folders, embeddings_in, find_addons, lora_path
from core.fetch.folders import ModelFolder
from core.metadata import hashing
from core.metadata.infotext import parse_infotext, request_from_infotext, to_infotext
from core.request import GenerationRequest, check_request
from core.text.lora_tags import split_lora_tags

A1111_TAG = re.compile(r"<(\w+):([^>]+)>")     # stable-diffusion-webui modules/extra_networks.py re_extra_net


@pytest.mark.parametrize("prompt, clean, loras", [
    ("a cat <lora:ink:0.8>", "a cat ", [("ink", 0.8)]),
    ("<lora:ink>a cat", "a cat", [("ink", 1.0)]),
    ("a, <lora:ink style:-0.5>, b <lyco:hada_v2:1.25>", "a, , b ", [("ink style", -0.5), ("hada_v2", 1.25)]),
    ("<lora:ink: 0.3 >", "", [("ink", 0.3)]),
    ("keep <hypernet:x:1> and <notatag> <lora:ink:2>", "keep <hypernet:x:1> and <notatag> ", [("ink", 2.0)]),
    ("no tags (at all:1.2)", "no tags (at all:1.2)", []),
])
def test_tags_come_out_of_the_prompt_as_a1111_takes_them(prompt, clean, loras):
    assert split_lora_tags(prompt) == (clean, loras)
    if all(m.group(1) in ("lora", "lyco") for m in A1111_TAG.finditer(prompt)):
        assert clean == A1111_TAG.sub("", prompt)      # the text the encoder sees is A1111's


@pytest.mark.parametrize("prompt, words", [
    ("x <lora:ink:strong>", "<lora:ink:strong>: the weight 'strong' is not a number"),
    ("x <lora:ink:0.5:0.2>", "<lora:ink:0.5:0.2>: Latent Desk takes one weight per LoRA"),
    ("x <lora:ink:te=0.5>", "one weight per LoRA"),
    ("x <lora: :1>", "the LoRA's name is missing"),
])
def test_a_bad_tag_is_named_in_the_message(prompt, words):
    with pytest.raises(LatentDeskError, match=re.escape(words)):
        split_lora_tags(prompt)


@pytest.mark.parametrize("text, expected", [
    ("ink", ("ink", 1.0)),
    ("ink:0.8", ("ink", 0.8)),
    ("ink:-1.5", ("ink", -1.5)),
    (r"C:\loras\ink.safetensors", (r"C:\loras\ink.safetensors", 1.0)),
    (r"C:\loras\ink.safetensors:0.5", (r"C:\loras\ink.safetensors", 0.5)),
    ("/home/me/loras/ink.safetensors:2", ("/home/me/loras/ink.safetensors", 2.0)),
    ("odd:name", ("odd:name", 1.0)),
])
def test_cli_lora_argument_splits_at_the_last_colon_only_before_a_number(text, expected):
    assert lora_argument(text) == expected


@pytest.mark.parametrize("loras, words", [
    ((("ink", float("nan")),), "the weight of LoRA 'ink' must be a number from -100.0 to 100.0"),
    ((("ink", 150.0),), "the weight of LoRA 'ink' must be"),
    ((("ink", float("inf")),), "the weight of LoRA 'ink'"),
    (tuple((f"l{i}", 1.0) for i in range(33)), "33 LoRAs at once is more than Latent Desk takes (32)"),
    ((("", 1.0),), "a LoRA's name must be"),
])
def test_request_refuses_unusable_loras(loras, words):
    with pytest.raises(LatentDeskError, match=re.escape(words)):
        check_request(GenerationRequest(loras=loras))
    check_request(GenerationRequest(loras=(("ink", -100.0), ("ink", 100.0))))   # the bounds themselves are fine


# -- finding add-ons by name -----------------------------------------------------------------------------

def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_addons_are_found_by_name_first_folder_first(tmp_path, monkeypatch):
    models, env, shared = tmp_path / "models", tmp_path / "env", tmp_path / "a1111"
    mine = touch(models / "loras" / "ink.safetensors")
    touch(env / "loras" / "ink.safetensors")                 # the same name later: the first folder wins
    deep = touch(env / "loras" / "styles" / "pastel.safetensors")
    touch(env / "loras" / "pickled.pt")                      # never offered
    emb = touch(shared / "embeddings" / "EasyNegative.safetensors")
    monkeypatch.setenv("LATENTDESK_MODEL_DIRS", str(env))
    folders = addon_folders(models, extra=[ModelFolder(shared / "embeddings", "embedding", "a1111"),
                                           ModelFolder(shared, "checkpoint", "a1111")])
    assert [(f.path, f.kind) for f in folders] == [
        (models / "loras", "lora"), (env / "loras", "lora"), (shared / "embeddings", "embedding")]
    addons = find_addons(folders)
    assert dict(addons.loras) == {"ink": mine, "pastel": deep}
    assert dict(addons.embeddings) == {"EasyNegative": emb}
    assert lora_path("ink", addons) == mine and lora_path("PASTEL", addons) == deep    # case forgiven
    assert lora_path(str(deep), None) == deep                                          # a path needs no folders


def test_an_unknown_lora_lists_what_there_is(tmp_path):
    loras = {f"lora{i:02d}": tmp_path / f"lora{i:02d}.safetensors" for i in range(15)}
    addons = AddOns(loras, {}, (ModelFolder(tmp_path, "lora", "user"),))
    with pytest.raises(LatentDeskError) as error:
        lora_path("ikn", addons)
    message = str(error.value)
    assert message.startswith("LoRA 'ikn' not found; LoRAs found: lora00, lora01,")
    assert "lora11 and 3 more (in folders " + str(tmp_path) + ")" in message
    with pytest.raises(LatentDeskError, match="LoRA 'ink' not found; no LoRAs found"):
        lora_path("ink", AddOns())
    with pytest.raises(LatentDeskError, match="give a path to its .safetensors file"):
        lora_path("missing.safetensors", None)


def test_embeddings_are_used_by_writing_their_name(tmp_path):
    names = ["EasyNegative", "bad-hands-5", "neg", "unused"]
    addons = AddOns({}, {n: tmp_path / f"{n}.safetensors" for n in names})
    found = embeddings_in(["a cat, (easynegative:1.2)", "blurry, bad-hands-5, negative"], addons)
    assert [name for name, _ in found] == ["EasyNegative", "bad-hands-5"]     # "negative" is not "neg"


# -- hashes, as A1111 computes them ------------------------------------------------------------------------

def safetensors_bytes(metadata: dict) -> bytes:
    header = json.dumps({"__metadata__": metadata, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    return struct.pack("<Q", len(header)) + header.encode() + struct.pack("<2f", 1.5, -2.0)


def test_lora_hash_is_the_sha256_of_the_tensor_data_and_ignores_metadata(tmp_path):
    data = safetensors_bytes({"ss_output_name": "ink"})
    path = touch(tmp_path / "ink.safetensors", data)
    n = int.from_bytes(data[:8], "little")
    assert hashing.lora_hash(path) == hashlib.sha256(data[8 + n:]).hexdigest()[:12]
    other = touch(tmp_path / "renamed.safetensors", safetensors_bytes({"ss_output_name": "a much longer name"}))
    assert hashing.lora_hash(other) == hashing.lora_hash(path)          # the addnet hash skips the header
    assert hashing.embedding_hash(path) == hashlib.sha256(data).hexdigest()[:12]
    assert hashing.embedding_hash(other) != hashing.embedding_hash(path)   # TI hashes are of the whole file


def test_hashes_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    path = touch(tmp_path / "ink.safetensors", safetensors_bytes({}))
    reads = []
    digest = hashing._digest_file
    monkeypatch.setattr(hashing, "_digest_file", lambda *a, **k: reads.append(a[0]) or digest(*a, **k))
    first = hashing.lora_hash(path)
    assert hashing.lora_hash(path) == first and len(reads) == 1
    path.write_bytes(safetensors_bytes({}).replace(struct.pack("<2f", 1.5, -2.0), struct.pack("<2f", 1.0, 2.0)))
    os.utime(path, ns=(1, 10**18))
    assert hashing.lora_hash(path) != first and len(reads) == 2


def test_a_short_or_lying_header_hashes_without_reading_past_the_file(tmp_path):
    short = touch(tmp_path / "short.safetensors", b"\x01\x02")
    lying = touch(tmp_path / "lying.safetensors", struct.pack("<Q", 2**63) + b"data")
    empty = hashlib.sha256(b"").hexdigest()[:12]
    assert hashing.lora_hash(lying) == empty
    assert hashing.lora_hash(short) == empty


# -- the infotext ------------------------------------------------------------------------------------------

def test_loras_and_hashes_are_written_as_a1111_does_and_read_back(tmp_path):
    request = GenerationRequest(prompt="a cat <lora:ink:0.5>", loras=(("pastel", 0.8), (str(tmp_path / "x.safetensors"),
                                                                                          -1.0)))
    text = to_infotext(request, "tiny", "0123456789", "v", lora_hashes=[("pastel", "aaaaaaaaaaaa"), ("x", "bbb")],
                       ti_hashes=[("Easy:Neg,ative", "cccccccccccc")])
    line = text.splitlines()[-1]
    assert 'LoRAs: "pastel:0.8, x:-1", ' in line                      # names, never the path
    assert line.endswith('Lora hashes: "pastel: aaaaaaaaaaaa, x: bbb", TI hashes: "EasyNegative: cccccccccccc", '
                         'Version: v')
    assert text.startswith("a cat <lora:ink:0.5>\n")                 # the prompt keeps its tags as typed
    info = parse_infotext(text)
    assert info["Lora hashes"] == "pastel: aaaaaaaaaaaa, x: bbb"
    restored, notes = request_from_infotext(text, GenerationRequest(model="tiny"))
    assert restored.loras == (("pastel", 0.8), ("x", -1.0)) and restored.prompt == request.prompt
    assert notes == []                                                 # Lora/TI hashes are known keys
    assert "LoRAs" not in to_infotext(GenerationRequest(), None, None, None)


def test_unusable_loras_entries_are_reported_and_the_rest_kept():
    text = 'x\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, LoRAs: "ink:0.5, bad, big:500, ok:1"'
    restored, notes = request_from_infotext(text, GenerationRequest(loras=(("old", 1.0),)))
    assert restored.loras == (("ink", 0.5), ("ok", 1.0))
    assert len(notes) == 2 and "'bad'" in notes[0] and "'big:500'" in notes[1]
    without, _ = request_from_infotext("x\nSteps: 2, Sampler: Euler, CFG scale: 7", GenerationRequest(loras=(("a", 1.0),)))
    assert without.loras == ()                 # an image made without panel LoRAs restores none
