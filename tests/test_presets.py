"""A model's preset (core/presets.py): from the catalogue entry it was downloaded from, its metadata, or its name."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from core.errors import LatentDeskError
from core.fetch.catalogue import load_catalogue
from core.presets import PRESETS, kind_named_in, named_steps, preset_for, preset_named
from core.request import GenerationRequest, check_request


def write(path, metadata=None):
    save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("name, kind", [
    ("sd_xl_turbo_1.0_fp16", "turbo"),
    ("dreamshaperXL_turboDpmppSDE", "turbo"),
    ("sdxl_lightning_4step", "lightning"),
    ("juggernautXL_v9Rdphoto2Lightning", "lightning"),
    ("Hyper-SDXL-8steps-lora", "hyper"),
    ("Hyper-SD15-1step-lora", "hyper"),
    ("lcm-lora-sdv1-5", "lcm"),
    ("LCM_Dreamshaper_v7", "lcm"),
    ("v1-5-pruned-emaonly", None),
    ("hyperRealism_v30", None),           # "Hyper" but not Hyper-SD
    ("turbocharged", None),               # a word that starts with turbo is not "turbo"
    ("lightningbolt_style", None),
])
def test_kind_named_in_file_names_people_use(name, kind):
    assert kind_named_in(name) == kind


@pytest.mark.parametrize("name, steps", [
    ("sdxl_lightning_4step", 4), ("Hyper-SDXL-8steps-lora", 8), ("x_2-steps", 2), ("Hyper-SD15-1step", 1),
    ("model_v30", None), ("sdxl_lightning_100step", None), ("nosteps", None),
])
def test_named_steps(name, steps):
    assert named_steps(name) == steps


def test_catalogue_downloads_get_the_publishers_settings(tmp_path):
    catalogue = load_catalogue()
    turbo = preset_for(write(tmp_path / "sd_turbo.safetensors"), catalogue)
    assert (turbo.kind, turbo.sampler, turbo.schedule, turbo.steps, turbo.guidance, turbo.live) == \
        ("turbo", "Euler a", "SGM Uniform", 1, 1.0, True)
    assert turbo.source == "the catalogue (sd-turbo)"
    lcm = preset_for(write(tmp_path / "lcm-lora-sdv1-5.safetensors"), catalogue)
    assert (lcm.kind, lcm.sampler, lcm.steps, lcm.source) == ("lcm", "LCM", 4, "the catalogue (lcm-lora-sd15)")
    # a regular catalogue model has no preset, even where its name has a few-step word nowhere
    assert preset_for(write(tmp_path / "v1-5-pruned-emaonly.safetensors"), catalogue) is None


def test_metadata_names_the_kind_and_wins_over_the_name(tmp_path):
    path = write(tmp_path / "my_model.safetensors", {"modelspec.title": "Cool SDXL Lightning 2-step"})
    found = preset_for(path)
    assert (found.kind, found.steps, found.source) == ("lightning", 2, "file metadata (modelspec.title)")
    path = write(tmp_path / "something_turbo.safetensors", {"ss_output_name": "lcm_distilled"})
    assert preset_for(path).kind == "lcm"


def test_the_name_alone(tmp_path):
    found = preset_for(write(tmp_path / "Hyper-SDXL-8steps-lora.safetensors"))
    assert (found.kind, found.steps, found.live, found.source) == ("hyper", 8, False, "the file's name")
    assert preset_for(write(tmp_path / "realisticVision_v51.safetensors")) is None


def test_an_unreadable_file_has_no_preset_and_no_error(tmp_path):
    bad = tmp_path / "broken_turbo_model.safetensors"
    bad.write_bytes(b"\xff" * 64)
    assert preset_for(bad).kind == "turbo"      # the name still says so; reading the file is the loader's job
    assert preset_for(tmp_path / "missing.safetensors") is None


def test_a_folder_whose_unet_takes_a_guidance_embedding_is_an_lcm_model_guided_by_it(tmp_path):
    unet = tmp_path / "my-model" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text('{"time_cond_proj_dim": 256, "cross_attention_dim": 768}')
    found = preset_for(tmp_path / "my-model")
    assert (found.kind, found.sampler, found.steps, found.guidance) == ("lcm", "LCM", 4, 8.0)
    assert "guidance embedding" in found.source
    # An ordinary folder, and configs that cannot be read, ask for nothing (and raise nothing).
    for text in ('{"cross_attention_dim": 768}', "{not json", "[" * 100_000, '{"time_cond_proj_dim": null}'):
        (unet / "config.json").write_text(text)
        assert preset_for(tmp_path / "my-model") is None
    (unet / "config.json").write_bytes(b"\xff\xfe")
    assert preset_for(tmp_path / "my-model") is None
    # Too large to be a UNet's config: not read at all.
    (unet / "config.json").write_text('{"time_cond_proj_dim": 256, "pad": "' + " " * (2 << 20) + '"}')
    assert preset_for(tmp_path / "my-model") is None


def test_every_preset_is_a_request_generate_takes():
    for preset in PRESETS.values():
        check_request(GenerationRequest(sampler=preset.sampler, schedule=preset.schedule, steps=preset.steps,
                                        guidance=preset.guidance))


def test_the_users_choice():
    assert preset_named("lightning").source == "you"
    with pytest.raises(LatentDeskError, match="Unknown model type"):
        preset_named("fast")
