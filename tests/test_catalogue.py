"""resources/catalogue.json loads, holds the models issue #21 asks for, and a bad entry is refused by name.

The Hub facts in it (repo ids, file names, sizes, licences) cannot be tested here without a network;
each entry's "source" names the pages they were checked on."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from core.errors import LatentDeskError
from core.families import FAMILIES
from core.fetch.catalogue import (
    KINDS,
    SCHEDULES,
    CatalogueEntry,
    default_catalogue_path,
    find_entry,
    load_catalogue,
)
from core.nets.taesd import taesd_file_for
from core.request import GenerationRequest, check_request

REQUIRED = ("sd15", "sd21", "sdxl", "sd-turbo", "sdxl-turbo", "lcm-lora-sd15", "lcm-lora-sdxl", "taesd", "taesdxl")


@pytest.fixture(scope="module")
def shipped() -> list[CatalogueEntry]:
    return load_catalogue()


def test_the_shipped_catalogue_holds_every_required_model(shipped):
    names = [entry.name for entry in shipped]
    assert set(REQUIRED) <= set(names)
    assert len(names) == len(set(names))


def test_entries_are_of_known_kinds_and_families(shipped):
    for entry in shipped:
        assert entry.kind in KINDS and entry.family in FAMILIES, entry.name
        assert entry.size_bytes > 0 and entry.revision == "main", entry.name
        assert entry.file.endswith(".safetensors") and entry.save_as.endswith(".safetensors"), entry.name
        assert entry.source.strip() and entry.licence_url.startswith("https://"), entry.name


def test_required_models_are_what_they_say(shipped):
    kinds = {entry.name: (entry.kind, entry.family) for entry in shipped}
    assert kinds["sd15"] == ("checkpoint", "sd1")
    assert kinds["sd21"] == ("checkpoint", "sd2")
    assert kinds["sdxl"] == kinds["sdxl-turbo"] == ("checkpoint", "sdxl")
    assert kinds["sd-turbo"] == ("checkpoint", "sd2")
    assert kinds["lcm-lora-sd15"] == ("lora", "sd1")
    assert kinds["lcm-lora-sdxl"] == ("lora", "sdxl")
    assert kinds["taesd"][0] == kinds["taesdxl"][0] == "taesd"


def test_taesd_decoders_are_saved_under_the_names_the_app_looks_for(shipped):
    for entry in shipped:
        if entry.kind == "taesd":
            scale = FAMILIES[entry.family].latent_scale
            assert entry.save_as == taesd_file_for(entry.family, scale), entry.name
    assert find_entry("taesd", shipped).save_as == "taesd_decoder.safetensors"
    assert find_entry("taesdxl", shipped).save_as == "taesdxl_decoder.safetensors"


def test_files_saved_under_one_name_stay_apart(shipped):
    """Both LCM-LoRAs are pytorch_lora_weights.safetensors on the Hub: saved as is, one would overwrite the other."""
    names = [entry.save_as for entry in shipped]
    assert len(names) == len(set(names))


def test_fast_models_carry_their_presets(shipped):
    for name in ("sd-turbo", "sdxl-turbo"):
        settings = find_entry(name, shipped).settings
        assert settings["steps"] <= 4 and settings["guidance"] == 1.0 and settings["schedule"] == "SGM Uniform"
    for name in ("lcm-lora-sd15", "lcm-lora-sdxl"):
        assert find_entry(name, shipped).settings["sampler"] == "LCM"
    assert find_entry("sdxl", shipped).settings["width"] == 1024
    assert find_entry("sd21", shipped).settings["width"] == 768


def test_a_preset_schedule_is_one_a_request_takes():
    from core.sampling.sampler_names import SCHEDULE_NAMES
    assert SCHEDULES == SCHEDULE_NAMES
    for entry in load_catalogue():
        if "schedule" in entry.settings:
            check_request(GenerationRequest(sampler=entry.settings["sampler"], schedule=entry.settings["schedule"]))


def test_find_entry(shipped):
    assert find_entry(" SD15 ").name == "sd15"          # the shipped catalogue, read again
    assert find_entry("nope", shipped) is None


# --- bad entries -------------------------------------------------------------------------------------

def write(tmp_path: Path, entries) -> Path:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(entries))
    return path


def good_entries() -> list[dict]:
    return json.loads(default_catalogue_path().read_text())


def refused(tmp_path, change) -> str:
    entries = good_entries()
    change(entries[1])
    with pytest.raises(LatentDeskError) as caught:
        load_catalogue(write(tmp_path, entries))
    return str(caught.value)


@pytest.mark.parametrize("change, words", [
    (lambda e: e.update(kind="pickle"), "kind"),
    (lambda e: e.update(family="sd3"), "family"),
    (lambda e: e.update(size_bytes=0), "size_bytes"),
    (lambda e: e.update(size_bytes=True), "size_bytes"),
    (lambda e: e.update(size_bytes="5 GB"), "size_bytes"),
    (lambda e: e.update(repo="no-slash"), "repo"),
    (lambda e: e.update(repo="a/b/c"), "repo"),
    (lambda e: e.update(repo="owner/na--me"), "repo"),
    (lambda e: e.update(file="model.ckpt"), "pickled"),
    (lambda e: e.update(file="../escape.safetensors"), "file"),
    (lambda e: e.update(file="/abs.safetensors"), "file"),
    (lambda e: e.update(save_as="../../.bashrc.safetensors"), "save_as"),
    (lambda e: e.update(save_as="sub/model.safetensors"), "save_as"),
    (lambda e: e.update(save_as="model.bin"), "save_as"),
    (lambda e: e.update(licence_url="http://example.com"), "licence_url"),
    (lambda e: e.update(title=""), "title"),
    (lambda e: e.update(source="  "), "source"),
    (lambda e: e.update(name="Has Spaces"), "name"),
    (lambda e: e.pop("licence"), "lacks licence"),
    (lambda e: e.update(sha256="00" * 32), "does not know"),
    (lambda e: e["settings"].update(sampler="Euler b"), "sampler"),
    (lambda e: e["settings"].update(steps=0), "steps"),
    (lambda e: e["settings"].update(steps=2.5), "steps"),
    (lambda e: e["settings"].update(guidance=float("nan")), "guidance"),
    (lambda e: e["settings"].update(width=500), "width"),
    (lambda e: e["settings"].update(schedule="karras"), "schedule"),
    (lambda e: e["settings"].update(cfg=7), "does not know"),
    (lambda e: e["settings"].pop("steps"), "lack steps"),
    (lambda e: e.update(settings=[]), "settings"),
])
def test_a_bad_entry_is_refused_by_name(tmp_path, change, words):
    message = refused(tmp_path, change)
    assert "entry 2" in message and words in message
    assert "sd21" in message or "Has Spaces" in message    # entry 2 is sd21, named unless the name is the fault


def test_a_decoder_has_no_settings(tmp_path):
    def change(entries):
        taesd = next(e for e in entries if e["name"] == "taesd")
        taesd["settings"] = {"steps": 4}
    entries = good_entries()
    change(entries)
    with pytest.raises(LatentDeskError, match=r"taesd.*settings must be empty"):
        load_catalogue(write(tmp_path, entries))


def test_names_must_be_unique(tmp_path):
    entries = good_entries()
    entries.append(copy.deepcopy(entries[0]))
    with pytest.raises(LatentDeskError, match=r"'sd15' is used twice"):
        load_catalogue(write(tmp_path, entries))


@pytest.mark.parametrize("text, words", [
    ("{", "not valid JSON"),
    ("[" * 100_000, "nested too deeply"),
    ('{"entries": []}', "JSON list"),
    ("[1]", "entry 1 must be a JSON object"),
])
def test_an_unreadable_catalogue_is_refused(tmp_path, text, words):
    path = tmp_path / "catalogue.json"
    path.write_text(text)
    with pytest.raises(LatentDeskError, match=words):
        load_catalogue(path)


def test_a_missing_catalogue_is_refused(tmp_path):
    with pytest.raises(LatentDeskError, match="cannot be read"):
        load_catalogue(tmp_path / "missing.json")
