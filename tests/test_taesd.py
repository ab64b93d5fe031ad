"""TAESD's decoder (core/nets/taesd.py) against diffusers' AutoencoderTiny, in both file layouts, and where the
app looks for it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ModelLoadError
from core.families import SD1, SD2, SDXL
from core.loading.preview_decoders import load_preview_decoder, preview_decoder_path
from core.nets.taesd import TaesdDecoder, taesd_file_for
from tests.tiny_models import randomize

DIFFUSERS_DECODER = "decoder.layers."


def reference(latent_channels: int = 4):
    """diffusers' AutoencoderTiny at TAESD's published sizes, random weights small enough not to saturate."""
    from diffusers import AutoencoderTiny

    return randomize(AutoencoderTiny(latent_channels=latent_channels), seed=3).eval()


def original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder's tensors as TAESD's own `taesd_decoder.safetensors` names them: its Sequential
    starts with the clamp (no tensors), so every layer sits one index later than in diffusers."""
    out = {}
    for name, value in state.items():
        if name.startswith(DIFFUSERS_DECODER):
            index, _, rest = name.removeprefix(DIFFUSERS_DECODER).partition(".")
            out[f"{int(index) + 1}.{rest}"] = value
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("taesd")
    ae = reference()
    state = {k: v.contiguous() for k, v in ae.state_dict().items()}
    save_file(state, folder / "diffusers.safetensors")                 # encoder and decoder, diffusers' names
    save_file(original_layout(state), folder / "taesd_decoder.safetensors")
    return ae, folder


@pytest.mark.parametrize("layout", ["diffusers", "taesd_decoder"])
def test_decodes_as_diffusers_autoencoder_tiny_does(files, layout):
    ae, folder = files
    decoder = load_preview_decoder(folder / f"{layout}.safetensors", latent_channels=4, factor=8)
    assert isinstance(decoder, TaesdDecoder)
    latents = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        expected = ae.decode(latents).sample
        got = decoder(latents)
    assert got.shape == (2, 3, 48, 40)
    assert expected.std() > 0.05                        # not a constant image that any wiring would match
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # bf16 latents (a model in bfloat16) are cast to the decoder's float32
    assert decoder(latents.bfloat16()).dtype == torch.float32


def test_refuses_other_latents_another_factor_and_missing_tensors(files, tmp_path):
    ae, folder = files
    path = folder / "taesd_decoder.safetensors"
    with pytest.raises(ModelLoadError, match="4-channel latents; this model's VAE makes 16"):
        load_preview_decoder(path, latent_channels=16, factor=8)
    with pytest.raises(ModelLoadError, match="upscales 8x; this model's VAE 2x"):
        load_preview_decoder(path, latent_channels=4, factor=2)
    state = original_layout(ae.state_dict())
    del state["19.weight"]                                # the last convolution
    save_file(state, tmp_path / "cut.safetensors")
    with pytest.raises(ModelLoadError, match=r"missing \['19.weight'\]"):
        load_preview_decoder(tmp_path / "cut.safetensors", 4, 8)
    save_file({"1.weight": torch.zeros(4096, 4, 1, 1), "3.conv.0.weight": torch.zeros(1)}, tmp_path / "wide.safetensors")
    with pytest.raises(ModelLoadError, match="4096 channels wide"):
        load_preview_decoder(tmp_path / "wide.safetensors", 4, 8)
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ModelLoadError, match="neither .* nor TAESD's tensors"):
        load_preview_decoder(tmp_path / "other.safetensors", 4, 8)


def test_only_stable_diffusion_latents_get_taesd():
    assert taesd_file_for(SD1.name, 0.18215) == taesd_file_for(SD2.name, 0.18215) == "taesd_decoder.safetensors"
    assert taesd_file_for(SDXL.name, 0.13025) == "taesdxl_decoder.safetensors"
    # a model trained with its own autoencoder (the built-in one: 0.17575) has another latent space
    assert taesd_file_for(SD1.name, 0.17575) is None
    assert taesd_file_for(SDXL.name, 0.18215) is None


def fake_model(family, scale: float = 0.18215, factor: int = 8, channels: int = 4):
    config = SimpleNamespace(scale_factor=scale, downsample_factor=factor, z_channels=channels)
    return SimpleNamespace(family=family, vae=SimpleNamespace(config=config), device=torch.device("cpu"))


def test_the_app_finds_taesd_beside_a_stable_diffusion_model_and_its_own_decoder_first(files, tmp_path):
    from app.models import load_preview_decoder_beside, scan_models, tiny_decoder_note

    _, folder = files
    model = tmp_path / "sd15.safetensors"
    model.write_bytes(b"not read here")
    assert load_preview_decoder_beside(model, fake_model(SD1)) == (None, None)      # nothing beside it
    (tmp_path / "taesd_decoder.safetensors").write_bytes((folder / "taesd_decoder.safetensors").read_bytes())
    decoder, note = load_preview_decoder_beside(model, fake_model(SD1))
    assert isinstance(decoder, TaesdDecoder) and note is None
    assert "TAESD" in tiny_decoder_note(SimpleNamespace(preview_decoder=decoder))   # the Preview box's tooltip
    assert load_preview_decoder_beside(model, fake_model(SDXL, 0.13025)) == (None, None)   # needs taesdxl
    assert load_preview_decoder_beside(model, fake_model(SD1, 0.17575)) == (None, None)    # other latents
    decoder, note = load_preview_decoder_beside(model, fake_model(SD1, factor=2))
    assert decoder is None and "upscales 8x" in note and "fast map" in note
    # the model's own file wins over TAESD's
    preview_decoder_path(model).write_bytes(b"\x00" * 8)
    decoder, note = load_preview_decoder_beside(model, fake_model(SD1))
    assert decoder is None and str(preview_decoder_path(model)) in note
    # neither decoder is offered as a model
    assert scan_models(tmp_path) == [model]


def test_taesd_width_is_read_from_the_file(tmp_path):
    narrow = randomize(TaesdDecoder(latent_channels=4, width=16), seed=1)
    save_file({k: v.contiguous() for k, v in narrow.state_dict().items()}, tmp_path / "narrow.safetensors")
    loaded = load_preview_decoder(tmp_path / "narrow.safetensors", 4, 8)
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(loaded(x), narrow(x))

