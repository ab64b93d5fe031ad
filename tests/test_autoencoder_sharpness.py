"""Stage 1's sharpening terms (issue #26): the edge loss, the patch critic trained against the autoencoder
in one backward, and the edge-sharpness figure that tells a blurred decoder from a sharp one."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from core.train.autoencoder import AutoencoderLoss, AutoencoderStage, train_autoencoder
from core.train.data import BatchRandom
from core.train.loop import train
from core.train.sharpness import PatchDiscriminator, edge_loss, edge_sharpness, hinge_losses
from tests.test_train import ONE, VAE, Pictures, losses, settings


class Through:
    """A stand-in autoencoder: the image back, optionally blurred by a 5x5 box."""

    def __init__(self, blur: bool):
        self.blur, self.weight = blur, torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.weight])

    def encode(self, x):
        return type("Posterior", (), {"mean": x})()

    def decode(self, x):
        return F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False) if self.blur else x


def test_edge_sharpness_is_one_for_a_perfect_decoder_and_drops_with_a_blur():
    data = Pictures(4)
    assert edge_sharpness(Through(blur=False), data, 4)["edge_sharpness"] == pytest.approx(1.0)
    blurred = edge_sharpness(Through(blur=True), data, 4)
    assert blurred["edge_sharpness"] < 0.5 and blurred["edge_pixels"] > 0


def test_edge_loss_charges_a_blur_and_not_an_offset():
    images = Pictures(2)[0][0][None]
    assert float(edge_loss(images + 0.3, images)) == pytest.approx(0.0, abs=1e-6)   # same gradients
    assert float(edge_loss(Through(blur=True).decode(images), images)) > 0.01


def test_one_backward_trains_the_critic_and_the_autoencoder_each_against_the_other():
    torch.manual_seed(0)
    critic = PatchDiscriminator(8)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    recon = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()

    def grads(pick):
        critic.zero_grad()
        recon.grad = None
        critic_loss, fool = hinge_losses(critic, images, recon)
        pick(critic_loss, fool).backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in critic.parameters()], \
            recon.grad.clone() if recon.grad is not None else torch.zeros_like(recon)

    critic_both, recon_both = grads(lambda c, f: c + f)
    critic_only, _ = grads(lambda c, f: c + 0 * f)
    _, fool_only = grads(lambda c, f: 0 * c + f)
    for both, alone in zip(critic_both, critic_only, strict=True):
        torch.testing.assert_close(both, alone)              # the fooling term leaves the critic alone
    torch.testing.assert_close(recon_both, fool_only)        # the critic's loss sees the reconstruction detached
    assert float(recon_both.abs().sum()) > 0


def test_a_sharpened_stage_trains_resumes_and_exports_only_the_autoencoder(tmp_path):
    loss = AutoencoderLoss(crop=32, edge_weight=1.0, adversarial_weight=0.1, adversarial_start=2, critic_channels=8)
    stage = AutoencoderStage(VAE, Pictures(4), "pictures", loss)
    first = stage.inputs([0, 1], BatchRandom(0, 1, 2, slice(0, 2)))["adversarial"]
    later = stage.inputs([0, 1], BatchRandom(0, 2, 2, slice(0, 2)))["adversarial"]
    assert first.tolist() == [0.0, 0.0] and later.tolist() == [1.0, 1.0]

    report = train_autoencoder(stage, settings(steps=4, checkpoint_every=2), tmp_path / "run", Pictures(4),
                               scale_images=4, eval_images=4, processes=ONE)
    assert 0 < report["edge_sharpness"] < 2 and report["psnr_db"] > 0
    logged = (tmp_path / "run" / "loss.jsonl").read_text()
    assert '"critic"' in logged and '"edge"' in logged
    from safetensors import safe_open
    with safe_open(tmp_path / "run" / "autoencoder.safetensors", framework="pt") as f:
        assert not [k for k in f.keys() if "critic" in k]

    # A second stage with the same settings resumes the run's checkpoint, critic included.
    again = AutoencoderStage(VAE, Pictures(4), "pictures", loss)
    train(again, settings(steps=6, checkpoint_every=2), tmp_path / "run", ONE, io.StringIO())
    assert len(losses(tmp_path / "run")) == 6


def test_runs_without_the_new_terms_describe_themselves_as_before():
    assert set(AutoencoderLoss().description()) == {"kl_weight", "mse_weight", "crop"}
    assert AutoencoderLoss(edge_weight=0.5).description()["edge_weight"] == 0.5
    assert AutoencoderStage(VAE, Pictures(1), "p").objective.critic is None


def test_a_frozen_encoder_stops_at_the_critics_start_and_the_decoder_goes_on(tmp_path):
    """freeze_encoder: from adversarial_start on, the encoder's weights (and quant_conv's) stay exactly as
    they were, the decoder's keep learning, and resuming past the start keeps the encoder frozen."""
    loss = AutoencoderLoss(crop=32, adversarial_weight=0.1, adversarial_start=2, critic_channels=8,
                           freeze_encoder=True)

    def weights(stage):
        vae = stage.objective.vae
        encoder = torch.cat([p.detach().flatten() for m in (vae.encoder, vae.quant_conv) for p in m.parameters()])
        return encoder.clone(), torch.cat([p.detach().flatten() for p in vae.decoder.parameters()]).clone()

    stage = AutoencoderStage(VAE, Pictures(4), "pictures", loss)
    train(stage, settings(steps=2, checkpoint_every=2), tmp_path / "run", ONE, io.StringIO())
    encoder_at_start, decoder_at_start = weights(stage)
    resumed = AutoencoderStage(VAE, Pictures(4), "pictures", loss)
    train(resumed, settings(steps=5, checkpoint_every=2), tmp_path / "run", ONE, io.StringIO())
    encoder_after, decoder_after = weights(resumed)
    assert torch.equal(encoder_after, encoder_at_start)
    assert not torch.allclose(decoder_after, decoder_at_start)

    # Without the flag the same run moves the encoder too.
    moving = AutoencoderStage(VAE, Pictures(4), "pictures", replace(loss, freeze_encoder=False))
    train(moving, settings(steps=2, checkpoint_every=2), tmp_path / "free", ONE, io.StringIO())
    before, _ = weights(moving)
    train(moving, settings(steps=5, checkpoint_every=2), tmp_path / "free", ONE, io.StringIO())
    assert not torch.allclose(weights(moving)[0], before)
