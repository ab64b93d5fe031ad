"""An exponential moving average of the weights being trained: the weights a finished run ships."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Exponential moving average of the trainable parameters, with warm-up.

    decay(n) = min(decay, (1 + n) / (10 + n)) for the n-th update (0-based), as diffusers'
    EMAModel: early averages are not dragged toward the random initialisation.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def restart(self, module: nn.Module) -> None:
        """Forget the average: from here it follows the module's weights as they are now."""
        for name, p in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].copy_(p.detach())

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module, n: int) -> None:
        d = self.decay_at(n)
        named = [(self.shadow[name], p.detach()) for name, p in module.named_parameters() if name in self.shadow]
        shadows, params = [s for s, _ in named], [p for _, p in named]
        # One fused kernel per op over all tensors: on a GPU a per-tensor loop is launch-bound.
        torch._foreach_mul_(shadows, d)
        torch._foreach_add_(shadows, params, alpha=1 - d)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])
