"""Noise schedules and spacings against diffusers' schedulers (the test-only oracle)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    StableDiffusionImg2ImgPipeline,
    UniPCMultistepScheduler,
)

from core.errors import LatentDeskError
from core.sampling.schedules import SD_SCHEDULE, ZERO_SNR_SCHEDULE, img2img_start, karras_sigmas

# SD 1.5's scheduler/scheduler_config.json, the keys schedulers read
SD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, clip_sample=False, set_alpha_to_one=False)
STEP_COUNTS = (2, 7, 20, 50)


def scheduler(cls, steps, **config):
    s = cls.from_config({**SD_CONFIG, **config})  # from_config ignores keys a class lacks
    s.set_timesteps(steps)
    return s


def test_alphas_and_sigmas_equal_diffusers():
    ref = DDPMScheduler.from_config(SD_CONFIG)
    assert torch.equal(SD_SCHEDULE.alphas_cumprod, ref.alphas_cumprod)
    assert SD_SCHEDULE.sigma_min == pytest.approx(0.029168, abs=1e-6)
    assert SD_SCHEDULE.sigma_max == pytest.approx(14.614642, abs=1e-5)


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_zero_terminal_snr_schedule_equals_diffusers_rescaled_euler(spacing, steps):
    ref = scheduler(EulerDiscreteScheduler, steps, timestep_spacing=spacing, rescale_betas_zero_snr=True)
    # diffusers rescales the betas and multiplies them back up; we rescale ᾱ directly: float32 noise apart
    assert torch.allclose(ZERO_SNR_SCHEDULE.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-6)
    assert ZERO_SNR_SCHEDULE.alphas_cumprod[0] == pytest.approx(SD_SCHEDULE.alphas_cumprod[0].item(), rel=1e-6)
    assert ZERO_SNR_SCHEDULE.sigma_max == pytest.approx(4096.0)            # sqrt((1 - 2^-24) / 2^-24)
    assert torch.allclose(ZERO_SNR_SCHEDULE.sampler_sigmas(steps, spacing), ref.sigmas, rtol=1e-4)


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_spacings_equal_euler_sigmas(spacing, steps):
    ref = scheduler(EulerDiscreteScheduler, steps, timestep_spacing=spacing)
    assert torch.equal(SD_SCHEDULE.sampler_sigmas(steps, spacing), ref.sigmas)


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_karras_equals_euler_karras(steps):
    ref = scheduler(EulerDiscreteScheduler, steps, use_karras_sigmas=True)
    ours = SD_SCHEDULE.sampler_sigmas(steps, "linspace", karras=True)
    torch.testing.assert_close(ours, ref.sigmas, rtol=1e-6, atol=0)
    torch.testing.assert_close(SD_SCHEDULE.sigma_to_t(ours[:-1]), ref.timesteps, rtol=0, atol=2e-3)


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, UniPCMultistepScheduler])
@pytest.mark.parametrize("karras", [False, True])
def test_multistep_solver_sigmas_and_timesteps(cls, karras, steps):
    ref = scheduler(cls, steps, use_karras_sigmas=karras)
    ours = SD_SCHEDULE.sampler_sigmas(steps, "linspace_exclusive", karras)
    torch.testing.assert_close(ours, ref.sigmas, rtol=1e-6, atol=0)
    # the timesteps their UNet sees: whole numbers (why those samplers' Denoiser quantizes)
    assert torch.equal(SD_SCHEDULE.sigma_to_t(ours[:-1]).round().long(), ref.timesteps)


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_leading_timesteps_equal_ddim_and_ddpm(cls, steps):
    ours = SD_SCHEDULE.timesteps(steps, "leading")
    assert np.array_equal(ours, scheduler(cls, steps).timesteps.numpy())
    assert ours[-1] == 1  # steps_offset=1


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 50])
def test_lcm_timesteps(steps):
    assert np.array_equal(SD_SCHEDULE.timesteps(steps, "lcm"), scheduler(LCMScheduler, steps).timesteps.numpy())


@pytest.mark.parametrize("spacing", ["linspace", "linspace_exclusive", "leading", "trailing", "lcm"])
def test_sampler_sigmas_shape(spacing):
    for steps in (1, 3, 30):
        sigmas = SD_SCHEDULE.sampler_sigmas(steps, spacing)
        assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float32
        assert sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all())


def test_one_linspace_step_starts_at_sigma_max():
    # diffusers' linspace puts a single step at t=0 (σ_min); we start it where k-diffusion does
    assert SD_SCHEDULE.sampler_sigmas(1, "linspace")[0] == SD_SCHEDULE.sigmas[-1]


def test_trailing_has_exactly_steps_timesteps():
    # np.arange(1000, 0, -1000/61) gives 62 values; ours keeps the 61 diffusers meant
    ours = SD_SCHEDULE.timesteps(61, "trailing")
    assert len(ours) == 61 and ours[0] == 999 and ours[-1] >= 0


def test_karras_endpoints_and_rho():
    sigmas = karras_sigmas(10, 0.1, 10.0)
    torch.testing.assert_close(sigmas[[0, -1]], torch.tensor([10.0, 0.1]))
    roots = sigmas.double() ** (1 / 7)
    torch.testing.assert_close(roots.diff(), roots.diff()[:1].expand(9), rtol=1e-5, atol=0)  # even in σ^(1/ρ)


def test_sigma_to_t_matches_diffusers_and_inverts_t_to_sigma():
    ref = EulerDiscreteScheduler.from_config(SD_CONFIG)
    log_sigmas = np.log(SD_SCHEDULE.sigmas.numpy())
    sigmas = torch.tensor([0.01, 0.0292, 0.05, 0.3, 1.0, 3.7, 14.6146, 20.0])
    expected = np.array([ref._sigma_to_t(s, log_sigmas) for s in sigmas.numpy()])
    torch.testing.assert_close(SD_SCHEDULE.sigma_to_t(sigmas), torch.from_numpy(expected).float(), rtol=0, atol=1e-3)
    whole = torch.arange(0, 1000, 37).double()
    torch.testing.assert_close(SD_SCHEDULE.sigma_to_t(SD_SCHEDULE.t_to_sigma(whole)), whole.float(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("steps", [1, 7, 20, 50])
@pytest.mark.parametrize("strength", [0.01, 0.1, 0.3, 0.5, 0.75, 0.999, 1.0])
def test_img2img_start_equals_diffusers(steps, strength):
    fake_pipe = SimpleNamespace(scheduler=scheduler(EulerDiscreteScheduler, steps))
    timesteps, n_run = StableDiffusionImg2ImgPipeline.get_timesteps(fake_pipe, steps, strength, "cpu")
    start = img2img_start(steps, strength)
    assert steps - start == n_run == len(timesteps)
    assert torch.equal(fake_pipe.scheduler.timesteps[start:], timesteps)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_steps_raise(steps):
    with pytest.raises(LatentDeskError, match="Steps"):
        img2img_start(steps, 0.5)
    with pytest.raises(LatentDeskError, match="Steps"):
        SD_SCHEDULE.sampler_sigmas(steps, "linspace")


def test_more_steps_than_training_timesteps_raise():
    with pytest.raises(LatentDeskError, match="from 1 to 1000"):
        SD_SCHEDULE.sampler_sigmas(1001, "leading")


@pytest.mark.parametrize("strength", [0.0, -0.2, 1.01, float("nan")])
def test_bad_strength_raises(strength):
    with pytest.raises(LatentDeskError, match="strength"):
        img2img_start(20, strength)


def test_lcm_refuses_more_steps_than_it_was_distilled_on():
    with pytest.raises(LatentDeskError, match="1 to 50"):
        SD_SCHEDULE.sampler_sigmas(51, "lcm")
