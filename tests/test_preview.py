"""Preview modes (app/preview.py) and the fitted latent→RGB map (core/nets/latent_rgb.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.jobs import PreviewMode, ReadyModel
from app.preview import AutoPreview, FastPreview, TinyPreview, VaePreview, keep_last_frame, make_previewer
from core.generate import StepInfo
from core.nets.latent_rgb import LatentToRGB, fit_latent_to_rgb
from core.nets.preview_decoder import PreviewDecoder, PreviewDecoderConfig

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
    from core.nets.vae import VAEConfig
    from core.train.autoencoder import build_autoencoder

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


def tiny_decoder() -> PreviewDecoder:
    return PreviewDecoder(PreviewDecoderConfig(latent_channels=4, factor=8, width=8)).eval()


def qimage_array(image) -> np.ndarray:
    """An RGB888 QImage's pixels as (H, W, 3) uint8, its row padding dropped."""
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, :3 * image.width()].reshape(image.height(), image.width(), 3)


def test_tiny_preview_is_full_size_and_shows_the_decoders_own_output():
    torch.manual_seed(0)
    decoder = tiny_decoder()
    shown = step(side=5)
    image = TinyPreview(decoder)(shown, noisy=False)
    assert (image.width(), image.height()) == (40, 40)               # 5 latent pixels × 8, like the VAE
    with torch.no_grad():
        out = decoder(shown.denoised[:1])[0]                         # the clean prediction, not the noisy x
    expected = ((out / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert 0 < expected.std()                                         # a random net: the check sees real pixels
    assert np.array_equal(qimage_array(image), expected)


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


def test_auto_counts_the_between_previews_time_against_its_budget():
    """A between-previewer costing 5 % of a step leaves 3 % of the 8 % for VAE decodes; each takes
    0.25 s in place of a 0.05 s between-preview, so at most 0.03 / 0.2 = 15 % of 40 steps, 6, decode.
    Counting only the decodes' time would allow 0.08 / 0.25 = 32 %, about 12."""
    clock = FakeClock()
    kinds = []

    def vae(step, noisy):
        kinds.append("vae")
        clock.now += 0.25

    def between(step, noisy):
        kinds.append("between")
        clock.now += 0.05

    auto = AutoPreview(vae, between, share=0.08, clock=clock)
    for i in range(40):
        clock.now += 1.0
        auto(step(i), noisy=False)
    sampling = 40 * 1.0
    assert 2 <= kinds.count("vae") <= 6 and len(kinds) == 40
    assert auto.spent == pytest.approx(clock.now - sampling)              # every preview's time is counted
    assert auto.spent <= 0.08 * sampling + 0.05                           # within budget but for one step


def test_auto_with_a_costly_tiny_decoder_keeps_the_last_frame_between_its_frames():
    """TAESD on SD1.5 at 512 px costs ~14 % of a step on 2 cores: Auto shows about every other frame and
    nothing in between, so the window keeps the last sharp one instead of flickering to a blur."""
    clock = FakeClock()
    shown = []

    def tiny(step, noisy):
        clock.now += 0.14
        return f"frame {step.i}"

    auto = AutoPreview(tiny, keep_last_frame, share=0.08, clock=clock)
    for i in range(40):
        clock.now += 1.0
        shown.append(auto(step(i), noisy=False))
    frames = [image for image in shown if image is not None]
    assert shown[0] is None and 15 <= len(frames) <= 23      # 0.08 * 40 / 0.14 = 22.9 at most
    assert auto.spent <= 0.08 * 40 + 0.14


def test_auto_never_decodes_when_the_between_preview_alone_spends_the_budget():
    clock = FakeClock()
    kinds = []

    def between(step, noisy):
        kinds.append("between")
        clock.now += 0.2               # more than the whole 8 % share of a 1 s step

    auto = AutoPreview(lambda s, n: kinds.append("vae"), between, share=0.08, clock=clock)
    for i in range(20):
        clock.now += 1.0
        auto(step(i), noisy=False)
    assert kinds == ["between"] * 20


def loaded_with(latent_rgb: bool, decoder: bool) -> ReadyModel:
    mapping = LatentToRGB(TRUE_WEIGHT, TRUE_BIAS, 1.0) if latent_rgb else None
    return ReadyModel(SimpleNamespace(vae=LinearVae()), "builtin", None, mapping,
                       tiny_decoder() if decoder else None)


@pytest.mark.parametrize("mode,kind", [(PreviewMode.VAE, VaePreview), (PreviewMode.TINY, TinyPreview),
                                       (PreviewMode.FAST, FastPreview), (PreviewMode.AUTO, AutoPreview),
                                       (PreviewMode.OFF, type(None))])
def test_each_mode_has_its_previewer(mode, kind):
    from core.model import DiffusionModel

    # Without a tiny decoder, so that Auto is the budgeted mix (with one, Auto is the tiny decoder: below).
    assert isinstance(make_previewer(mode, loaded_with(latent_rgb=True, decoder=mode is PreviewMode.TINY)), kind)
    assert DiffusionModel  # the real type is what ReadyModel holds in the app; a stand-in suffices here


def test_the_menu_lists_tiny_between_vae_and_fast():
    assert [mode.label for mode in PreviewMode] == ["Auto", "VAE every step", "Tiny decoder", "Fast", "Off"]


@pytest.mark.parametrize("latent_rgb,decoder,tiny_kind,auto_kind", [
    (True, True, TinyPreview, AutoPreview),       # a tiny decoder: Auto shows it within the budget, never the VAE
    (True, False, FastPreview, AutoPreview),      # no decoder file: the fast map stands in for it
    (False, False, VaePreview, VaePreview),       # nothing cheaper: the VAE every step
])
def test_tiny_and_auto_fall_back_to_what_the_model_has(latent_rgb, decoder, tiny_kind, auto_kind):
    loaded = loaded_with(latent_rgb, decoder)
    assert type(make_previewer(PreviewMode.TINY, loaded)) is tiny_kind
    auto = make_previewer(PreviewMode.AUTO, loaded)
    assert type(auto) is auto_kind
    if auto_kind is AutoPreview:
        assert (type(auto.full), type(auto.between)) == ((TinyPreview, type(keep_last_frame)) if decoder
                                                         else (VaePreview, FastPreview))
    assert type(make_previewer(PreviewMode.VAE, loaded)) is VaePreview    # VAE every step stays the VAE


def test_auto_without_a_fitted_map_decodes_every_step():
    loaded = ReadyModel(SimpleNamespace(vae=LinearVae()), "x", None, None)
    assert isinstance(make_previewer(PreviewMode.AUTO, loaded), VaePreview)
    assert make_previewer(PreviewMode.FAST, loaded) is None
