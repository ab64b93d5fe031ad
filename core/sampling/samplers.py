"""Samplers: solve the reverse diffusion from sigmas[0] down to sigmas[-1] = 0.

k-diffusion's form (Crowson, `k_diffusion/sampling.py`): `sample_x(model, x, sigmas, ...)` where
`model(x, sigma)` is a denoiser returning the predicted clean latent x0 (`core.sampling.denoiser`, wrapped
by `core.sampling.guidance`), x is the latent at sigmas[0], and each step moves it to the next sigma.

- Every sampler reports each step i as `callback(Step(i, x, sigma, denoised))`, x being the latent
  at sigmas[i] and denoised D's x0 for it, after all of that step's model calls and before any of
  the next step's. An exception raised there (cancelling) stops sampling and propagates.
- Stochastic samplers take `noise(sigma, sigma_next) -> Tensor` shaped like x (default
  `torch.randn_like`), so the caller owns the randomness (one generator per image, say).
- `SAMPLERS` names them as A1111 users know them and says which sigmas each runs on; every one
  matches a diffusers scheduler, which tests/test_samplers.py checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from core.errors import LatentDeskError
from core.sampling.schedules import SD_SCHEDULE, NoiseSchedule

Model = Callable[[Tensor, Tensor], Tensor]       # D(x (B, C, H, W), sigma (B,)) -> x0 (B, C, H, W)
NoiseSampler = Callable[[Tensor, Tensor], Tensor]  # noise(sigma, sigma_next) -> ε shaped like x


class Step(NamedTuple):
    i: int            # step index: sigmas[i] -> sigmas[i + 1]
    x: Tensor         # (B, C, H, W) the latent at sigma
    sigma: Tensor     # () the step's starting noise level
    denoised: Tensor  # (B, C, H, W) the model's x0 for x, what a preview shows


def _report(callback: Callable[[Step], None] | None, i: int, x: Tensor, sigma: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback(Step(i, x, sigma, denoised))


def _noise_or_randn(noise: NoiseSampler | None, x: Tensor) -> NoiseSampler:
    return noise if noise is not None else (lambda sigma, sigma_next: torch.randn_like(x))


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """dx/dσ of the probability-flow ODE, (x − D(x; σ)) / σ (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(σ_down, σ_up): reach sigma_next by a deterministic step to σ_down plus fresh noise of std σ_up.

    eta = 1 is the DDPM posterior's noise, eta = 0 none (DDIM, Song et al. 2021, eq. 16).
    """
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


@torch.no_grad()
def sample_euler(model: Model, x: Tensor, sigmas: Tensor, callback=None) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 2 without churn)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Model, x: Tensor, sigmas: Tensor, eta: float = 1.0, callback=None,
                           noise: NoiseSampler | None = None) -> Tensor:
    """Euler steps to σ_down, then noise up to the next sigma (k-diffusion; with eta=1 the DDPM posterior)."""
    noise = _noise_or_randn(noise, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigma_up > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_heun(model: Model, x: Tensor, sigmas: Tensor, callback=None) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 1 without churn); the last step, to σ=0, is Euler."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        x_next = x + d * dt
        if sigma_next > 0:
            d_next = to_d(x_next, sigma_next, model(x_next, sigma_next * s_in))
            x_next = x + (d + d_next) / 2 * dt
        _report(callback, i, x, sigma, denoised)
        x = x_next
    return x


def lms_coefficient(sigmas: list[float], i: int, j: int, order: int) -> float:
    """∫ from σ_i to σ_{i+1} of the Lagrange basis polynomial of σ_{i-j} through σ_i, σ_{i-1}, …, σ_{i-order+1}.

    The integrand is a polynomial of degree order − 1, so Gauss–Legendre with `order` nodes is exact
    (k-diffusion and diffusers call scipy's adaptive quad for the same number).
    """
    nodes, weights = np.polynomial.legendre.leggauss(order)
    a, b = sigmas[i], sigmas[i + 1]
    tau = (b - a) / 2 * nodes + (a + b) / 2
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
    return float((b - a) / 2 * np.sum(weights * basis))


@torch.no_grad()
def sample_lms(model: Model, x: Tensor, sigmas: Tensor, order: int = 4, callback=None) -> Tensor:
    """Linear multistep (Adams–Bashforth) on the probability-flow ODE in sigma, as k-diffusion's `sample_lms`."""
    s_in = x.new_ones([x.shape[0]])
    sigmas_list = sigmas.double().tolist()
    ds = []  # derivatives of the latest steps, newest first
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        ds.insert(0, to_d(x, sigmas[i], denoised))
        del ds[order:]
        coeffs = [lms_coefficient(sigmas_list, i, j, len(ds)) for j in range(len(ds))]
        x = x + sum(c * d for c, d in zip(coeffs, ds, strict=True))
    return x


def sample_ddim(model: Model, x: Tensor, sigmas: Tensor, eta: float = 0.0, callback=None,
                noise: NoiseSampler | None = None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta=0 is deterministic, eta=1 is DDPM.

    In sigma form its step x' = x̂0 + σ_down·ε̂ + σ_up·z, with ε̂ = (x − x̂0)/σ and σ_up the eta-scaled
    posterior noise of its eq. 16, is the Euler-ancestral step: x + ε̂·(σ_down − σ) + σ_up·z.
    """
    return sample_euler_ancestral(model, x, sigmas, eta=eta, callback=callback, noise=noise)


@torch.no_grad()
def sample_ddpm(model: Model, x: Tensor, sigmas: Tensor, callback=None, noise: NoiseSampler | None = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, eqs. 6–7): draw from the posterior q(x' | x, x̂0), in sigma form."""
    noise = _noise_or_randn(noise, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        _report(callback, i, x, sigma, denoised)
        # with ᾱ = 1/(1 + σ²): the posterior mean keeps r = (1−ᾱ')ᾱ / ((1−ᾱ)ᾱ') = σ'²/σ² of x, and its
        # variance (1−ᾱ')/(1−ᾱ)·(1 − ᾱ/ᾱ') is σ'²(1 − r) once divided by ᾱ'
        r = (sigma_next / sigma) ** 2
        x = r * x + (1 - r) * denoised
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * sigma_next * (1 - r) ** 0.5
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x: Tensor, sigmas: Tensor, eta: float = 0.0, callback=None,
                    noise: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Alg. 2); eta > 0 is its SDE form (DPM++ 2M SDE, midpoint).

    Works in λ = −log σ, where the ODE's linear part integrates exactly; each step is the
    exponential-integrator step with x̂0 extrapolated from the last two evaluations. The first step
    has no history (first order), the last lands on x̂0.
    """
    noise = _noise_or_randn(noise, x)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        _report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised  # λ → ∞: the exponential integrator's limit
            continue
        h = torch.log(sigma / sigma_next)  # the step in λ
        eta_h = eta * h
        phi = -torch.expm1(-h - eta_h)
        x = sigma_next / sigma * torch.exp(-eta_h) * x + phi * denoised
        if old_denoised is not None:
            r = h_last / h
            x = x + phi * (denoised - old_denoised) / (2 * r)  # midpoint second-order term
        if eta:
            x = x + noise(sigma, sigma_next) * sigma_next * (-torch.expm1(-2 * eta_h)) ** 0.5
        old_denoised, h_last = denoised, h
    return x


def _unipc_update(x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: list[Tensor], sigma_prev: Tensor | None,
                  denoised_next: Tensor | None = None) -> Tensor:
    """One UniPC move of x from sigma to sigma_next with B(h) = e^h − 1 ("bh2"), in sigma form.

    `denoised` holds x̂0 at sigma (last) and, for order 2, at sigma_prev before it. Without
    `denoised_next` this is the predictor UniP (= DPM-Solver++(2M) for bh2); with the new
    evaluation x̂0 at sigma_next it is the corrector UniC, one order higher.
    """
    m0 = denoised[-1]
    h = torch.log(sigma / sigma_next).item()  # λ_next − λ, λ = −log σ
    h_phi_1 = math.expm1(-h)  # both h·φ1(−h) and B(−h) for bh2
    x_base = sigma_next / sigma * x - h_phi_1 * m0
    d1 = None
    if len(denoised) == 2:
        r1 = -torch.log(sigma_prev / sigma).item() / h  # (λ_prev − λ) / h
        d1 = (denoised[0] - m0) / r1
    if denoised_next is None:
        return x_base if d1 is None else x_base - h_phi_1 * 0.5 * d1
    if d1 is None:
        return x_base - h_phi_1 * 0.5 * (denoised_next - m0)
    # the corrector weights ρ solve [[1, 1], [r1, 1]]·ρ = b, b from the φ_k(h) expansion (diffusers' rhos_c)
    b1 = (h_phi_1 / -h - 1) / h_phi_1
    b2 = ((h_phi_1 / -h - 1) / -h - 0.5) * 2 / h_phi_1
    rho_1 = (b1 - b2) / (1 - r1)
    return x_base - h_phi_1 * (rho_1 * d1 + (b1 - rho_1) * (denoised_next - m0))


@torch.no_grad()
def sample_unipc(model: Model, x: Tensor, sigmas: Tensor, callback=None) -> Tensor:
    """UniPC (Zhao et al. 2023, arXiv:2302.04867): UniP predictor + UniC corrector, bh2, order 2, data prediction.

    The corrector reuses the next step's model call, so the cost stays one call per step; order 1
    on the first step (no history) and on the last (diffusers' `lower_order_final`). The Step
    reported is the predicted x, the one D saw, before UniC corrects it.
    """
    s_in = x.new_ones([x.shape[0]])
    n = len(sigmas) - 1
    history: list[Tensor] = []  # x̂0 of the last two steps, oldest first
    x_last, order = None, 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        _report(callback, i, x, sigma, denoised)  # the predicted x, the one D saw
        if i > 0:  # UniC: redo the previous move knowing x̂0 where it landed
            x = _unipc_update(x_last, sigmas[i - 1], sigma, history[-order:], sigmas[i - 2] if order == 2 else None,
                              denoised)
        history = [*history[-1:], denoised]
        order = min(2, i + 1, n - i)
        x_last = x
        if sigma_next == 0:
            x = denoised
        else:
            x = _unipc_update(x, sigma, sigma_next, history[-order:], sigmas[i - 1] if order == 2 else None)
    return x


@torch.no_grad()
def sample_lcm(model: Model, x: Tensor, sigmas: Tensor, callback=None, noise: NoiseSampler | None = None) -> Tensor:
    """Latent consistency sampling (Luo et al. 2023, arXiv:2310.04378, Alg. 1): jump to x̂0, re-noise to the next sigma.

    diffusers' LCMScheduler also blends in c_skip·x (σ_data = 0.5, t scaled by 10); at t ≥ 19 that
    weight is below 7e-6, so it is left out.
    """
    noise = _noise_or_randn(noise, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
    return x


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler: its function, the sigmas it runs on, and how generation must use it."""

    sample: Callable[..., Tensor]  # sample_x(model, x, sigmas, callback=..., [noise=...], **options)
    spacing: str                   # core.sampling.schedules spacing of its sigmas
    karras: bool = False           # Karras et al.'s sigmas instead (the spacing is then unused)
    options: Mapping[str, Any] = field(default_factory=dict)  # extra keyword arguments, e.g. eta
    stochastic: bool = False       # draws noise: pass `noise`
    quantize: bool = False         # build the Denoiser with quantize=True (rounded timesteps)
    vp_start: bool = False         # txt2img starts at unit variance in DDPM's x_t (see init_noise_sigma)
    reference: str = ""            # the diffusers scheduler it matches

    def sigmas(self, steps: int, schedule: NoiseSchedule = SD_SCHEDULE) -> Tensor:
        """(steps + 1,) float32, high to low, ending in 0."""
        return schedule.sampler_sigmas(steps, self.spacing, self.karras)

    def init_noise_sigma(self, sigmas: Tensor) -> Tensor:
        """The std of txt2img's starting latent: x = noise · init_noise_sigma(sigmas).

        diffusers' DDPM-form schedulers (DDIM, DDPM, DPM-Solver, UniPC, LCM) start from a unit
        Gaussian x_T, which is noise·sqrt(1 + σ0²) here (the exact std of x0 + σ0·ε for unit-variance
        latents); its Euler-type ones, like k-diffusion, start from noise·σ0 (0.2 % less at σ0 = 14.6).
        """
        return (sigmas[0] ** 2 + 1) ** 0.5 if self.vp_start else sigmas[0]

    def __call__(self, model: Model, x: Tensor, sigmas: Tensor, callback: Callable[[Step], None] | None = None,
                 noise: NoiseSampler | None = None) -> Tensor:
        kwargs = dict(self.options)
        if self.stochastic:
            kwargs["noise"] = noise
        return self.sample(model, x, sigmas, callback=callback, **kwargs)


SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": SamplerSpec(sample_euler, "linspace", reference="EulerDiscreteScheduler"),
    "Euler a": SamplerSpec(sample_euler_ancestral, "linspace", stochastic=True,
                           reference="EulerAncestralDiscreteScheduler"),
    "Heun": SamplerSpec(sample_heun, "linspace", reference="HeunDiscreteScheduler"),
    "LMS": SamplerSpec(sample_lms, "linspace", reference="LMSDiscreteScheduler"),
    "DDIM": SamplerSpec(sample_ddim, "leading", vp_start=True, reference="DDIMScheduler(set_alpha_to_one=True)"),
    "DDPM": SamplerSpec(sample_ddpm, "leading", stochastic=True, vp_start=True, reference="DDPMScheduler"),
    "DPM++ 2M": SamplerSpec(sample_dpmpp_2m, "linspace_exclusive", vp_start=True,
                            reference="DPMSolverMultistepScheduler"),
    "DPM++ 2M Karras": SamplerSpec(sample_dpmpp_2m, "linspace_exclusive", karras=True, quantize=True, vp_start=True,
                                   reference="DPMSolverMultistepScheduler(use_karras_sigmas=True)"),
    "DPM++ 2M SDE Karras": SamplerSpec(sample_dpmpp_2m, "linspace_exclusive", karras=True, options={"eta": 1.0},
                                       stochastic=True, quantize=True, vp_start=True,
                                       reference="DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', "
                                                 "use_karras_sigmas=True)"),
    "UniPC": SamplerSpec(sample_unipc, "linspace_exclusive", vp_start=True, reference="UniPCMultistepScheduler"),
    "LCM": SamplerSpec(sample_lcm, "lcm", stochastic=True, vp_start=True, reference="LCMScheduler"),
}


def get_sampler(name: str) -> SamplerSpec:
    """The sampler called `name` (A1111's spelling)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise LatentDeskError(f"Unknown sampler {name!r}. Choose one of: {', '.join(SAMPLERS)}.") from None


def sigmas_for(name: str, steps: int, schedule: NoiseSchedule = SD_SCHEDULE) -> Tensor:
    """The (steps + 1,) sigmas the sampler `name` runs on."""
    return get_sampler(name).sigmas(steps, schedule)
