"""Noise schedules: Stable Diffusion's 1000 training timesteps, seen as noise levels sigma.

SD is a DDPM (Ho et al. 2020) trained on x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε for t = 0..999.
Dividing by sqrt(ᾱ_t) gives the form of Karras et al. 2022 (arXiv:2206.00364), x = x0 + σ·ε with
σ_t = sqrt((1 - ᾱ_t) / ᾱ_t); samplers work on x and σ, and `core.sampling.denoiser` maps σ back to the t
the UNet was trained on. A sampler runs on a decreasing sequence of sigmas ending in 0 (the clean
latent); which sigmas depends on the timestep spacing (Lin et al. 2023, arXiv:2305.08891, Table 2)
or on Karras et al.'s rho-schedule.

Spacings, for n sampler steps and 1000 training steps (each matches a diffusers scheduler's
`timestep_spacing` as that scheduler lays it out for SD's `scheduler_config.json`):

- "linspace": n timesteps evenly from 999 down to 0, fractional (Euler/Heun/LMS/Euler a; also
  k-diffusion's `get_sigmas`).
- "linspace_exclusive": n+1 points evenly from 999 to 0, rounded, the final t=0 dropped (its sigma
  becomes the closing 0): what DPM-Solver and UniPC call "linspace".
- "leading": 0, 1000//n, 2·(1000//n)... reversed, plus SD's `steps_offset: 1` (DDIM, DDPM).
- "trailing": 999 and every 1000/n below it (Lin et al.'s fix for the first step).
- "lcm": n of the 50 timesteps a latent consistency model was distilled on (Luo et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.errors import LatentDeskError

SPACINGS = ("linspace", "linspace_exclusive", "leading", "trailing", "lcm")
STEPS_OFFSET = 1       # SD's scheduler_config.json: "leading" timesteps start at 1, not 0
LCM_ORIGINAL_STEPS = 50  # LCM-distilled models learnt only these timesteps (diffusers' original_inference_steps)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The noise levels of Karras et al. 2022, eq. 5: evenly spaced in sigma^(1/rho); (steps,) float32."""
    ramp = np.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.from_numpy((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho).float()


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete DDPM schedule: ᾱ per training timestep and the sigmas they mean."""

    alphas_cumprod: Tensor  # (T,) float32, ᾱ_t, decreasing in t

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000,
                      zero_terminal_snr: bool = False) -> NoiseSchedule:
        """LDM's "scaled linear" betas: linear in sqrt(beta); SD 1.x/2.x/XL all train on the defaults.

        `zero_terminal_snr`: rescaled so the last timestep is pure noise (Lin et al. 2023, Algorithm 1).
        SD's own schedule leaves sqrt(ᾱ_T) = 0.068 of the image in x_T; a model learns to read the
        image's average colour from it, and then copies it from the random start of txt2img instead of
        taking it from the prompt. Such models must predict v (ε says nothing about x0 at σ = ∞).
        """
        # float32 throughout, as diffusers computes it, so our sigmas are diffusers' to the last bit
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if zero_terminal_snr:
            alphas_cumprod = _rescale_zero_terminal_snr(alphas_cumprod)
        return cls(alphas_cumprod)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def sigmas(self) -> Tensor:
        """(T,) float32, increasing: sigma of each training timestep."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """The (fractional) timestep of each sigma, interpolating linearly in log sigma (k-diffusion, diffusers)."""
        log_sigmas = self.sigmas.double().log()
        log_sigma = sigma.double().clamp(min=1e-10).log()
        low = (torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True) - 1).clamp(0, self.num_timesteps - 2)
        low = low.reshape(log_sigma.shape)
        w = ((log_sigma - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])).clamp(0, 1)
        return (low + w).float()

    def t_to_sigma(self, t: Tensor | np.ndarray) -> Tensor:
        """The sigma of (fractional) timesteps.

        Interpolates sigma linearly in t, as diffusers' schedulers do (`np.interp`), so "linspace"
        sigmas equal theirs; k-diffusion interpolates log sigma instead (< 2 % apart, only between
        integer timesteps near t=0).
        """
        table = self.sigmas.numpy()
        return torch.from_numpy(np.interp(np.asarray(t, dtype=np.float64), np.arange(len(table)), table)).float()

    def timesteps(self, steps: int, spacing: str) -> np.ndarray:
        """The n sampler timesteps of a spacing, high to low (see the module docstring)."""
        n_train = self.num_timesteps
        _check_steps(steps, LCM_ORIGINAL_STEPS if spacing == "lcm" else n_train)
        if spacing == "linspace":
            if steps == 1:  # diffusers' np.linspace(0, 999, 1) is [0]: one step from σ_min; k-diffusion's is [999]
                return np.array([n_train - 1.0])
            return np.linspace(0, n_train - 1, steps, dtype=np.float32)[::-1].astype(np.float64)
        if spacing == "linspace_exclusive":
            return np.linspace(0, n_train - 1, steps + 1).round()[::-1][:-1].copy()
        if spacing == "leading":
            return (np.arange(steps) * (n_train // steps)).round()[::-1] + float(STEPS_OFFSET)
        if spacing == "trailing":
            # n_train - k·ratio for k < steps: diffusers' np.arange(n_train, 0, -ratio) yields one
            # extra timestep (-1) for some step counts (61, 103, ...) through float error
            return (n_train - np.arange(steps) * (n_train / steps)).round() - 1
        if spacing == "lcm":
            k = n_train // LCM_ORIGINAL_STEPS
            origin = (np.arange(1, LCM_ORIGINAL_STEPS + 1) * k - 1)[::-1]  # 999, 979, ..., 19
            picks = np.floor(np.linspace(0, LCM_ORIGINAL_STEPS, steps, endpoint=False)).astype(np.int64)
            return origin[picks].astype(np.float64)
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")

    def sampler_sigmas(self, steps: int, spacing: str = "linspace", karras: bool = False) -> Tensor:
        """(steps + 1,) float32: the sigmas a sampler runs through, high to low, ending in 0.

        With `karras`, Karras et al.'s schedule between this schedule's sigma_min and sigma_max
        (the spacing is then only checked, not used), as diffusers' `use_karras_sigmas` gives for
        "linspace" spacings.
        """
        timesteps = self.timesteps(steps, spacing)
        sigmas = karras_sigmas(steps, self.sigma_min, self.sigma_max) if karras else self.t_to_sigma(timesteps)
        return torch.cat([sigmas, sigmas.new_zeros(1)])


def _rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Shift and scale sqrt(ᾱ) so that it ends at 0 and keeps its first value (Lin et al. 2023, Alg. 1)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alphas_cumprod = root**2
    # Not exactly 0: σ_T = sqrt((1 - ᾱ)/ᾱ) must stay finite for the samplers (diffusers' Euler does the
    # same). sqrt(2^-24) = 2.4e-4 of the image is left: nothing a network can read.
    alphas_cumprod[-1] = 2.0**-24
    return alphas_cumprod


def _check_steps(steps: int, most: int | None = None) -> None:
    whole = isinstance(steps, int | np.integer) and not isinstance(steps, bool)
    if not whole or steps < 1 or (most is not None and steps > most):
        allowed = "at least 1" if most is None else f"from 1 to {most}"
        raise LatentDeskError(f"Steps must be a whole number {allowed}, not {steps!r}.")


def img2img_start(steps: int, strength: float) -> int:
    """Where img2img joins the schedule: it runs `sigmas[start:]` from `init + noise·sigmas[start]`.

    diffusers' StableDiffusionImg2ImgPipeline.get_timesteps rule: strength 1 runs every step,
    strength s about the last s·steps of them (none at all when s·steps < 1).
    """
    _check_steps(steps)
    if not 0 < strength <= 1:  # also refuses NaN
        raise LatentDeskError(f"Denoising strength must be above 0 and at most 1, not {strength!r}.")
    init_timestep = min(int(steps * strength), steps)
    return max(steps - init_timestep, 0)


SD_SCHEDULE = NoiseSchedule.scaled_linear()  # SD 1.x, 2.x and XL: betas 0.00085 → 0.012 over 1000 steps
ZERO_SNR_SCHEDULE = NoiseSchedule.scaled_linear(zero_terminal_snr=True)  # the same, ending in pure noise


def schedule_for(zero_terminal_snr: bool) -> NoiseSchedule:
    return ZERO_SNR_SCHEDULE if zero_terminal_snr else SD_SCHEDULE
