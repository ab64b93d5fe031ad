"""Applying several LoRAs, each at its own weight, to a loaded model's weights in place, exactly undoably.

    applied = AppliedLoras(model)
    applied.set([(read_lora(a, model), 0.8), (read_lora(b, model), -0.5)])   # W = W0 + Σ weight·ΔW
    applied.set([(lora_b, 1.0)])     # a switch: from the originals again, nothing reloaded
    applied.clear()                  # every weight bit-identical to the loaded one

Why patch the weights rather than run the low-rank path beside each layer: the patched model runs at
exactly the base model's speed and through the same code (bf16, DeepCache, the guidance cut-off and
anything that calls the networks need not know about LoRAs), and the patch costs one small matrix
product per layer once per switch. Measured on SD1.5 with a rank-32 LoRA on the 2-core machine
(scripts/bench_lora_switch.py), the side path added per UNet call more than a whole switch costs.

Exactness: the first time a layer is touched its weight is copied; every later `set` computes
W0 + Σ weight·ΔW from that copy (ΔW in float32, rounded once to the network's dtype), so changing a
LoRA's weight never accumulates error, and `clear` copies the originals back, bit for bit. The copies
cost the touched layers' size once (for a UNet+text LoRA on SD1.5, about the attention layers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from core.errors import LatentDeskError
from core.loading.lora_files import LoraFile, lora_layers, model_networks
from core.loading.lora_limits import MAX_WEIGHT
from core.loading.lora_math import LORA, delta_weight, scale_of
from core.model import DiffusionModel


class AppliedLoras:
    """The LoRAs applied to one model, and the original weights of every layer they touched."""

    def __init__(self, model: DiffusionModel):
        # Only the layers are kept, not the model: generate()'s cache keys this weakly by the UNet,
        # and a value holding the model would keep its key alive for ever.
        self._layers = {net: lora_layers(network) for net, network in model_networks(model).items()}
        self._originals: dict[tuple[str, str], Tensor] = {}
        self.active: list[tuple[LoraFile, float]] = []

    def set(self, loras: Sequence[tuple[LoraFile, float]]) -> None:
        """Make the model's weights W0 + Σ weight·ΔW for exactly these LoRAs (an empty list = none)."""
        for lora, weight in loras:
            if not (-MAX_WEIGHT <= weight <= MAX_WEIGHT):   # also refuses NaN
                raise LatentDeskError(f"LoRA {lora.name}: weight {weight} is outside -{MAX_WEIGHT:g}..{MAX_WEIGHT:g}")
        by_layer: dict[tuple[str, str], list] = {}
        for lora, weight in loras:
            for change in lora.changes:
                if change.network not in self._layers or change.module not in self._layers[change.network]:
                    raise LatentDeskError(f"LoRA {lora.name} was read for another model; read it again for this one")
                by_layer.setdefault((change.network, change.module), []).append((change, weight))

        with torch.no_grad():
            for key in [k for k in self._originals if k not in by_layer]:   # touched before, not now
                self._weight(key).copy_(self._originals.pop(key))
            for key, changes in by_layer.items():
                weight = self._weight(key)
                if key not in self._originals:
                    self._originals[key] = weight.detach().clone()
                _patch(weight, self._originals[key], changes)
        self.active = list(loras)

    def clear(self) -> None:
        """Every touched weight back to the loaded one, bit-identical; the copies are let go."""
        self.set([])

    def _weight(self, key: tuple[str, str]) -> nn.Parameter:
        net, module = key
        return self._layers[net][module].weight


def _patch(weight: Tensor, original: Tensor, changes: list) -> None:
    """weight = W0 + Σ weight·ΔW, summed in float32 and rounded once to the weight's dtype.

    A plain LoRA goes through one fused `addmm` (W0 + α·up@down) straight into a float32 weight: a
    switch is then one read of the originals and one write of the weights, plus the small products.
    The first change reads W0 and writes the sum; the others add to that sum in place (never an `out=`
    that is also an input).
    """
    shape = tuple(original.shape)
    in_place = weight.dtype == torch.float32 and weight.is_contiguous()
    total = weight.data if in_place else torch.empty(shape, dtype=torch.float32, device=weight.device)
    start = original if original.dtype == torch.float32 else original.float()
    for i, (change, strength) in enumerate(changes):
        tensors = {k: v.to(weight.device) for k, v in change.tensors.items()}
        if change.form == LORA and "mid" not in tensors:
            up, down = tensors["up"].float().reshape(shape[0], -1), tensors["down"].float()
            down, alpha = down.reshape(down.shape[0], -1), strength * scale_of(LORA, tensors)
            if i == 0:
                torch.addmm(start.reshape(shape[0], -1), up, down, alpha=alpha, out=total.view(shape[0], -1))
            else:
                total.view(shape[0], -1).addmm_(up, down, alpha=alpha)
        else:
            delta = delta_weight(change.form, tensors, shape)
            if i == 0:
                torch.add(start, delta, alpha=strength, out=total)
            else:
                total.add_(delta, alpha=strength)
    if not in_place:
        weight.copy_(total)
