"""Stage 1's sharpening terms (issue #26): the edge loss, the patch critic trained against the autoencoder
in one backward, and the edge-sharpness figure that tells a blurred decoder from a sharp one."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from core.errors import LatentDeskError
from core.train.autoencoder import AutoencoderLoss, AutoencoderStage, train_autoencoder
from core.train.data import BatchRandom
from core.train.loop import train
from core.train.sharpness import (
    PatchDiscriminator,
    detail_corners,
    edge_focus_weights,
    edge_loss,
    edge_sharpness,
    hinge_losses,
)
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
    loss = AutoencoderLoss(crop=32, edge_weight=1.0, adversarial_weight=0.1, finetune_start=2, critic_channels=8)
    stage = AutoencoderStage(VAE, Pictures(4), "pictures", loss)
    first = stage.inputs([0, 1], BatchRandom(0, 1, 2, slice(0, 2)))["finetune"]
    later = stage.inputs([0, 1], BatchRandom(0, 2, 2, slice(0, 2)))["finetune"]
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


def test_a_frozen_encoder_stops_at_the_finetunes_start_and_the_decoder_goes_on(tmp_path):
    """freeze_encoder: from finetune_start on, the encoder's weights (and quant_conv's) stay exactly as
    they were, the decoder's keep learning, and resuming past the start keeps the encoder frozen."""
    loss = AutoencoderLoss(crop=32, adversarial_weight=0.1, finetune_start=2, critic_channels=8,
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


def _square(size: int, top: int, left: int, side: int) -> torch.Tensor:
    """(3, size, size): a white square on black, in [-1, 1]."""
    image = -torch.ones(3, size, size)
    image[:, top:top + side, left:left + side] = 1
    return image


def test_edge_focus_weighs_the_pixels_near_edges_and_keeps_the_mean():
    image = _square(32, 10, 12, 8)[None]
    weights = edge_focus_weights(image, 10.0)
    assert weights.shape == (1, 1, 32, 32)
    assert float(weights.mean()) == pytest.approx(1.0)
    assert float(weights[0, 0, 10, 14]) == pytest.approx(11 * float(weights[0, 0, 0, 0]))  # on the edge vs far
    assert float(weights[0, 0, 0, 0]) == float(weights[0, 0, 31, 31])
    flat = -torch.ones(1, 3, 16, 16)
    torch.testing.assert_close(edge_focus_weights(flat, 10.0), torch.ones(1, 1, 16, 16))


def test_detail_crops_hold_the_whole_object_where_it_fits_and_stay_inside_it_where_not():
    small, large, flat = _square(64, 40, 5, 10), _square(64, 4, 8, 40), -torch.ones(3, 64, 64)
    images = torch.stack([small, large, flat])
    for draw in ([0.0, 0.0], [0.999, 0.999], [0.5, 0.25]):
        corners = detail_corners(images, 24, torch.tensor([draw] * 3))
        (top, left), (top_l, left_l), (top_f, left_f) = corners.tolist()
        assert top <= 40 and top + 24 >= 50 and left <= 5 and left + 24 >= 15       # the small square inside
        assert 3 <= top_l and top_l + 24 <= 45 and 7 <= left_l and left_l + 24 <= 49  # within the large one's box
        assert 0 <= top_f <= 40 and 0 <= left_f <= 40                                # no edges: anywhere
    assert detail_corners(images, 24, torch.tensor([[0.0, 0.0]] * 3)).tolist() != \
        detail_corners(images, 24, torch.tensor([[0.999, 0.999]] * 3)).tolist()


def test_the_finetune_crops_around_the_object_and_focuses_the_loss_only_from_its_start():
    loss = AutoencoderLoss(crop=16, edge_focus=10.0, detail_crops=True, finetune_start=2)
    data = [(_square(64, 40, 44, 8), "a square")] * 4
    stage = AutoencoderStage(VAE, data, "squares", loss)
    early = stage.inputs([0, 1, 2, 3], BatchRandom(0, 1, 4, slice(0, 4)))
    later = stage.inputs([0, 1, 2, 3], BatchRandom(0, 2, 4, slice(0, 4)))
    assert early["finetune"].tolist() == [0.0] * 4 and later["finetune"].tolist() == [1.0] * 4
    whole = (later["images"] > 0).flatten(1).sum(dim=1)
    assert whole.tolist() == [3 * 64] * 4                       # every crop holds the whole 8x8 square
    assert {"edge_focus", "detail_crops", "finetune_start"} <= set(loss.description())

    objective = stage.objective
    torch.manual_seed(0)
    noise = torch.randn(1, VAE.z_channels, 2, 2)
    image = later["images"][:1]
    on = objective(image, noise, torch.ones(1))["l1"]
    off = objective(image, noise, torch.zeros(1))["l1"]
    posterior = objective.vae.encode(image)
    plain = F.l1_loss(objective.vae.decode(posterior.mean + posterior.std * noise), image)
    torch.testing.assert_close(off, plain.detach())             # before the start: the plain loss
    assert float(on) != pytest.approx(float(off))


def test_the_ema_restarts_where_the_finetune_begins_and_resumes_past_it(tmp_path):
    """ema_restart: the EMA forgets the weights before that step. One step after a restart it equals the
    weights trained (its warm-up weighs them 0.9 against a shadow just set to them); without it, it lags."""
    def raw_and_ema(folder, steps, **changes):
        trained = train(AutoencoderStage(VAE, Pictures(4), "pictures", AutoencoderLoss(crop=32)),
                        settings(steps=steps, ema_decay=0.99, checkpoint_every=2, **changes), folder, ONE,
                        io.StringIO())
        raw = torch.cat([p.detach().flatten() for p in trained.objective.parameters()]).clone()
        return raw, torch.cat([p.detach().flatten() for p in trained.final().parameters()])

    raw, ema = raw_and_ema(tmp_path / "restart", 5, ema_restart=4)
    torch.testing.assert_close(ema, raw)
    raw, ema = raw_and_ema(tmp_path / "plain", 5)
    assert not torch.allclose(ema, raw)
    # Resumed from the checkpoint at step 4 (before the restart step ran), the restart still happens.
    raw_and_ema(tmp_path / "resumed", 4, ema_restart=4)
    raw, ema = raw_and_ema(tmp_path / "resumed", 5, ema_restart=4)
    torch.testing.assert_close(ema, raw)
    with pytest.raises(LatentDeskError, match="ema-restart"):
        settings(ema_restart=-1)


@pytest.mark.parametrize("bad", [{"edge_focus": -2.0}, {"edge_focus": float("nan")}, {"edge_weight": -1.0},
                                 {"adversarial_weight": float("inf")}, {"finetune_start": -5}])
def test_absurd_sharpening_settings_are_refused_with_their_name(bad):
    name = next(iter(bad)).replace("_", "-")
    with pytest.raises(LatentDeskError, match=name):
        AutoencoderLoss(**bad)


def test_a_finetune_starts_from_a_trained_autoencoder_at_its_step_and_keeps_its_encoder(tmp_path):
    """start_from: the run begins at finetune_start with the given weights (the encoder, frozen, stays them
    exactly; only the steps after the start run), its checkpoint says so, and a scratch run will not resume it."""
    loss = AutoencoderLoss(crop=32, edge_focus=10.0, finetune_start=3, freeze_encoder=True)
    trained = AutoencoderStage(VAE, Pictures(4), "pictures", seed=7).objective.vae   # stands in for a shipped one
    stage = AutoencoderStage(VAE, Pictures(4), "pictures", loss)
    first = stage.start_from(replace_scale(trained), "shipped.safetensors")
    assert first == 3
    done = train(stage, settings(steps=5, checkpoint_every=5), tmp_path / "run", ONE, io.StringIO(), first)
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()] == [4, 5]
    vae = done.objective.vae
    for part in ("encoder", "quant_conv"):
        for (name, p), q in zip(getattr(vae, part).named_parameters(), getattr(trained, part).parameters(), strict=True):
            assert torch.equal(p, q), name
    assert not torch.equal(vae.decoder.conv_out.weight, trained.decoder.conv_out.weight)
    meta = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert meta["step"] == 5 and meta["description"]["started_from"] == "shipped.safetensors"
    with pytest.raises(LatentDeskError, match="started_from"):
        train(AutoencoderStage(VAE, Pictures(4), "pictures", loss), settings(steps=6), tmp_path / "run", ONE,
              io.StringIO())


def replace_scale(vae):
    """A trained autoencoder carries its measured scale factor; seeding ignores it."""
    vae.config = replace(vae.config, scale_factor=0.2)
    return vae


def test_only_a_recipe_with_a_finetune_starts_from_a_trained_autoencoder_of_its_own_shape():
    trained = AutoencoderStage(VAE, Pictures(4), "pictures").objective.vae
    with pytest.raises(LatentDeskError, match="no fine-tune"):
        AutoencoderStage(VAE, Pictures(4), "pictures", AutoencoderLoss(crop=32)).start_from(trained, "x")
    other = AutoencoderStage(replace(VAE, base_channels=16), Pictures(4), "pictures").objective.vae
    with pytest.raises(LatentDeskError, match="not the shape"):
        AutoencoderStage(VAE, Pictures(4), "pictures", AutoencoderLoss(crop=32, finetune_start=2)).start_from(other, "x")
