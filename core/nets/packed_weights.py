"""Conv2d and Linear that keep their bf16 weights in oneDNN's own layout for CPU inference.

oneDNN's bf16 kernels want their weights in a blocked layout. Handed PyTorch's plain weight, as
F.conv2d and F.linear do, they reorder it on every call: for an SD1.5 UNet call at 512 px that is
1.7 GB of bf16 weights read, rewritten and read again, from memory, every step. Reordered once and
kept (oneDNN's prepacking, the ops torch.compile's CPU backend calls), the convolutions of an SD1.5 UNet
call at 512 px, batch 2, took 0.70 s instead of 1.06 s in a profile on the 2-core development machine (AMD
EPYC, AVX512-BF16, torch 2.13), and the whole call 0.87 of its time (docs/PERFORMANCE.md, "Weights kept in
oneDNN's layout").

The price is memory: the packed copy sits beside the plain weight (which LoRAs patch, state dicts save
and other dtypes convert from), about 1.7 GB for SD1.5's UNet in bf16. So a weight is only packed while
what stays free after it is at least FREE_MEMORY_RESERVE and at least the working memory that
core.memory.check_fits found the run needs (short of memory a layer is slower, never refused), and
PACK_WEIGHTS turns it off. The copy is made at a layer's first bf16 call and made again when its
weight changes (a LoRA switch writes the weight in place, which bumps its version; a dtype change makes
a new tensor). Only inference: anything that needs gradients, float32, fp16, other devices and CPUs
without bf16 units run the plain layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakTensorKeyDictionary

from core.memory import available_bytes, working_bytes
from core.nets.onednn import has_bf16_kernels

PACK_WEIGHTS = True
FREE_MEMORY_RESERVE = 2 << 30

# weight -> {kind: (data pointer, version, packed weight)}; a kind names the product and the part of the
# weight it uses. Keyed weakly by the weight tensor, not stored on the module: deep copies and state dicts
# never see it, and it goes when the weight does.
_packed = WeakTensorKeyDictionary()


def _version(weight: Tensor) -> int | None:
    try:
        return weight._version
    except RuntimeError:       # an inference tensor has no version counter: its changes cannot be seen
        return None


def packed_weight(layer: nn.Module, x: Tensor, kind: str, pack: Callable[[Tensor], Tensor]) -> Tensor | None:
    """The layer's weight packed by `pack` (for a `kind` of product) for inference on x, or None where the
    plain layer should run."""
    weight, bias = layer.weight, layer.bias
    if not (PACK_WEIGHTS and x.device.type == "cpu" and x.dtype == torch.bfloat16 == weight.dtype
            and (bias is None or bias.dtype == torch.bfloat16) and has_bf16_kernels()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return None
    version = _version(weight)
    if version is None:
        return None
    kinds = _packed.get(weight)
    if kinds is None or any(entry[:2] != (weight.data_ptr(), version) for entry in kinds.values()):
        kinds = _packed[weight] = {}          # the weight changed since: every packed copy of it is stale
    if kind in kinds:
        return kinds[kind][2]
    free = available_bytes(weight.device)
    if free is not None and free - weight.nbytes < max(FREE_MEMORY_RESERVE, working_bytes()):
        return None
    with torch.no_grad():
        kinds[kind] = (weight.data_ptr(), version, pack(weight.detach()))
    return kinds[kind][2]


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state dict) whose bf16 CPU inference uses a packed weight."""

    def forward(self, x: Tensor) -> Tensor:
        packed = None
        if x.dim() == 4 and self.padding_mode == "zeros" and not isinstance(self.padding, str):
            packed = packed_weight(self, x, "conv", lambda w: torch.ops.mkldnn._reorder_convolution_weight(
                w, list(self.padding), list(self.stride), list(self.dilation), self.groups, list(x.shape)))
        if packed is None:
            return super().forward(x)
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "none", [], "")


def linear(x: Tensor, layer: nn.Linear | nn.Conv2d, outputs: slice = slice(None), gelu: bool = False) -> Tensor:
    """F.linear(x, weight, bias) for the layer's `outputs` (a 1x1 convolution's weight flattened to 2-D),
    then GELU if asked; packed where packed_weight says so, the GELU then fused into the product."""
    bias = None if layer.bias is None else layer.bias[outputs]
    # Packed for the row count it first sees (tokens x batch); other counts run correctly too.
    packed = packed_weight(layer, x, f"linear {outputs.start}:{outputs.stop}", lambda w: (
        torch.ops.mkldnn._reorder_linear_weight(w.flatten(1)[outputs], max(1, x.numel() // max(1, x.shape[-1])))))
    if packed is None:
        out = F.linear(x, layer.weight.flatten(1)[outputs], bias)
        return F.gelu(out) if gelu else out
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose bf16 CPU inference uses a packed weight."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self)
