"""A tiny decoder for per-step previews: latents to a full-size image at a few % of a sampling step.

    PreviewDecoderConfig               its size: latent channels, scale factor, width, blocks
    PreviewDecoder(config)(latents)    latents as diffusion sees them (B, C, h, w) -> (B, 3, h*f, w*f), about [-1, 1]

Its file (`<model>.preview.safetensors`, the config in the metadata) is written and read by
core/loading/preview_decoders.py, which also reads TAESD's.

Why it exists: the built-in model's VAE decode (16x16x4 -> 128x128) costs about 1.6 of its sampling
steps on a 2-core CPU, so a VAE preview at every step more than doubles a run, and the linear
latent->RGB map (core/nets/latent_rgb.py) shows only a 16x16 blur. This network is trained to imitate the
model's own VAE decoder (core/train/preview.py), like TAESD does for SD, and measured at 1.9 ms
against 49 ms for the VAE and 31 ms for a guided UNet step. It gets there by never working at full
resolution: its convolutions run at the latent size and at twice it, and the last convolution writes
each output pixel's 4x4 (f/2 x f/2) neighbourhood as channels that a pixel shuffle (Shi et al. 2016)
lays out. The VAE's widest convolutions run at full size, which is most of its cost.

It is a preview only: the saved image always comes from the VAE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import shown

# Many times any useful size (ours: 32 wide, 2 blocks; TAESD: 64 wide, and core/nets/taesd.py's limit is 256;
# VAEs: 4 to 16 channels, 8x). A file's config is read before its weights: `width: 1000` alone built
# 174 MB of network (it grows with width²) before the weights were found not to fit.
MAX_SIZES = {"latent_channels": 256, "factor": 64, "width": 256, "blocks": 16}


@dataclass(frozen=True)
class PreviewDecoderConfig:
    latent_channels: int = 4      # the VAE's z channels
    factor: int = 8               # the VAE's downsampling factor; even, so the shuffle is factor / 2
    # The built-in model's: 32 wide, 2 blocks: 1.9 ms and 31.6 dB against its VAE on held-out images;
    # 1 block: 1.4 ms and 30.4 dB (8,000 steps each, 2-core CPU; docs/BUILTIN_MODEL.md).
    width: int = 32               # channels of every hidden layer
    blocks: int = 2               # residual blocks at each of the two resolutions

    def __post_init__(self):
        sizes = asdict(self)
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number, not {shown(value)}")
        if self.factor < 2 or self.factor % 2:
            raise ValueError(f"the factor must be even and >= 2, not {self.factor}")
        if min(self.latent_channels, self.width, self.blocks) < 1:
            raise ValueError(f"channels, width and blocks must be >= 1: {self}")
        for name, high in MAX_SIZES.items():
            if sizes[name] > high:
                raise ValueError(f"{name} {sizes[name]} is more than {high}, far beyond any preview decoder")


class _Block(nn.Module):
    """SiLU-conv twice plus the input. No normalisation: two shallow stages train without it."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class PreviewDecoder(nn.Module):
    def __init__(self, config: PreviewDecoderConfig = PreviewDecoderConfig()):
        super().__init__()
        self.config = config
        w, shuffle = config.width, config.factor // 2
        self.conv_in = nn.Conv2d(config.latent_channels, w, 3, padding=1)
        self.coarse = nn.Sequential(*(_Block(w) for _ in range(config.blocks)))    # at the latent size
        self.up = nn.Conv2d(w, w, 3, padding=1)
        self.fine = nn.Sequential(*(_Block(w) for _ in range(config.blocks)))      # at twice it
        self.conv_out = nn.Conv2d(w, 3 * shuffle * shuffle, 3, padding=1)

    def forward(self, latents: Tensor) -> Tensor:
        """(B, C, h, w) latents as diffusion sees them (scaled) -> (B, 3, h*f, w*f) in about [-1, 1]."""
        h = self.coarse(self.conv_in(latents.to(self.conv_in.weight.dtype)))
        h = self.fine(self.up(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        return F.pixel_shuffle(self.conv_out(F.silu(h)), self.config.factor // 2)
