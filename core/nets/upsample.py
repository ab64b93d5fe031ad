"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, computed at the input's resolution.

Every upsampler of SD's UNet and VAE is conv3x3(nearest2x(x)). After the nearest-neighbour step each
2x2 block of the big image repeats one input pixel, so for each of the four output phases (even or
odd row, even or odd column) three of the kernel's taps land on one input pixel and the rest on a
neighbour: the 3x3 kernel collapses to a 2x2 one on the small image (taps summed). Four 2x2 convolutions
on the small image instead of one 3x3 on the image four times its size: 16 multiply-adds per output
channel and input channel instead of 36, and the 4x larger upsampled input is never made. Only the order
of the additions changes (float rounding), so it is an exact method: see tests/test_upsample.py.

Along one axis (zero padding of one, as the 3x3 convolution had), output row 2i reads input rows
i-1 (tap 0) and i (taps 1, 2); output row 2i+1 reads rows i (taps 0, 1) and i+1 (tap 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# For each output phase along an axis: which of the 3 taps fold into each of its 2 taps.
_FOLD = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],    # even: input i-1 <- tap 0; input i <- taps 1, 2
                      [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])   # odd:  input i <- taps 0, 1; input i+1 <- tap 2


def phase_kernels(weight: Tensor) -> Tensor:
    """(O, I, 3, 3) -> (2, 2, O, I, 2, 2): the 2x2 kernel of each (row phase, column phase), summed in float32."""
    fold = _FOLD.to(weight.device)
    kernels = torch.einsum("ark,bcl,oikl->aboirc", fold, fold, weight.float())
    return kernels.to(weight.dtype)


def upsample_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """conv(interpolate(x, scale_factor=2, mode="nearest")) for a 3x3, stride 1, padding 1 conv; (B, O, 2H, 2W)."""
    b, _, h, w = x.shape
    # Folded anew on every call rather than kept: about 1 % of an SD1.5 UNet call, while keeping them
    # would hold 16/9 of every upsampler's weights again in memory (~230 MB in float32 for SD1.5).
    kernels = phase_kernels(conv.weight)
    padded = F.pad(x, (1, 1, 1, 1))
    # Phase (a, b) reads input rows a-1+i .. a+i and columns b-1+j .. b+j: the padded image from (a, b) on.
    phases = [[F.conv2d(padded[:, :, a:a + h + 1, c:c + w + 1], kernels[a, c], conv.bias) for c in (0, 1)]
              for a in (0, 1)]
    out = torch.stack([torch.stack(row, dim=-1) for row in phases], dim=-3)  # (B, O, H, 2, W, 2)
    return out.reshape(b, -1, 2 * h, 2 * w)


# Below about this many input values (channels x height x width) the four small convolutions' fixed costs
# outweigh the multiply-adds saved (measured on a 2-core CPU: 64 x 16 x 16 was slower folded, 512 x 32 x 32
# took 0.59 of the time).
FOLD_FROM = 1 << 17
# Only on the CPU, where convolutions are compute-bound. On an H100 (fp16) the VAE decode went from 0.99
# of diffusers' time before the fold to 1.17 with it, and the UNet step from 0.77 to 0.84: there the 3x3
# convolution runs on tensor cores and the extra passes over memory (stacking the four phases) cost more.
FOLD_DEVICES = ("cpu",)


def nearest2x_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """conv(nearest 2x upsample of x), folded on the CPU when x is large enough for that to pay."""
    if x.device.type in FOLD_DEVICES and x[0].numel() >= FOLD_FROM and is_foldable(conv):
        return upsample_conv(x, conv)
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def is_foldable(conv: nn.Conv2d) -> bool:
    """The convolutions `upsample_conv` computes exactly: 3x3, stride 1, padding 1, no dilation or groups."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")
