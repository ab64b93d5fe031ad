"""A tiny decoder for per-step previews: latents to a full-size image at a few % of a sampling step.

    PreviewDecoderConfig               its size: latent channels, scale factor, width, blocks
    PreviewDecoder(config)(latents)    latents as diffusion sees them (B, C, h, w) -> (B, 3, h*f, w*f), about [-1, 1]
    save_preview_decoder(path, decoder, about)   one .safetensors, the config in its metadata
    load_preview_decoder(path, latent_channels, factor)   ours or a TAESD file, checked against the VAE;
                                       ModelLoadError if unusable
    preview_decoder_path(model_path)   where a model's preview decoder lives: `<model>.preview.safetensors`

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

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ModelLoadError, shown
from core.loading.safetensors_io import SafetensorsFile
from core.nets.taesd import is_taesd, load_taesd_decoder
from core.loading.untrusted_json import loads
from core.loading.weights import build_on_meta

CONFIG_KEY = "latentdesk.preview_decoder"   # metadata entry holding the config as JSON
SUFFIX = ".preview.safetensors"
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


def preview_decoder_path(model_path: str | Path) -> Path:
    """`models/x.safetensors` -> `models/x.preview.safetensors`; a diffusers folder keeps it inside."""
    model_path = Path(model_path)
    if model_path.is_dir():
        return model_path / f"preview{SUFFIX}"
    return model_path.with_name(model_path.name.removesuffix(".safetensors") + SUFFIX)


def save_preview_decoder(path: str | Path, decoder: PreviewDecoder, about: dict[str, str] | None = None) -> Path:
    """Write the weights (fp32: the file is ~100 KB) and config atomically; `about` adds metadata entries."""
    from core.train.loop import save_tensors  # the one atomic safetensors writer

    path = Path(path)
    metadata = {CONFIG_KEY: json.dumps(asdict(decoder.config)), **(about or {})}
    save_tensors(path, decoder.state_dict(), metadata)
    return path


def load_preview_decoder(path: str | Path, latent_channels: int | None = None,
                         factor: int | None = None) -> nn.Module:
    """Read a preview decoder, ours or TAESD's (core/nets/taesd.py), refusing one made for another kind of
    latent (channels, factor). Either maps latents to an image in about [-1, 1]."""
    file = SafetensorsFile(path)             # checks the header; never unpickles
    raw = file.metadata.get(CONFIG_KEY)
    if raw is None and is_taesd(file.keys()):
        return load_taesd_decoder(file, latent_channels, factor)
    if raw is None:
        raise ModelLoadError(path, f"is not a preview decoder (neither {CONFIG_KEY!r} in its metadata nor "
                                   f"TAESD's tensors)")
    try:
        config = PreviewDecoderConfig(**loads(raw))
    except (ValueError, TypeError) as error:   # bad JSON, unknown or bad fields, sizes out of bounds
        raise ModelLoadError(path, f"has an unreadable preview-decoder config: {error}") from None
    if latent_channels is not None and config.latent_channels != latent_channels:
        raise ModelLoadError(path, f"decodes {config.latent_channels}-channel latents; this model's VAE makes "
                                   f"{latent_channels}")
    if factor is not None and config.factor != factor:
        raise ModelLoadError(path, f"upscales {config.factor}x; this model's VAE {factor}x")
    decoder = build_on_meta(lambda: PreviewDecoder(config))   # shapes only, until they match the file's
    expected = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    if file.shapes != expected:
        missing, extra = sorted(expected.keys() - file.shapes.keys()), sorted(file.shapes.keys() - expected.keys())
        wrong = sorted(k for k in expected.keys() & file.shapes.keys() if expected[k] != file.shapes[k])
        raise ModelLoadError(path, f"does not match its config (missing {missing[:3]}, unexpected {extra[:3]}, "
                                   f"wrong shape {wrong[:3]})")
    decoder.load_state_dict(file.read_many(list(expected), torch.float32), assign=True)
    return decoder.eval().requires_grad_(False)
