"""Cross-attention probabilities summed while sampling: the raw material of attention maps.

Every cross-attention layer of the UNet lets each image position attend to the context tokens with
probabilities softmax(q·kᵀ/√d) over the tokens. The fused attention kernel never materialises them, so
when maps are wanted the probe computes them again from the layer's q and k, averages the heads, brings
the layer's grid up to the latent's size (bilinear) and adds the result to a running sum per image and
token. Memory stays at one (tokens, latent height, latent width) sum per image and half, whatever the
number of steps or layers; one head's probabilities are the largest temporary. Off (no probe set), the
UNet runs exactly as before.

Rows of a guided call are the negative prompt's images then the prompt's (core/sampling/guidance.py);
an unguided call has the prompt's only.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from core.nets.unet import TransformerBlock


class CrossAttentionProbe:
    """Called by each cross-attention layer with its q (rows, heads, T, d) and k (rows, heads, S, d)."""

    def __init__(self, images: int, latent_size: tuple[int, int], steps: Collection[int] | None = None):
        self.images = images
        self.latent_size = latent_size
        self.steps = None if steps is None else frozenset(steps)   # None: every step
        self.step = 0                                               # the sampler step now running
        self.cond: Tensor | None = None     # (images, S, H, W) float32, the prompt's sums
        self.uncond: Tensor | None = None   # the same for the negative prompt; None if no call was guided
        self.steps_summed: set[int] = set()

    def end_step(self) -> None:
        self.step += 1

    def __call__(self, q: Tensor, k: Tensor) -> None:
        if self.steps is not None and self.step not in self.steps:
            return
        rows, heads, positions, dim = q.shape
        if rows not in (self.images, 2 * self.images):
            raise ValueError(f"attention probe for {self.images} images got a batch of {rows} rows")
        h, w = self._grid(positions)
        # Head by head: the largest temporary is one head's (rows, T, S) probabilities, not all heads'.
        mean = torch.zeros(rows, positions, k.shape[2], dtype=torch.float32, device=q.device)
        for head in range(heads):
            logits = q[:, head].float() @ k[:, head].float().transpose(1, 2) * dim ** -0.5   # (rows, T, S)
            mean += logits.softmax(dim=-1)
        maps = (mean / heads).transpose(1, 2).reshape(rows, -1, h, w)                       # (rows, S, h, w)
        if (h, w) != self.latent_size:
            maps = F.interpolate(maps, size=self.latent_size, mode="bilinear", align_corners=False)
        self.steps_summed.add(self.step)
        self.cond = _add(self.cond, maps[-self.images:])
        if rows == 2 * self.images:
            self.uncond = _add(self.uncond, maps[:self.images])

    def _grid(self, positions: int) -> tuple[int, int]:
        """The (h, w) of a layer with `positions` pixels: the latent halved (rounding up) some times."""
        h, w = self.latent_size
        while h * w > positions and (h, w) != (1, 1):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if h * w != positions:
            raise ValueError(f"a cross-attention layer of {positions} positions is no level of a "
                             f"{self.latent_size[0]}x{self.latent_size[1]} latent")
        return h, w


def _add(total: Tensor | None, maps: Tensor) -> Tensor:
    return maps.clone() if total is None else total.add_(maps)


@contextmanager
def probing(unet: torch.nn.Module, probe: CrossAttentionProbe) -> Iterator[CrossAttentionProbe]:
    """The probe set on every cross-attention layer of `unet` for the block's duration, then taken off."""
    layers = [module.attn2 for module in unet.modules() if isinstance(module, TransformerBlock)]
    for layer in layers:
        layer.probe = probe
    try:
        yield probe
    finally:
        for layer in layers:
            layer.probe = None
