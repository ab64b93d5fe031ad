"""The UNet seen as a denoiser D(x, σ) → x0, the one interface every sampler uses.

Karras et al. 2022 (arXiv:2206.00364), Table 1 and §5: any network trained on a DDPM schedule
becomes a denoiser of x = x0 + σ·ε by scaling its input with c_in = 1/sqrt(σ² + 1) (which gives
back the DDPM's x_t) and feeding it the timestep t of σ. k-diffusion's `CompVisDenoiser` and
`CompVisVDenoiser` are this wrapper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from core.sampling.schedules import SD_SCHEDULE, NoiseSchedule

PREDICTIONS = ("epsilon", "v")


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on, for a batch."""

    context: Tensor          # (B, T, D) text-encoder tokens, read by cross-attention
    y: Tensor | None = None  # (B, adm) SDXL: pooled text + size/crop embedding; None for SD1/SD2
    # (B, 5, H, W) an inpainting UNet's extra input channels, [mask, masked-picture latent]
    # (core/inpaint_latents.py), joined to the scaled latent; None for every other UNet.
    concat: Tensor | None = None
    # (B, dim) an LCM UNet's guidance-scale embedding (core/sampling/guidance.py EmbeddedGuidance); else None.
    timestep_cond: Tensor | None = None

    @property
    def batch(self) -> int:
        return self.context.shape[0]

    def cat(self, other: Conditioning) -> Conditioning:
        """One batch: self's rows, then other's (CFG batches uncond.cat(cond))."""
        if self.context.shape[1:] != other.context.shape[1:]:
            raise ValueError(f"cannot batch contexts of shapes {tuple(self.context.shape)} and "
                             f"{tuple(other.context.shape)}: pad both prompts to the same token count")
        if (self.y is None) != (other.y is None):
            raise ValueError("cannot batch a conditioning that has y (SDXL) with one that has not")
        if (self.concat is None) != (other.concat is None):
            raise ValueError("cannot batch an inpainting conditioning with one that is not")
        if (self.timestep_cond is None) != (other.timestep_cond is None):
            raise ValueError("cannot batch a conditioning with a guidance embedding with one without")
        y, concat, timestep_cond = (None if a is None else torch.cat([a, b]) for a, b in (
            (self.y, other.y), (self.concat, other.concat), (self.timestep_cond, other.timestep_cond)))
        return Conditioning(torch.cat([self.context, other.context]), y, concat, timestep_cond)

    def expand(self, batch: int) -> Conditioning:
        """The same conditioning for `batch` images: a batch-1 conditioning is repeated, others must match."""
        if self.batch == batch:
            return self
        if self.batch != 1:
            raise ValueError(f"conditioning for {self.batch} images cannot serve a batch of {batch}")
        y, concat, timestep_cond = (None if a is None else a.expand(batch, *a.shape[1:])
                                    for a in (self.y, self.concat, self.timestep_cond))
        return Conditioning(self.context.expand(batch, *self.context.shape[1:]), y, concat, timestep_cond)


UNetFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]  # unet(x, t, context, y) -> eps or v


class Denoiser:
    """D(x, σ, cond) → x0: the predicted clean latent of x = x0 + σ·ε."""

    def __init__(self, unet: UNetFn, prediction: str, schedule: NoiseSchedule = SD_SCHEDULE,
                 quantize: bool = False, network_dtype: torch.dtype | None = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")
        self.unet = unet
        self.prediction = prediction
        self.schedule = schedule
        # Round t to whole timesteps, as diffusers' DPM-Solver/UniPC do for Karras sigmas
        # (k-diffusion's `quantize=True`); SamplerSpec.quantize says when.
        self.quantize = quantize
        # The UNet's dtype when it differs from the sampler's latent (bfloat16 networks, core/precision.py):
        # its input is converted to it and its output back. None: the latent's own dtype.
        self.network_dtype = network_dtype

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """x (B, C, H, W) at noise level sigma (scalar or (B,)) → x0 (B, C, H, W)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        cond = cond.expand(x.shape[0])
        t = self.schedule.sigma_to_t(sigma.cpu()).to(x.device)
        if self.quantize:
            t = t.round()
        # The scalings in float32: a zero-terminal-SNR schedule starts at σ = 4096, whose σ² overflows fp16.
        s = sigma[:, None, None, None]  # (B, 1, 1, 1) float32
        c_in = (1 / (s**2 + 1) ** 0.5).to(x.dtype)
        network_dtype = self.network_dtype or x.dtype   # .to() of a tensor already in that dtype is a no-op
        scaled = x * c_in
        if cond.concat is not None:
            scaled = torch.cat([scaled, cond.concat.to(scaled)], dim=1)
        extra = {} if cond.timestep_cond is None else {"timestep_cond": cond.timestep_cond}
        out = self.unet(scaled.to(network_dtype), t, cond.context, cond.y, **extra).to(x.dtype)
        if self.prediction == "epsilon":
            return x - s.to(x.dtype) * out
        # v = α·ε − σ_vp·x0 (Salimans & Ho 2022), so x0 = c_skip·x + c_out·v (Karras et al. App. B.2)
        c_skip = (1 / (s**2 + 1)).to(x.dtype)
        c_out = (-s / (s**2 + 1) ** 0.5).to(x.dtype)
        return x * c_skip + out * c_out
