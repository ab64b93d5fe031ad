"""Preview modes (app/preview.py) and the fitted latent→RGB map (core/latent_rgb.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.jobs import LoadedModel, PreviewMode
from app.preview import AutoPreview, FastPreview, VaePreview, make_previewer
from core.generate import StepInfo
from core.latent_rgb import LatentToRGB, fit_latent_to_rgb

# Small enough that the decoded colours stay inside [-1, 1], where the fit does not clip them.
TRUE_WEIGHT = 0.25 * torch.tensor([[0.5, -0.2, 0.1, 0.0], [0.1, 0.4, -0.3, 0.2], [-0.2, 0.1, 0.2, 0.5]])
TRUE_BIAS = torch.tensor([0.1, -0.05, 0.2])


class LinearVae(nn.Module):
    """A 'VAE' whose decoder is exactly a per-pixel linear map, upsampled 8x: the fit must recover it."""

    config = SimpleNamespace(z_channels=4)

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))   # something for next(parameters()) to find

    def decode_latents(self, latents):
        rgb = torch.einsum("oc,bchw->bohw", TRUE_WEIGHT, latents) + TRUE_BIAS[None, :, None, None]
        return F.interpolate(rgb, scale_factor=8, mode="nearest")


def step(i: int = 3, side: int = 4) -> StepInfo:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(1, 4, side, side, generator=g)
    return StepInfo(i, 20, x, x * 0.1, 2.0, 5.0)


def test_fit_recovers_a_linear_decoder_exactly():
    fitted = fit_latent_to_rgb(LinearVae())
    assert torch.allclose(fitted.weight, TRUE_WEIGHT, atol=1e-4)
    assert torch.allclose(fitted.bias, TRUE_BIAS, atol=1e-4)
    assert fitted.r2 > 0.999


def test_fit_on_a_real_vae_explains_most_of_the_colour():
    from core.train.autoencoder import build_autoencoder
    from core.vae import VAEConfig

    vae = build_autoencoder(VAEConfig(base_channels=8, channel_mult=(1, 1, 1, 1), num_res_blocks=1, norm_groups=4,
                                      scale_factor=0.5), seed=0).eval()
    fitted = fit_latent_to_rgb(vae)
    assert fitted.weight.shape == (3, 4) and 0 < fitted.r2 <= 1


def test_fast_preview_is_one_pixel_per_latent_pixel():
    mapping = LatentToRGB(TRUE_WEIGHT, TRUE_BIAS, 1.0)
    image = FastPreview(mapping)(step(side=6), noisy=False)
    assert (image.width(), image.height()) == (6, 6)
    expected = ((mapping(step(side=6).denoised[0]) / 2 + 0.5).clamp(0, 1) * 255).round()
    assert image.pixelColor(2, 1).red() == int(expected[0, 1, 2])


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_auto_spends_at_most_its_share_on_vae_decodes():
    clock = FakeClock()
    calls = []
    step_seconds, decode_seconds = 1.0, 0.25

    def vae(step, noisy):
        calls.append(("vae", step.i))
        clock.now += decode_seconds

    def fast(step, noisy):
        calls.append(("fast", step.i))

    auto = AutoPreview(vae, fast, share=0.1, clock=clock)
    for i in range(40):
        clock.now += step_seconds            # the sampler's step
        auto(step(i), noisy=False)
    decodes = [i for kind, i in calls if kind == "vae"]
    assert len(calls) == 40 and decodes                          # every step shows something
    assert auto.spent <= 0.1 * (clock.now - auto.spent) + 1e-9   # within budget over the whole run
    assert 12 <= len(decodes) <= 16                              # 0.1 * 40 s / 0.25 s = 16 at most
    assert calls[0] == ("fast", 0)                               # step time unknown at the first step


def test_auto_decodes_every_step_when_decoding_is_nearly_free():
    clock = FakeClock()
    kinds = []
    auto = AutoPreview(lambda s, n: kinds.append("vae"), lambda s, n: kinds.append("fast"), share=0.1, clock=clock)
    for i in range(10):
        clock.now += 1.0
        auto(step(i), noisy=False)
    assert kinds == ["fast"] + ["vae"] * 9


@pytest.mark.parametrize("mode,kind", [(PreviewMode.VAE, VaePreview), (PreviewMode.FAST, FastPreview),
                                       (PreviewMode.AUTO, AutoPreview), (PreviewMode.OFF, type(None))])
def test_each_mode_has_its_previewer(mode, kind):
    from core.model import DiffusionModel

    model = SimpleNamespace(vae=LinearVae())
    loaded = LoadedModel(model, "builtin", None, LatentToRGB(TRUE_WEIGHT, TRUE_BIAS, 1.0))
    assert isinstance(make_previewer(mode, loaded), kind)
    assert DiffusionModel  # the real type is what LoadedModel holds in the app; a stand-in suffices here


def test_auto_without_a_fitted_map_decodes_every_step():
    loaded = LoadedModel(SimpleNamespace(vae=LinearVae()), "x", None, None)
    assert isinstance(make_previewer(PreviewMode.AUTO, loaded), VaePreview)
    assert make_previewer(PreviewMode.FAST, loaded) is None
