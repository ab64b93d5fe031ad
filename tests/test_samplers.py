"""Samplers, the denoiser and classifier-free guidance.

- Parity: each sampler against the diffusers scheduler it names, both driving the same tiny random
  diffusers UNet from the same starting noise; diffusers runs its own loop (`scale_model_input`,
  `step`). Stochastic ones get the same noise: our noise sampler draws from a generator seeded as
  the one handed to diffusers' `step`, and both draw one tensor per step in step order.
- Analytic: a denoiser that knows the data (one point, or a unit Gaussian) checks where samplers
  must land and that the stochastic ones keep the data's variance.
- Guidance: UNet calls are counted and their batch sizes recorded.
"""

import dataclasses
import math
import types

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from diffusers.schedulers import scheduling_lms_discrete

from core.errors import LatentDeskError
from core.sampling.denoiser import Conditioning, Denoiser
from core.sampling.guidance import CFGDenoiser, GuidanceScale
from core.sampling.sampler_names import SAMPLER_NAMES
from core.sampling.samplers import (
    SAMPLERS,
    SamplerSpec,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sigmas_for,
)
from core.sampling.schedules import SD_SCHEDULE
from tests.test_schedules import SD_CONFIG

TOLERANCE = 1e-4  # max |ours − diffusers| ≤ TOLERANCE · max |diffusers|


def test_the_torch_free_name_list_is_the_samplers_in_their_order():
    """The window's menu and the PNG parser read SAMPLER_NAMES without importing torch; the engine's
    SAMPLERS must be the same names in the same order, or a menu entry would have no sampler behind it."""
    assert tuple(SAMPLERS) == SAMPLER_NAMES


def _gauss_legendre_quad(f, a, b, epsrel=None):
    """scipy.integrate.quad's (value, error) for the LMS integrands, which are cubics: 16 nodes are exact."""
    nodes, weights = np.polynomial.legendre.leggauss(16)
    a, b = float(a), float(b)
    return (b - a) / 2 * sum(w * float(f((b - a) / 2 * n + (a + b) / 2)) for n, w in zip(nodes, weights, strict=True)), 0.0


@pytest.fixture(scope="module")
def lms_scheduler():
    # scipy is not installed; diffusers' LMS only borrows its integrate.quad, the rest is diffusers' own
    saved = getattr(scheduling_lms_discrete, "integrate", None)
    scheduling_lms_discrete.integrate = types.SimpleNamespace(quad=_gauss_legendre_quad)
    yield scheduling_lms_discrete.LMSDiscreteScheduler
    if saved is None:
        del scheduling_lms_discrete.integrate
    else:
        scheduling_lms_discrete.integrate = saved


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8).eval()
    context = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 16×16 UNet gains nothing from threads, and loses 10× on a busy machine
    yield types.SimpleNamespace(unet=unet, context=context, latents=latents)
    torch.set_num_threads(threads)


def run_diffusers(tiny, scheduler, steps, seed=None, **step_options):
    scheduler.set_timesteps(steps)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    x = tiny.latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = tiny.unet(scheduler.scale_model_input(x, t), t, encoder_hidden_states=tiny.context).sample
            if generator is not None:
                step_options["generator"] = generator
            x = scheduler.step(out, t, x, **step_options).prev_sample
    return x


def run_ours(tiny, spec, steps, seed=None, prediction="epsilon"):
    denoiser = Denoiser(lambda x, t, context, y: tiny.unet(x, t, encoder_hidden_states=context).sample,
                        prediction, quantize=spec.quantize)
    cond = Conditioning(tiny.context)
    sigmas = spec.sigmas(steps)
    x = tiny.latents * spec.init_noise_sigma(sigmas)
    noise = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        noise = lambda sigma, sigma_next: torch.randn(x.shape, generator=generator)  # noqa: E731
    return spec(lambda x, sigma: denoiser(x, sigma, cond), x, sigmas, noise=noise)


def relative_diff(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


DDIM_ETA_1 = SamplerSpec(sample_ddim, "leading", options={"eta": 1.0}, stochastic=True, vp_start=True)
# (our sampler, diffusers scheduler class or fixture name, its config, step() options, noise seed)
PARITY = {
    "Euler": (SAMPLERS["Euler"], EulerDiscreteScheduler, {}, {}, None),
    "Heun": (SAMPLERS["Heun"], HeunDiscreteScheduler, {}, {}, None),
    "LMS": (SAMPLERS["LMS"], "lms_scheduler", {}, {}, None),
    "DDIM": (SAMPLERS["DDIM"], DDIMScheduler, {"set_alpha_to_one": True}, {}, None),
    "DPM++ 2M": (SAMPLERS["DPM++ 2M"], DPMSolverMultistepScheduler, {}, {}, None),
    "DPM++ 2M Karras": (SAMPLERS["DPM++ 2M Karras"], DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, {},
                        None),
    "UniPC": (SAMPLERS["UniPC"], UniPCMultistepScheduler, {}, {}, None),
    "Euler a": (SAMPLERS["Euler a"], EulerAncestralDiscreteScheduler, {}, {}, 11),
    "DDPM": (SAMPLERS["DDPM"], DDPMScheduler, {}, {}, 12),
    "DDIM eta=1": (DDIM_ETA_1, DDIMScheduler, {"set_alpha_to_one": True}, {"eta": 1.0}, 13),
    "DPM++ 2M SDE Karras": (SAMPLERS["DPM++ 2M SDE Karras"], DPMSolverMultistepScheduler,
                            {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}, {}, 14),
    "LCM": (SAMPLERS["LCM"], LCMScheduler, {}, {}, 15),
}


@pytest.mark.parametrize("steps", [4, 9])
@pytest.mark.parametrize("case", PARITY)
def test_matches_diffusers(tiny, request, case, steps):
    spec, cls, config, step_options, seed = PARITY[case]
    if isinstance(cls, str):
        cls = request.getfixturevalue(cls)
    ref = run_diffusers(tiny, cls.from_config({**SD_CONFIG, **config}), steps, seed, **step_options)
    ours = run_ours(tiny, spec, steps, seed)
    assert relative_diff(ours, ref) <= TOLERANCE


@pytest.mark.parametrize("name, cls", [("Euler", EulerDiscreteScheduler), ("DPM++ 2M", DPMSolverMultistepScheduler),
                                       ("DDIM", DDIMScheduler), ("UniPC", UniPCMultistepScheduler)])
def test_v_prediction_matches_diffusers(tiny, name, cls):
    config = {**SD_CONFIG, "prediction_type": "v_prediction", "set_alpha_to_one": True}
    ref = run_diffusers(tiny, cls.from_config(config), 6)
    assert relative_diff(run_ours(tiny, SAMPLERS[name], 6, prediction="v"), ref) <= TOLERANCE
    # and the ε reading of the same network is a different model: the comparison is not vacuous
    assert relative_diff(run_ours(tiny, SAMPLERS[name], 6), ref) > 100 * TOLERANCE


def test_ddim_with_sds_own_final_alpha(tiny):
    # SD's config (set_alpha_to_one=False) ends DDIM at ᾱ_0, i.e. σ_min rather than 0, in DDPM's
    # scaling. We end at 0; the same sigma-form DDIM run on sigmas ending at σ_min reproduces it.
    ref = run_diffusers(tiny, DDIMScheduler.from_config(SD_CONFIG), 5)
    sigmas = SAMPLERS["DDIM"].sigmas(5)
    sigmas[-1] = SD_SCHEDULE.sigma_min
    denoiser = Denoiser(lambda x, t, context, y: tiny.unet(x, t, encoder_hidden_states=context).sample, "epsilon")
    x = tiny.latents * (sigmas[0] ** 2 + 1) ** 0.5
    ours = sample_ddim(lambda x, s: denoiser(x, s, Conditioning(tiny.context)), x, sigmas)
    assert relative_diff(ours / (sigmas[-1] ** 2 + 1) ** 0.5, ref) <= TOLERANCE


# --- analytic denoisers ---------------------------------------------------------------------------

def _seeded_noise(seed, shape=(1, 4, 32, 32)):
    generator = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(shape, generator=generator)


@pytest.mark.parametrize("name", SAMPLERS)
def test_point_data_lands_exactly_on_the_point(name):
    # data = one point x0*: D(x, σ) = x0* everywhere, so every sampler must end exactly there
    point = torch.linspace(-2, 2, 4 * 32 * 32).reshape(1, 4, 32, 32)
    spec = SAMPLERS[name]
    sigmas = spec.sigmas(7)
    x = torch.randn(1, 4, 32, 32) * spec.init_noise_sigma(sigmas)
    out = spec(lambda x, sigma: point.expand_as(x), x, sigmas, noise=_seeded_noise(0))
    torch.testing.assert_close(out, point, rtol=0, atol=1e-5)


def _unit_gaussian_denoiser(x, sigma):
    """Data ~ N(0, 1) per element: E[x0 | x0 + σε = x] = x / (1 + σ²)."""
    return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)


@pytest.mark.parametrize("name, steps", [("Euler a", 1000), ("DDPM", 1000), ("DPM++ 2M SDE Karras", 100)])
def test_stochastic_samplers_keep_the_data_variance(name, steps):
    spec = SAMPLERS[name]
    sigmas = spec.sigmas(steps)
    start = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    out = spec(_unit_gaussian_denoiser, start * spec.init_noise_sigma(sigmas), sigmas, noise=_seeded_noise(2))
    assert out.std().item() == pytest.approx(1.0, abs=0.02)
    # the fresh noise replaced the start (an ODE sampler's output here is a multiple of it: correlation 1)
    assert torch.corrcoef(torch.stack([out.flatten(), start.flatten()]))[0, 1] < 0.5


def test_ddpm_posterior_is_euler_ancestral():
    # two derivations of one step: DDPM's posterior q(x' | x, x̂0) and k-diffusion's Euler ancestral
    # (= DDIM at eta=1, Song et al. 2021, §4.1), fed the same noise
    sigmas = SD_SCHEDULE.sampler_sigmas(12, "leading")
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    ddpm = sample_ddpm(_unit_gaussian_denoiser, x, sigmas, noise=_seeded_noise(4))
    torch.testing.assert_close(sample_euler_ancestral(_unit_gaussian_denoiser, x, sigmas, noise=_seeded_noise(4)), ddpm)


# --- callbacks and cancelling ---------------------------------------------------------------------

class Cancelled(Exception):
    pass


@pytest.mark.parametrize("name", SAMPLERS)
def test_callback_once_per_step_after_its_model_calls(name):
    spec = SAMPLERS[name]
    sigmas = spec.sigmas(5)
    calls, steps = [], []

    def model(x, sigma):
        calls.append(sigma[0].item())
        return _unit_gaussian_denoiser(x, sigma)

    def callback(step):
        steps.append(step.i)
        assert step.sigma == sigmas[step.i]
        torch.testing.assert_close(step.denoised, _unit_gaussian_denoiser(step.x, step.sigma.reshape(1)), rtol=0,
                                   atol=1e-4, msg=lambda m: f"Step.x and Step.denoised belong together: {m}")
        # this step's model calls happened, all of them, and only at sigmas of this step
        assert calls[0] == pytest.approx(sigmas[step.i].item())
        assert all(sigmas[step.i + 1].item() <= s <= sigmas[step.i].item() for s in calls)
        calls.clear()

    spec(model, torch.randn(1, 4, 8, 8) * sigmas[0], sigmas, callback=callback, noise=_seeded_noise(0, (1, 4, 8, 8)))
    assert steps == list(range(5))


@pytest.mark.parametrize("name", SAMPLERS)
def test_exception_in_callback_cancels_at_that_step(name):
    spec = SAMPLERS[name]
    sigmas = spec.sigmas(6)
    calls = []

    def model(x, sigma):
        calls.append(sigma[0].item())
        return _unit_gaussian_denoiser(x, sigma)

    def callback(step):
        if step.i == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        spec(model, torch.randn(1, 4, 8, 8) * sigmas[0], sigmas, callback=callback)
    assert min(calls) >= sigmas[3].item()  # nothing ran past step 2
    assert max(calls) == pytest.approx(sigmas[0].item())


# --- the registry ---------------------------------------------------------------------------------

def test_registry_names_and_sigmas():
    assert {"Euler", "Euler a", "Heun", "LMS", "DDIM", "DDPM", "DPM++ 2M", "DPM++ 2M Karras",
            "DPM++ 2M SDE Karras", "UniPC", "LCM"} <= set(SAMPLERS)
    for name, spec in SAMPLERS.items():
        sigmas = sigmas_for(name, 8)
        assert sigmas.shape == (9,) and sigmas[-1] == 0, name
        assert spec.reference, name
    assert sigmas_for("DPM++ 2M Karras", 8)[0] == pytest.approx(SD_SCHEDULE.sigma_max)


def test_unknown_sampler_names_the_valid_ones():
    with pytest.raises(LatentDeskError, match="Unknown sampler 'Euler b'.*Euler a.*DPM\\+\\+ 2M Karras"):
        get_sampler("Euler b")
    with pytest.raises(LatentDeskError):
        sigmas_for("euler", 20)


def test_spec_passes_options_and_noise_only_where_used():
    seen = {}

    def fake(model, x, sigmas, callback=None, **kwargs):
        seen.update(kwargs)
        return x

    noise = _seeded_noise(0)
    SamplerSpec(fake, "linspace", options={"eta": 0.5}, stochastic=True)(None, torch.zeros(1), None, noise=noise)
    assert seen == {"eta": 0.5, "noise": noise}
    seen.clear()
    SamplerSpec(fake, "linspace")(None, torch.zeros(1), None, noise=noise)
    assert seen == {}


# --- the denoiser ---------------------------------------------------------------------------------

class RecordingUNet:
    """unet(x, t, context, y): records its inputs; output = context's mean per row + 0.25·x."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context, y):
        self.calls.append(types.SimpleNamespace(x=x, t=t, context=context, y=y))
        return context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + 0.25 * x


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_denoiser_scalings(prediction):
    unet = RecordingUNet()
    x = torch.randn(2, 4, 8, 8)
    sigma = torch.tensor([0.5, 7.0])
    cond = Conditioning(torch.randn(2, 3, 16), y=torch.randn(2, 5))
    denoised = Denoiser(unet, prediction)(x, sigma, cond)
    s = sigma.reshape(2, 1, 1, 1)
    call = unet.calls[0]
    torch.testing.assert_close(call.x, x / (s**2 + 1) ** 0.5)
    torch.testing.assert_close(call.t, SD_SCHEDULE.sigma_to_t(sigma))
    assert call.y is cond.y
    out = unet(call.x, call.t, call.context, None)
    expected = x - s * out if prediction == "epsilon" else x / (s**2 + 1) - s / (s**2 + 1) ** 0.5 * out
    torch.testing.assert_close(denoised, expected)


def test_denoiser_quantize_rounds_timesteps():
    unet = RecordingUNet()
    sigma = torch.tensor([3.3])
    Denoiser(unet, "epsilon", quantize=True)(torch.zeros(1, 4, 2, 2), sigma, Conditioning(torch.zeros(1, 1, 4)))
    t = SD_SCHEDULE.sigma_to_t(sigma)
    assert t != t.round() and torch.equal(unet.calls[0].t, t.round())


def test_conditioning_cat_and_expand():
    a, b = Conditioning(torch.zeros(1, 77, 8)), Conditioning(torch.ones(2, 77, 8))
    both = a.expand(2).cat(b)
    assert both.batch == 4 and torch.equal(both.context[:2], torch.zeros(2, 77, 8))
    with pytest.raises(ValueError, match="token count"):
        a.cat(Conditioning(torch.ones(1, 154, 8)))
    with pytest.raises(ValueError, match="has y"):
        a.cat(Conditioning(torch.ones(1, 77, 8), y=torch.ones(1, 4)))
    with pytest.raises(ValueError, match="2 images cannot serve a batch of 3"):
        b.expand(3)


# --- classifier-free guidance ---------------------------------------------------------------------

def _cfg(scale, batch=2):
    unet = RecordingUNet()
    cond = Conditioning(torch.full((batch, 3, 16), 1.0))
    uncond = Conditioning(torch.full((1, 3, 16), -1.0))  # one empty prompt serves the whole batch
    return unet, CFGDenoiser(Denoiser(unet, "epsilon"), cond, uncond, scale)


def test_scale_one_is_one_conditional_call_per_step():
    unet, cfg = _cfg(1.0)
    sample_euler(cfg, torch.randn(2, 4, 8, 8), SD_SCHEDULE.sampler_sigmas(5))
    assert [c.x.shape[0] for c in unet.calls] == [2] * 5
    assert all(bool((c.context == 1).all()) for c in unet.calls)  # the prompt, never the negative


def test_guided_call_is_one_batch_of_uncond_then_cond():
    unet, cfg = _cfg(7.5)
    sample_euler(cfg, torch.randn(2, 4, 8, 8), SD_SCHEDULE.sampler_sigmas(5))
    assert [c.x.shape[0] for c in unet.calls] == [4] * 5
    call = unet.calls[0]
    assert bool((call.context[:2] == -1).all()) and bool((call.context[2:] == 1).all())
    torch.testing.assert_close(call.x[:2], call.x[2:])
    torch.testing.assert_close(call.t[:2], call.t[2:])


def test_mixing_formula():
    def fake(x, sigma, cond):
        return x + cond.context[:, 0, 0].reshape(-1, 1, 1, 1)

    x = torch.randn(2, 4, 8, 8)
    cond, uncond = Conditioning(torch.full((2, 3, 4), 2.0)), Conditioning(torch.full((2, 3, 4), -1.0))
    for s in (0.0, 1.0, 3.0, 7.5, -2.0):
        out = CFGDenoiser(fake, cond, uncond, s)(x, torch.tensor(1.0))
        torch.testing.assert_close(out, (x - 1) + s * ((x + 2) - (x - 1)))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_mixing_x0_equals_mixing_the_network_output(prediction):
    unet = RecordingUNet()
    denoiser = Denoiser(unet, prediction)
    cond, uncond = Conditioning(torch.randn(1, 3, 16)), Conditioning(torch.randn(1, 3, 16))
    x, sigma, s = torch.randn(1, 4, 8, 8), torch.tensor([2.5]), 6.0
    guided = CFGDenoiser(denoiser, cond, uncond, s)(x, sigma)
    x_in = x / (sigma**2 + 1) ** 0.5
    t = SD_SCHEDULE.sigma_to_t(sigma)
    out_u, out_c = unet(x_in, t, uncond.context, None), unet(x_in, t, cond.context, None)
    mixed = out_u + s * (out_c - out_u)
    if prediction == "epsilon":
        expected = x - sigma * mixed
    else:
        expected = x / (sigma**2 + 1) - sigma / (sigma**2 + 1) ** 0.5 * mixed
    torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-5)


def _run_reporting_scale(cfg, sampler, on_step=None, steps=4):
    """Sample as generate() would: report cfg.last_scale each step, then end the step."""
    used = []

    def callback(step):
        used.append(cfg.last_scale)
        if on_step:
            on_step(step)
        cfg.end_step()

    sampler(cfg, torch.randn(2, 4, 8, 8), SD_SCHEDULE.sampler_sigmas(steps), callback=callback)
    return used


def test_scale_changed_from_the_callback_applies_from_the_next_step():
    unet, cfg = _cfg(7.0)

    def gui(step):
        if step.i == 1:
            cfg.scale.value = 1.0

    assert _run_reporting_scale(cfg, sample_euler, gui) == [7.0, 7.0, 1.0, 1.0]
    assert [c.x.shape[0] for c in unet.calls] == [4, 4, 2, 2]


def test_scale_changed_mid_step_waits_for_the_next_step():
    # Heun calls D twice a step; the GUI thread sets the scale between those calls
    unet, cfg = _cfg(1.0)
    original = unet.__call__

    def unet_then_gui(x, t, context, y):
        if len(unet.calls) == 0:
            cfg.scale.value = 5.0
        return original(x, t, context, y)

    cfg.denoiser.unet = unet_then_gui
    assert _run_reporting_scale(cfg, sample_heun) == [1.0, 5.0, 5.0, 5.0]
    # step 0: both calls unguided (batch 2); steps 1-2: two guided calls; step 3 (to σ=0): one
    assert [c.x.shape[0] for c in unet.calls] == [2, 2, 4, 4, 4, 4, 4]


def test_guidance_scale_rejects_non_numbers():
    scale = GuidanceScale(7.0)
    for bad in (math.nan, math.inf):
        with pytest.raises(LatentDeskError, match="guidance"):
            scale.value = bad
    assert scale.value == 7.0


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMPLERS["Euler"].karras = True
