"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, computed at the input's resolution.

Every upsampler of SD's UNet and VAE is conv3x3(nearest2x(x)). After the nearest-neighbour step each
2x2 block of the big image repeats one input pixel, so for each of the four output phases (even or
odd row, even or odd column) three of the kernel's taps land on one input pixel and the rest on a
neighbour: the 3x3 kernel collapses to a 2x2 one on the small image (taps summed). Four 2x2 convolutions
(run as one, with four times the output channels) on the small image instead of one 3x3 on the image
four times its size: 16 multiply-adds per output channel and input channel instead of 36, and the 4x
larger upsampled input is never made. Only the order of the additions changes (float rounding), so it
is an exact method: see tests/test_upsample.py.

Along one axis (zero padding of one, as the 3x3 convolution had), output row 2i reads input rows
i-1 (tap 0) and i (taps 1, 2); output row 2i+1 reads rows i (taps 0, 1) and i+1 (tap 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.nets.packed_weights import packed_weight

# For each output phase along an axis: which of the 3 taps fold into each of its 2 taps.
_FOLD = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],    # even: input i-1 <- tap 0; input i <- taps 1, 2
                      [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])   # odd:  input i <- taps 0, 1; input i+1 <- tap 2


def phase_kernels(weight: Tensor) -> Tensor:
    """(O, I, 3, 3) -> (2, 2, O, I, 2, 2): the 2x2 kernel of each (row phase, column phase), summed in float32."""
    fold = _FOLD.to(weight.device)
    kernels = torch.einsum("ark,bcl,oikl->aboirc", fold, fold, weight.float())
    return kernels.to(weight.dtype)


def upsample_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """conv(interpolate(x, scale_factor=2, mode="nearest")) for a 3x3, stride 1, padding 1 conv; (B, O, 2H, 2W).

    Keeps x's memory format: channels-last in, channels-last out (the VAE decoder runs so on the CPU).
    """
    b, _, h, w = x.shape
    o = conv.out_channels
    # All four phases as one convolution with 4*O output channels: one large matrix product where four
    # small ones and their four copies of shifted input were. With padding 1, output position r reads
    # padded rows r, r+1, i.e. input rows r-1, r: phase a's row i (input rows a+i-1, a+i) is position a+i.
    bias = conv.bias.repeat(4) if conv.bias is not None else None
    # In bf16 on the CPU the folded kernels are kept, packed for oneDNN, with the layer's other packed
    # weights (16/9 of the upsampler's weights, ~115 MB for SD1.5). Elsewhere they are folded anew on every
    # call: about 1 % of an SD1.5 UNet call, where keeping them would cost ~230 MB in float32.
    packed = packed_weight(conv, x, "upsample fold", lambda weight: torch.ops.mkldnn._reorder_convolution_weight(
        phase_kernels(weight).flatten(0, 2), [1, 1], [1, 1], [1, 1], 1, list(x.shape)))
    if packed is not None:
        phases = torch.ops.mkldnn._convolution_pointwise(x, packed, bias, [1, 1], [1, 1], [1, 1], 1, "none", [], "")
    else:
        phases = F.conv2d(x, phase_kernels(conv.weight).flatten(0, 2), bias, padding=1)
    phases = phases.unflatten(1, (2, 2, o))                          # (B, 2, 2, O, H+1, W+1)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        pixels = x.new_empty(b, h, 2, w, 2, o)                        # memory order of a channels-last result
        out, interleaved = pixels.view(b, 2 * h, 2 * w, o).permute(0, 3, 1, 2), pixels.permute(0, 5, 1, 2, 3, 4)
    else:
        out = x.new_empty(b, o, 2 * h, 2 * w)
        interleaved = out.view(b, o, h, 2, w, 2)                      # output row 2i+a, column 2j+c
    for a in (0, 1):
        for c in (0, 1):
            interleaved[:, :, :, a, :, c] = phases[:, a, c, :, a:a + h, c:c + w]
    return out


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
