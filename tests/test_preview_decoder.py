"""The tiny preview decoder: its shapes, its file, refusing bad files, and training it against a VAE."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ModelLoadError
from core.loading.preview_decoders import (
    CONFIG_KEY,
    load_preview_decoder,
    preview_decoder_path,
    save_preview_decoder,
)
from core.nets.preview_decoder import PreviewDecoder, PreviewDecoderConfig
from core.nets.vae import AutoencoderKL
from core.train.preview import PreviewDecoderStage, _blur, preview_psnr, teacher_pairs, train_preview_decoder
from core.train.settings import TrainSettings
from tests.test_train import VAE as TRAIN_VAE
from tests.test_train import Pictures

ROOT = Path(__file__).resolve().parents[1]
VAE = replace(TRAIN_VAE, scale_factor=0.5)   # test_train's tiny 8x VAE


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(VAE).eval().requires_grad_(False)


def test_output_is_full_size_for_each_factor():
    for factor, channels in ((8, 4), (2, 4), (4, 16)):
        decoder = PreviewDecoder(PreviewDecoderConfig(latent_channels=channels, factor=factor, width=8))
        out = decoder(torch.randn(2, channels, 5, 6))
        assert out.shape == (2, 3, 5 * factor, 6 * factor)


def test_config_refuses_an_odd_factor_and_empty_sizes():
    with pytest.raises(ValueError, match="even"):
        PreviewDecoderConfig(factor=3)
    with pytest.raises(ValueError, match=">= 1"):
        PreviewDecoderConfig(width=0)


def test_file_round_trip_keeps_outputs_and_metadata(tmp_path):
    torch.manual_seed(1)
    decoder = PreviewDecoder(PreviewDecoderConfig(width=8, blocks=2)).eval()
    path = save_preview_decoder(tmp_path / "m.preview.safetensors", decoder, {"latentdesk.preview_for": "m"})
    loaded = load_preview_decoder(path, latent_channels=4, factor=8)
    z = torch.randn(1, 4, 4, 4)
    assert loaded.config == decoder.config
    assert torch.equal(loaded(z), decoder(z))
    assert not any(p.requires_grad for p in loaded.parameters())
    assert not list(tmp_path.glob("*.tmp"))   # written atomically, nothing left behind


def test_loading_refuses_files_it_cannot_use(tmp_path):
    decoder = PreviewDecoder(PreviewDecoderConfig(width=8))
    good = save_preview_decoder(tmp_path / "good.safetensors", decoder)
    with pytest.raises(ModelLoadError, match="4-channel latents; this model's VAE makes 16"):
        load_preview_decoder(good, latent_channels=16)
    with pytest.raises(ModelLoadError, match="upscales 8x; this model's VAE 4x"):
        load_preview_decoder(good, factor=4)

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(ModelLoadError, match="is not a preview decoder"):
        load_preview_decoder(plain)

    lying = tmp_path / "lying.safetensors"   # weights of width 8, config saying 16
    save_file(decoder.state_dict(), lying, {CONFIG_KEY: json.dumps({"width": 16})})
    with pytest.raises(ModelLoadError, match="does not match its config"):
        load_preview_decoder(lying)

    garbled = tmp_path / "garbled.safetensors"
    save_file(decoder.state_dict(), garbled, {CONFIG_KEY: "{not json"})
    with pytest.raises(ModelLoadError, match="unreadable preview-decoder config"):
        load_preview_decoder(garbled)

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3 + b"random bytes that are no safetensors header")
    with pytest.raises(ModelLoadError):
        load_preview_decoder(junk)


def test_preview_decoder_lives_beside_its_model(tmp_path):
    assert preview_decoder_path(tmp_path / "a.b.safetensors") == tmp_path / "a.b.preview.safetensors"
    folder = tmp_path / "diffusers-model"
    folder.mkdir()
    assert preview_decoder_path(folder) == folder / "preview.preview.safetensors"


def test_blur_keeps_flat_latents_and_smooths_an_impulse():
    flat = torch.full((2, 4, 8, 8), 0.7)
    assert torch.allclose(_blur(flat, torch.tensor([0.5, 2.0])), flat, atol=1e-6)
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 1.0
    blurred = _blur(impulse, torch.tensor([1.0]))
    assert blurred[0, 0, 4, 4] < 0.5 and blurred[0, 0, 4, 5] > 0
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_teacher_pairs_are_the_vaes_decodes_of_clean_blended_and_blurred_latents():
    vae = tiny_vae()
    data = Pictures(6, size=32)
    pairs = teacher_pairs(vae, data, 6, seed=0)
    assert pairs.latents.shape == (6, 4, 4, 4) and pairs.images.shape == (6, 3, 32, 32)
    clean = vae.encode_latents(torch.stack([data[i][0] for i in range(6)]), sample=False)
    assert torch.allclose(pairs.latents[0::3], clean[0::3])            # kind 0: the encoder's own latents
    assert not torch.allclose(pairs.latents[1::3], clean[1::3])        # kinds 1, 2: varied
    assert not torch.allclose(pairs.latents[2::3], clean[2::3])
    decoded = vae.decode_latents(pairs.latents).clamp(-1, 1)
    assert torch.allclose(pairs.images.float(), decoded, atol=2e-3)   # float16 storage


def test_training_makes_the_decoder_agree_with_the_vae(tmp_path):
    vae = tiny_vae()
    config = PreviewDecoderConfig(latent_channels=4, factor=8, width=16)
    settings = TrainSettings(steps=60, batch_size=8, lr=3e-3, seed=0, log_every=20, checkpoint_every=60)
    train_data, eval_data = (torch.utils.data.Subset(Pictures(30, size=32), r) for r in (range(24), range(24, 30)))
    held_out = teacher_pairs(vae, eval_data, 6, seed=1)
    untrained = PreviewDecoderStage(held_out, config, "pictures", "tiny").objective.decoder
    before = preview_psnr(untrained, held_out)["all"]
    report = train_preview_decoder(vae, "tiny", train_data, eval_data, "pictures", tmp_path, config, settings,
                                   items=24, eval_items=6)
    after = report["psnr_vs_vae_db"]["all"]
    assert after > before + 3, (before, after)
    assert set(report["psnr_vs_vae_db"]) == {"all", "clean", "blend", "blur"}
    decoder = load_preview_decoder(report["path"], latent_channels=4, factor=8)
    assert preview_psnr(decoder, held_out)["all"] == pytest.approx(after, abs=0.05)
    assert json.loads((tmp_path / "preview.json").read_text())["steps"] == 60
    log = [json.loads(line)["loss"] for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert log[-1] < log[0]


def test_cli_trains_a_models_preview_decoder_and_installs_it_beside_the_model(tmp_path):
    model = tmp_path / "mine.safetensors"
    shutil.copyfile(ROOT / "resources" / "models" / "builtin.safetensors", model)
    run = subprocess.run([sys.executable, "-m", "app.cli.commands", "train", "preview", "--model", str(model), "--shapes",
                          "--out", str(tmp_path / "run"), "--items", "6", "--eval-items", "3", "--steps", "2",
                          "--batch-size", "2", "--log-every", "1", "--install"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "dB against the VAE on 3 held-out images" in run.stdout
    installed = tmp_path / "mine.preview.safetensors"
    assert installed.is_file() and not list(tmp_path.glob("*.tmp"))
    decoder = load_preview_decoder(installed, latent_channels=4, factor=8)
    assert decoder(torch.zeros(1, 4, 16, 16)).shape == (1, 3, 128, 128)


def test_cli_install_never_replaces_a_decoder_unless_forced(tmp_path, capsys):
    from app.cli.commands import main

    model = tmp_path / "mine.safetensors"
    shutil.copyfile(ROOT / "resources" / "models" / "builtin.safetensors", model)
    theirs = tmp_path / "mine.preview.safetensors"
    theirs.write_bytes(b"the decoder the user had")
    train = ["train", "preview", "--model", str(model), "--shapes", "--out", str(tmp_path / "run"), "--items", "6",
             "--eval-items", "3", "--steps", "2", "--batch-size", "2", "--log-every", "1"]

    assert main([*train, "--install"]) == 2
    err = capsys.readouterr().err
    assert str(theirs) in err and "already" in err and "--force" in err and len(err.splitlines()) == 1
    assert theirs.read_bytes() == b"the decoder the user had"
    assert not (tmp_path / "run").exists()             # refused before any training
    assert main([*train, "--force"]) == 2 and "only goes with --install" in capsys.readouterr().err

    assert main([*train, "--install", "--force"]) == 0
    assert load_preview_decoder(theirs, latent_channels=4, factor=8) is not None     # replaced, as asked


def test_cli_trains_on_a_folder_of_images_holding_its_last_ones_out(tmp_path):
    from PIL import Image

    from tests.tiny_models import write_single_file

    model = write_single_file("sd1", tmp_path / "tiny.safetensors")   # a VAE of factor 2, 4 channels
    images = tmp_path / "pictures"
    images.mkdir()
    for i in range(10):
        Image.new("RGB", (72, 72), (25 * i, 200 - 15 * i, 90)).save(images / f"{i}.png")
    run = subprocess.run([sys.executable, "-m", "app.cli.commands", "train", "preview", "--model", str(model), "--data",
                          str(images), "--size", "64", "--out", str(tmp_path / "run"), "--steps", "3",
                          "--batch-size", "2", "--log-every", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "run" / "preview.json").read_text())
    assert report["eval_items"] == 2 and report["items"] == 8      # the last fifth held out, the rest trained on
    assert report["config"]["factor"] == 2 and report["config"]["latent_channels"] == 4
    assert not (tmp_path / "tiny.preview.safetensors").exists()   # installed only when asked


def test_cli_refuses_a_folder_of_one_image(tmp_path):
    from PIL import Image

    images = tmp_path / "one"
    images.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "a.png")
    run = subprocess.run([sys.executable, "-m", "app.cli.commands", "train", "preview", "--data", str(images),
                          "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "at least 2 images" in run.stderr
