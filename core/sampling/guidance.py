"""Classifier-free guidance (Ho & Salimans 2021, arXiv:2207.12598) as one more denoiser wrapper.

One network was trained with and without the prompt; sampling pushes its prediction away from
the unconditional one: D = D_uncond + s·(D_cond − D_uncond). The scale s is live: the GUI's slider
may change it from another thread while the sampler runs, and the change takes effect from the
next sampler step. An optional cut-off runs the last steps unguided (core/sampling/speedups.py): by then the
layout of the image is settled, and a step without guidance costs one batch of B rows, not 2B.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from core.nets.unet import guidance_embedding
from core.sampling.denoiser import Conditioning
from core.sampling.guidance_scale import GuidanceScale

DenoiserFn = Callable[[Tensor, Tensor, Conditioning], Tensor]  # core.sampling.denoiser.Denoiser


class CFGDenoiser:
    """D(x, σ) with classifier-free guidance; what the samplers call.

    The scale is read at the first call of each sampler step and held for the rest of that step
    (Heun and the SDE solvers call D twice a step; mixing two scales inside one step would give
    neither). `end_step()` marks the step boundary: call it from the sampler's per-step callback,
    which every sampler here calls after all of a step's denoiser calls. `last_scale` is the scale
    the latest call used, for the per-step report. Without `end_step()` the first scale holds for
    the whole run.

    `unguided_from`: the guidance cut-off. Steps from this index on (counted by `end_step()`) use
    scale 1 whatever the slider says; the slider still acts on the steps before.
    """

    def __init__(self, denoiser: DenoiserFn, cond: Conditioning, uncond: Conditioning,
                 scale: GuidanceScale | float, unguided_from: int | None = None):
        self.denoiser = denoiser
        self.cond = cond
        self.uncond = uncond
        self.scale = scale if isinstance(scale, GuidanceScale) else GuidanceScale(scale)
        self.unguided_from = unguided_from
        self.last_scale: float | None = None
        self.step = 0                          # the sampler step the next call belongs to
        self._step_scale: float | None = None

    def end_step(self) -> None:
        """The current sampler step is over: the next denoiser call reads the scale afresh."""
        self._step_scale = None
        self.step += 1

    def scale_now(self) -> float:
        """This step's scale: read at its first call, then held."""
        if self._step_scale is None:
            cut_off = self.unguided_from is not None and self.step >= self.unguided_from
            self._step_scale = 1.0 if cut_off else self.scale.value
        self.last_scale = self._step_scale
        return self._step_scale

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = self.scale_now()
        if s == 1:  # D_uncond + 1·(D_cond − D_uncond) = D_cond: skip the unconditional half
            return self.denoiser(x, sigma, self.cond)
        batch = x.shape[0]
        both = self.uncond.expand(batch).cat(self.cond.expand(batch))
        sigma = sigma.reshape(-1).expand(batch)
        # One UNet call on 2B rows. Mixing x0 equals mixing ε (or v): for a fixed x and σ, x0 is an
        # affine function of the network output (x − σ·ε, or c_skip·x + c_out·v), and affine maps
        # commute with u + s·(c − u) because its weights (1 − s) and s sum to 1.
        uncond, cond = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
        return uncond + s * (cond - uncond)


class EmbeddedGuidance(CFGDenoiser):
    """The guidance an LCM-distilled UNet learnt (Luo et al. 2023, "Latent Consistency Models", sec. 4.1): the
    scale goes in as an embedding added to the timestep's (core/nets/unet.py guidance_embedding), so one call
    on the prompt alone does a step; there is no negative prompt, as in diffusers' LatentConsistencyModelPipeline.
    The scale is live and held per step as with CFG; a cut-off has nothing to save and is not offered.
    """

    def __init__(self, denoiser: DenoiserFn, cond: Conditioning, scale: GuidanceScale | float, dim: int):
        super().__init__(denoiser, cond, cond, scale)
        self.dim = dim

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        batch = x.shape[0]
        scale = torch.full((batch,), self.scale_now(), device=x.device)
        cond = replace(self.cond.expand(batch), timestep_cond=guidance_embedding(scale, self.dim))
        return self.denoiser(x, sigma, cond)
