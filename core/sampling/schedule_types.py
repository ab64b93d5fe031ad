"""Schedule types: which noise levels a sampler walks down, chosen apart from the sampler (A1111 >= 1.9, ComfyUI).

    schedule_sigmas(name, steps, schedule, sampler, xl=False) -> (steps + 1,) float32, high to low, ending in 0

`name` is one of SCHEDULE_NAMES (core/sampling/sampler_names.py, A1111's labels); `schedule` the model's
NoiseSchedule; `sampler` the SamplerSpec (only "Automatic" asks it); `xl` picks the SDXL table of "Align
Your Steps". Checked against A1111's `modules/sd_schedulers.py` and ComfyUI's `comfy/samplers.py`; where a
diffusers scheduler has the same thing, ours equals it (tests/test_schedule_types.py):

- Automatic: the sampler's own sigmas (SamplerSpec.sigmas), what every request had before schedule types.
- Uniform: n timesteps evenly from 999 to 0, sigma interpolated linearly in t (diffusers'
  `timestep_spacing="linspace"`; k-diffusion's `get_sigmas`, A1111's "Uniform", interpolates log sigma).
- Karras: Karras et al. 2022 eq. 5, rho = 7, between the schedule's sigma_min and sigma_max (k-diffusion's
  `get_sigmas_karras`; diffusers' `use_karras_sigmas`).
- Exponential: evenly spaced in log sigma from sigma_max to sigma_min (k-diffusion's `get_sigmas_exponential`;
  diffusers' `use_exponential_sigmas`).
- SGM Uniform: 999 and every 1000/n timesteps below it, rounded (diffusers' `timestep_spacing="trailing"`,
  Lin et al. 2023): one step starts from pure noise at t = 999, what SD-Turbo and the other distilled
  models need. A1111 and ComfyUI take t = 999·(1 − k/n) unrounded, at most one timestep away.
- Simple: every (1000/n)-th training sigma from the top, t = 999 − int(k·1000/n) (ComfyUI's `simple_scheduler`,
  A1111's "Simple").
- Normal: n timesteps evenly from 999 to 0, sigma interpolated in log sigma (ComfyUI's `normal_scheduler`,
  A1111's "Normal"; k-diffusion's `get_sigmas`).
- DDIM: 1, 1 + 1000//n, 1 + 2·(1000//n), ... high to low (diffusers' `timestep_spacing="leading"` with SD's
  `steps_offset` 1). A1111's and ComfyUI's `ddim_scheduler` walk the same stride to the top and so give
  more than n steps when 1000//n does not divide 999 (8 for n = 7); here it stops at n.
- Beta: sigma_min + (sigma_max − sigma_min)·F⁻¹(1 − k/(n−1)), F the Beta(0.6, 0.6) distribution (Lee et al.
  2024, arXiv:2407.12173; A1111's `beta_scheduler` and diffusers' `use_beta_sigmas`, both α = β = 0.6;
  ComfyUI rounds to training timesteps instead).
- Align Your Steps: NVIDIA's optimised 10-step sigmas for SD 1.5 and SDXL (Sabour, Fidler and Kreis 2024,
  arXiv:2404.14507; the tables of https://research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html as
  ComfyUI's `comfy_extras/nodes_align_your_steps.py` has them). Their 11 noise levels are interpolated
  log-linearly to n + 1 for other step counts, as that page says, and the last becomes 0 (ComfyUI's
  reading; A1111 instead appends a 0 to 10 interpolated levels). SD 2.x uses the SD 1.5 table.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from core.errors import LatentDeskError
from core.sampling.sampler_names import AUTOMATIC, SCHEDULE_NAMES
from core.sampling.schedules import NoiseSchedule, _check_steps

BETA_ALPHA = BETA_BETA = 0.6  # "Beta Sampling is All You Need"'s choice, A1111's and diffusers' default
AYS_SD1 = (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
           0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582)
AYS_SDXL = (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
            0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582)


def _close(sigmas) -> Tensor:
    sigmas = torch.from_numpy(np.array(sigmas, dtype=np.float64)).float()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _automatic(steps: int, schedule: NoiseSchedule, sampler, xl: bool) -> Tensor:
    return sampler.sigmas(steps, schedule)


def _spacing(spacing: str, karras: bool = False) -> Callable[[int, NoiseSchedule, object, bool], Tensor]:
    return lambda steps, schedule, sampler, xl: schedule.sampler_sigmas(steps, spacing, karras)


def _exponential(steps: int, schedule: NoiseSchedule, sampler, xl: bool) -> Tensor:
    _check_steps(steps, schedule.num_timesteps)
    return _close(np.exp(np.linspace(math.log(schedule.sigma_max), math.log(schedule.sigma_min), steps)))


def _simple(steps: int, schedule: NoiseSchedule, sampler, xl: bool) -> Tensor:
    n_train = schedule.num_timesteps
    _check_steps(steps, n_train)
    stride = n_train / steps
    return _close(schedule.sigmas.numpy()[[n_train - 1 - int(k * stride) for k in range(steps)]])


def _normal(steps: int, schedule: NoiseSchedule, sampler, xl: bool) -> Tensor:
    n_train = schedule.num_timesteps
    _check_steps(steps, n_train)
    log_sigmas = np.log(schedule.sigmas.numpy().astype(np.float64))
    return _close(np.exp(np.interp(np.linspace(n_train - 1, 0, steps), np.arange(n_train), log_sigmas)))


def _beta(steps: int, schedule: NoiseSchedule, sampler, xl: bool) -> Tensor:
    _check_steps(steps, schedule.num_timesteps)
    quantiles = beta_ppf(1 - np.linspace(0, 1, steps), BETA_ALPHA, BETA_BETA)
    return _close(schedule.sigma_min + quantiles * (schedule.sigma_max - schedule.sigma_min))


def _align_your_steps(steps: int, schedule: NoiseSchedule, sampler, xl: bool) -> Tensor:
    _check_steps(steps, schedule.num_timesteps)
    table = np.array(AYS_SDXL if xl else AYS_SD1)
    if steps + 1 != len(table):  # log-linear interpolation, low to high as np.interp needs
        log_levels = np.interp(np.linspace(0, 1, steps + 1), np.linspace(0, 1, len(table)), np.log(table[::-1]))
        table = np.exp(log_levels)[::-1]
    return _close(table[:-1])


SCHEDULE_TYPES: dict[str, Callable[[int, NoiseSchedule, object, bool], Tensor]] = {
    AUTOMATIC: _automatic,
    "Uniform": _spacing("linspace"),
    "Karras": _spacing("linspace", karras=True),
    "Exponential": _exponential,
    "SGM Uniform": _spacing("trailing"),
    "Simple": _simple,
    "Normal": _normal,
    "DDIM": _spacing("leading"),
    "Beta": _beta,
    "Align Your Steps": _align_your_steps,
}
assert tuple(SCHEDULE_TYPES) == SCHEDULE_NAMES


def schedule_sigmas(name: str, steps: int, schedule: NoiseSchedule, sampler, xl: bool = False) -> Tensor:
    """(steps + 1,) float32: the sigmas of schedule type `name`, high to low, ending in 0."""
    try:
        make = SCHEDULE_TYPES[name]
    except KeyError:
        raise LatentDeskError(f"Unknown schedule type {name!r}. Choose one of: {', '.join(SCHEDULE_NAMES)}.") from None
    return make(steps, schedule, sampler, xl)


# -- the Beta distribution's quantiles, without scipy ------------------------------------------------

def _beta_fraction(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes' betacf)."""
    tiny = 1e-300
    c = np.ones_like(x)
    d = 1 - (a + b) * x / (a + 1)
    d = 1 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for m in range(1, 301):
        for aa in (m * (b - m) * x / ((a - 1 + 2 * m) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1 + 2 * m))):
            d = 1 + aa * d
            d = 1 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1 + aa / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            h = h * d * c
        if np.all(np.abs(d * c - 1) < 1e-15):
            break
    return h


def beta_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """The regularized incomplete beta function I_x(a, b), float64."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    inner = np.clip(x, 1e-300, 1 - 1e-16)
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * np.log(inner) + b * np.log1p(-inner))
    front = np.exp(log_front)
    low = x < (a + 1) / (a + b + 2)  # where the fraction converges fast; the other side by symmetry
    value = np.where(low, front * _beta_fraction(inner, a, b) / a, 1 - front * _beta_fraction(1 - inner, b, a) / b)
    return np.where(x <= 0, 0.0, np.where(x >= 1, 1.0, value))


def beta_ppf(p: np.ndarray, a: float, b: float) -> np.ndarray:
    """The Beta(a, b) quantiles of probabilities p, by bisection on beta_cdf (to float64's resolution)."""
    p = np.asarray(p, dtype=np.float64)
    low, high = np.zeros_like(p), np.ones_like(p)
    for _ in range(64):
        mid = (low + high) / 2
        below = beta_cdf(mid, a, b) < p
        low, high = np.where(below, mid, low), np.where(below, high, mid)
    return np.where(p <= 0, 0.0, np.where(p >= 1, 1.0, (low + high) / 2))
