"""Loader behaviour beyond parity: replacing the VAE, prediction-type signals, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.errors import LatentDeskError, ModelLoadError
from core.families import SD1, SD2, SDXL, VAE_PREFIX
from core.loading.checkpoint import load_model, load_vae
from core.loading.prediction import decide_prediction
from tests.tiny_models import VAE, randomize, write_single_file


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    return write_single_file("sd1", tmp_path_factory.mktemp("sd1") / "tiny.safetensors", seed=11)


def diffusers_vae():
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(**VAE).eval()


@pytest.mark.parametrize("form", ["diffusers folder", "diffusers-layout file", "original keys",
                                  "original keys with prefix"])
def test_standalone_vae_replaces_the_models_own(tmp_path, sd1_file, form):
    """The replacement decodes as diffusers does with the same weights (diffusers' converter for originals)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from core.loading.convert_vae import vae_config_from_diffusers
    from core.nets.vae import AutoencoderKL

    reference = diffusers_vae()
    if form.startswith("diffusers"):
        randomize(reference, seed=99)
        path = tmp_path / ("vae" if form == "diffusers folder" else "vae.safetensors")
        if form == "diffusers folder":
            reference.save_pretrained(path, safe_serialization=True)
        else:
            save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    else:
        original = randomize(AutoencoderKL(vae_config_from_diffusers(dict(reference.config))), seed=99).state_dict()
        prefix = VAE_PREFIX if form.endswith("prefix") else ""
        path = tmp_path / "vae.safetensors"
        save_file({prefix + k: v.contiguous() for k, v in original.items()}, path)
        converted = convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in original.items()},
                                               dict(reference.config))
        reference.load_state_dict(converted, strict=True)

    model = load_model(sd1_file)
    swapped = model.replace(vae=load_vae(path, scale_factor=model.family.latent_scale))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference.decode(z).sample
        diff = ((swapped.vae.decode(z) - ref).abs().max() / ref.abs().max()).item()
    assert diff <= 1e-4
    assert swapped.vae.config.scale_factor == SD1.latent_scale
    assert model.vae is not swapped.vae and swapped.unet is model.unet  # the rest is shared, not reloaded


def test_model_can_load_in_half_precision(sd1_file):
    model = load_model(sd1_file, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert next(model.vae.parameters()).dtype == torch.bfloat16
    assert next(model.text_encoder.parameters()).dtype == torch.bfloat16


def test_bad_prediction_override_is_refused(sd1_file):
    with pytest.raises(LatentDeskError, match="prediction type"):
        load_model(sd1_file, prediction="x0")


class FakeUNet(torch.nn.Module):
    """Returns its input shifted by `offset`: the probe reads only that."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(in_channels=4, context_dim=8, adm_in_channels=None)

    def forward(self, x, t, context, y=None):
        return x + self.offset


@pytest.mark.parametrize("metadata,keys,scheduler,family,offset,expected", [
    ({"modelspec.prediction_type": "v"}, [], None, SD1, 0.0, ("v", "file metadata (modelspec.prediction_type)")),
    ({"modelspec.prediction_type": "epsilon"}, [], "v_prediction", SD2, -5.0,
     ("epsilon", "file metadata (modelspec.prediction_type)")),
    ({"ss_v_parameterization": "True"}, [], None, SD2, 0.0, ("v", "file metadata (ss_v_parameterization)")),
    ({}, ["v_pred"], None, SDXL, 0.0, ("v", "v_pred marker tensor")),
    ({}, [], "v_prediction", SD2, 0.0, ("v", "scheduler config (prediction_type)")),
    ({}, [], "epsilon", SD2, -5.0, ("epsilon", "scheduler config (prediction_type)")),
    ({}, [], None, SD2, -5.0, ("v", "one-step probe")),
    ({}, [], None, SD2, 0.0, ("epsilon", "one-step probe")),
    ({}, [], None, SD1, -5.0, ("epsilon", "Stable Diffusion 1.x default")),
])
def test_prediction_signals_in_order_of_strength(metadata, keys, scheduler, family, offset, expected):
    assert decide_prediction(None, metadata, keys, scheduler, family, FakeUNet(offset)) == expected


def test_v_pred_marker_in_a_real_file(tmp_path, sd1_file):
    state = load_file(sd1_file)
    state["v_pred"] = torch.zeros(0)
    path = tmp_path / "vmodel.safetensors"
    save_file(state, path)
    assert load_model(path).prediction == "v"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "app.cli.commands", *args], capture_output=True, text=True, timeout=300)


def test_cli_inspect_reports_the_model(sd1_file):
    result = run_cli("inspect", str(sd1_file), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["family"], report["prediction"]) == ("sd1", "epsilon")
    assert report["parameters"]["unet"] > 0


def test_cli_bad_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"\x80\x04junk")
    result = run_cli("inspect", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pickle" in lines[0] and str(bad) in lines[0]


def embedded_model(tmp_path, heads: int = 2, text_heads: int = 4, **changes):
    """A tiny SD1-layout file that states its own config (as `latentdesk train` exports)."""
    from core.families import UNET_PREFIX
    from core.loading import embedded_config
    from core.loading.convert_unet import unet_config_from_shapes
    from core.loading.convert_vae import vae_config_from_shapes

    path = write_single_file("sd1", tmp_path / "base.safetensors", seed=3)
    state = load_file(path)
    shapes = {k[len(UNET_PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(UNET_PREFIX)}
    unet = replace(unet_config_from_shapes(shapes, SD1.heads_for), num_heads=(heads, heads))
    vae_shapes = {k[len(VAE_PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(VAE_PREFIX)}
    vae = vae_config_from_shapes(vae_shapes, 0.5)
    text = json.loads(embedded_config.to_metadata("sd1", unet, vae, {"num_attention_heads": text_heads},
                                                  default_size=128, default_guidance=4.5))
    text.update(changes)
    out = tmp_path / "stated.safetensors"
    save_file(state, out, metadata={embedded_config.KEY: json.dumps(text)})
    return out


def test_a_model_that_states_its_config_is_built_as_stated(tmp_path):
    model = load_model(embedded_model(tmp_path))
    assert model.unet.config.num_heads == (2, 2)  # shapes alone would give SD1's 8 heads
    assert model.text_encoder.models[0].config.num_attention_heads == 4
    assert (model.family.default_size, model.family.default_guidance, model.family.latent_scale) == (128, 4.5, 0.5)
    assert model.vae.config.scale_factor == 0.5


@pytest.mark.parametrize("changes,words", [
    ({"format": 9}, "format 1"),
    ({"family": "sd9"}, "unknown family"),
    ({"family": "sdxl"}, "laid out as sd1"),
    ({"unet": {"model_channels": 32, "wings": 2}}, "unknown settings ['wings']"),
    ({"vae": None}, "vae is missing"),
    ({"text_encoder": {"num_attention_heads": 5}}, "does not split into 5 heads"),
    ({"zero_terminal_snr": "yes"}, "zero_terminal_snr must be true or false"),
    ({"pooled_text_y": 1}, "pooled_text_y must be true or false"),
    ({"pooled_text_y": True}, "pooled_text_y needs a UNet with adm_in_channels"),
])
def test_bad_stated_config_is_refused(tmp_path, changes, words):
    path = embedded_model(tmp_path, **changes)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_unparseable_stated_config(tmp_path, sd1_file):
    path = tmp_path / "bad.safetensors"
    save_file(load_file(sd1_file), path, metadata={"latentdesk.config": "{not json"})
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(path)


def test_unet_or_text_encoder_can_come_from_another_checkpoint(tmp_path, sd1_file):
    from core.loading.checkpoint import replace_parts
    from tests.tiny_models import write_diffusers_folder

    model = load_model(sd1_file)
    donor_file = write_single_file("sd1", tmp_path / "donor.safetensors", seed=12)
    donor = load_model(donor_file)
    swapped = replace_parts(model, donor_file, ("unet",))
    assert swapped.vae is model.vae and swapped.text_encoder is model.text_encoder
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([300.0]), torch.randn(1, 77, 64)
    with torch.no_grad():
        assert torch.equal(swapped.unet(x, t, context), donor.unet(x, t, context))
        assert not torch.equal(swapped.unet(x, t, context), model.unet(x, t, context))

    folder = write_diffusers_folder("sd1", tmp_path / "donor-folder", seed=13)
    with_text = replace_parts(model, folder, ("text_encoder",))
    assert with_text.unet is model.unet
    assert not torch.equal(with_text.text_encoder.encode("a cat")[0], model.text_encoder.encode("a cat")[0])


def test_parts_from_another_family_are_refused(tmp_path, sd1_file):
    from core.loading.checkpoint import replace_parts
    other = write_single_file("sdxl", tmp_path / "xl.safetensors", seed=1)
    with pytest.raises(ModelLoadError, match="Stable Diffusion XL"):
        replace_parts(load_model(sd1_file), other, ("unet",))
    with pytest.raises(LatentDeskError, match="unknown model parts"):
        replace_parts(load_model(sd1_file), other, ("lora",))
