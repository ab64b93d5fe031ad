"""The VAE decoder's CPU speed-ups (core/nets/vae.py, core/nets/upsample.py) change the memory layout only.

On the CPU the decoder runs channels-last (oneDNN's own layout) and folds its upsamplers into one
convolution each; the numbers must stay those of the plain NCHW network, and callers must still get
an ordinary NCHW tensor.
"""

import pytest
import torch
import torch.nn.functional as F

from core.nets import vae as vae_module
from core.nets.upsample import upsample_conv
from core.nets.vae import AutoencoderKL, VAEConfig

# Tiny, but with every structural part: 4 levels (3 upsamplers), the mid-block attention, 32 norm groups.
TINY = VAEConfig(base_channels=32, channel_mult=(1, 1, 2, 2), num_res_blocks=1)
CHANNELS_LAST = torch.channels_last


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(TINY).eval()


def latents(size: int = 8) -> torch.Tensor:
    return torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(1))


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    mse = ((image.float().clamp(-1, 1) - reference.float().clamp(-1, 1)) ** 2).mean()
    return (10 * torch.log10(4 / mse)).item()   # pixel range [-1, 1]: peak-to-peak 2, squared 4


def test_channels_last_decode_equals_the_nchw_decode(monkeypatch):
    vae, z = tiny_vae(), latents()
    with torch.no_grad():
        fast = vae.decode(z)
        monkeypatch.setattr(vae_module, "channels_last_on_cpu", lambda x: x)   # the plain NCHW network
        plain = vae.decode(z)
    assert fast.shape == plain.shape == (1, 3, 64, 64)
    assert fast.is_contiguous()                              # callers get NCHW back
    assert (fast - plain).abs().max() <= 1e-5 * plain.abs().max()


def test_decoder_runs_channels_last_and_attention_gets_contiguous_heads(monkeypatch):
    """The layout reaches the mid-block: SDPA's fused kernel takes q, k, v only with contiguous rows."""
    seen = []
    original = vae_module._attention

    def recording(q, k, v):
        seen.append(all(t.is_contiguous() for t in (q, k, v)))
        return original(q, k, v)

    monkeypatch.setattr(vae_module, "_attention", recording)
    vae, z = tiny_vae(), latents()
    formats = []
    # Before the attention, right after it, and the last block at full size: the layout survives all of them.
    for block in (vae.decoder.mid.block_1, vae.decoder.mid.attn_1, vae.decoder.up[0].block[-1]):
        block.register_forward_hook(
            lambda module, args, out: formats.append(out.is_contiguous(memory_format=CHANNELS_LAST)))
    with torch.no_grad():
        vae.decode(z)
    assert formats == [True, True, True] and seen == [True]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_folded_upsampler_keeps_channels_last(dtype, tolerance):
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1).to(dtype)
    x = torch.randn(2, 16, 5, 7).to(dtype)
    expected = conv(F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(dtype)).float()
    with torch.no_grad():
        for given in (x, x.contiguous(memory_format=CHANNELS_LAST)):
            out = upsample_conv(given, conv)
            assert out.shape == (2, 8, 10, 14)
            assert out.is_contiguous(memory_format=CHANNELS_LAST) == (given.stride()[1] == 1)
            assert (out.float() - expected).abs().max() <= tolerance * expected.abs().max()


def test_bfloat16_decode_stays_close_to_float32():
    """bfloat16 keeps 8 bits of mantissa: the image changes a little, not visibly (PSNR against float32)."""
    vae, z = tiny_vae(), latents(16)
    with torch.no_grad():
        exact = vae.decode(z)
        approximate = vae.to(torch.bfloat16).decode(z.to(torch.bfloat16))
    assert approximate.dtype == torch.bfloat16 and approximate.is_contiguous()
    assert psnr(approximate, exact) > 35


def test_channels_last_encode_equals_the_nchw_encode(monkeypatch):
    vae = tiny_vae()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        fast = vae.encode(image).mean
        monkeypatch.setattr(vae_module, "channels_last_on_cpu", lambda x: x)
        plain = vae.encode(image).mean
    assert fast.shape == plain.shape == (1, 4, 4, 4) and fast.is_contiguous()
    assert (fast - plain).abs().max() <= 1e-5 * plain.abs().max()
