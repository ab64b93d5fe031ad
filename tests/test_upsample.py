"""The folded upsampler (core/nets/upsample.py) computes what nearest 2x + 3x3 conv computes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.nets import upsample
from core.nets.unet import Upsample as UNetUpsample
from core.nets.upsample import is_foldable, nearest2x_conv, upsample_conv
from core.nets.vae import Upsample as VAEUpsample


def plain(x, conv):
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@pytest.mark.parametrize("channels_in, channels_out, height, width", [(3, 5, 4, 4), (8, 8, 5, 7), (16, 4, 1, 3)])
def test_folded_upsample_equals_nearest_then_conv(channels_in, channels_out, height, width):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels_in, channels_out, 3, padding=1)
    x = torch.randn(2, channels_in, height, width)
    expected = plain(x, conv)
    out = upsample_conv(x, conv)
    assert out.shape == expected.shape == (2, channels_out, 2 * height, 2 * width)
    assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_folded_upsample_gives_the_same_gradients():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    grad_out = torch.randn(1, 4, 12, 12)
    plain(x, conv).backward(grad_out)
    expected = x.grad.clone(), conv.weight.grad.clone()
    x.grad, conv.weight.grad = None, None
    upsample_conv(x, conv).backward(grad_out)
    for got, want in zip((x.grad, conv.weight.grad), expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_only_plain_3x3_convolutions_are_folded():
    assert is_foldable(torch.nn.Conv2d(4, 4, 3, padding=1))
    assert not is_foldable(torch.nn.Conv2d(4, 4, 3, padding=0))
    assert not is_foldable(torch.nn.Conv2d(4, 4, 1))
    assert not is_foldable(torch.nn.Conv2d(4, 4, 3, padding=1, groups=2))


def test_unet_and_vae_upsamplers_fold_large_inputs_and_keep_odd_sizes(monkeypatch):
    torch.manual_seed(2)
    calls = []
    monkeypatch.setattr(upsample, "upsample_conv", lambda x, conv: calls.append(x.shape) or plain(x, conv))
    monkeypatch.setattr(upsample, "FOLD_FROM", 4 * 4 * 4)
    vae_up, unet_up = VAEUpsample(4), UNetUpsample(4)
    small, large = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        vae_up(small)
        vae_up(large)
        unet_up(large, torch.Size((8, 8)))
        odd = unet_up(large, torch.Size((7, 7)))   # a skip of odd size: interpolate to it, never fold
    assert calls == [large.shape, large.shape]
    assert odd.shape == (1, 4, 7, 7)


def test_nearest2x_conv_matches_the_plain_path_at_fold_size():
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(1, 32, 64, 64)          # 131,072 values: folded
    assert x[0].numel() >= upsample.FOLD_FROM
    with torch.no_grad():
        expected, out = plain(x, conv), nearest2x_conv(x, conv)
    assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_upsamplers_are_folded_only_on_the_cpu(monkeypatch):
    def refuse(x, conv):
        raise AssertionError("folded off the CPU")
    monkeypatch.setattr(upsample, "upsample_conv", refuse)
    conv = nn.Conv2d(512, 8, 3, padding=1, device="meta")
    x = torch.empty(1, 512, 32, 32, device="meta")          # large enough to fold on the CPU
    assert nearest2x_conv(x, conv).shape == (1, 8, 64, 64)
