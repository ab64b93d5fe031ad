"""TAESD's decoder (Ollin Boer Bohan's tiny autoencoder for Stable Diffusion): per-step previews for SD models.

    TaesdDecoder(latent_channels, width)     latents -> image in [-1, 1]
    taesd_file_for(family, latent_scale)     the file name people keep it under, for models it fits

Reading one from a file (either layout below) is core/loading/preview_decoders.py's job.

Why: Latent Desk trains its own preview decoder for the built-in model (core/nets/preview_decoder.py), but
a Stable Diffusion user cannot train one, and many already have TAESD's decoder, the one A1111 and
ComfyUI use for live previews. It reads the same scaled latents diffusion works on and upsamples
3 times by 2, so it fits only 8x VAEs. It comes in two layouts, both read by the loader: the original one
(a bare `nn.Sequential`, `taesd_decoder.safetensors`) and diffusers' AutoencoderTiny folder file
(`decoder.layers.*`, with its encoder beside it).

The layer list follows the published architecture, so the original file's keys are this module's own.
"""

from __future__ import annotations

from torch import Tensor, nn

from core.families import FAMILIES

# The decoder each family's latents need, under the names TAESD's releases use. SD1 and SD2 share
# the SD VAE's latent space; SDXL's VAE is another one.
_FILE_FOR_FAMILY = {"sd1": "taesd_decoder.safetensors", "sd2": "taesd_decoder.safetensors",
                    "sdxl": "taesdxl_decoder.safetensors"}
UPSAMPLINGS = 3      # three 2x upsamplings: TAESD fits only VAEs that downsample 8x


def taesd_file_for(family: str, latent_scale: float) -> str | None:
    """The TAESD file name for a Stable Diffusion model's latents. None for anything else: a model trained
    with its own VAE (its scale factor is not SD's) has another latent space, and TAESD would draw noise."""
    known = FAMILIES.get(family)
    if known is None or abs(latent_scale - known.latent_scale) > 1e-4:
        return None
    return _FILE_FOR_FAMILY[family]


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class _SoftClamp(nn.Module):
    """Squash latents smoothly into (-3, 3): sampling can overshoot, and the decoder never saw that."""

    def forward(self, x: Tensor) -> Tensor:
        return (x / 3).tanh() * 3


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(), _conv(width, width))

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv(x) + x).relu()


class TaesdDecoder(nn.Sequential):
    def __init__(self, latent_channels: int = 4, width: int = 64):
        layers: list[nn.Module] = [_SoftClamp(), _conv(latent_channels, width), nn.ReLU()]
        for _ in range(UPSAMPLINGS):
            layers += [_Block(width), _Block(width), _Block(width),
                       nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
        layers += [_Block(width), _conv(width, 3)]
        super().__init__(*layers)

    def forward(self, latents: Tensor) -> Tensor:
        """(B, C, h, w) latents as diffusion sees them (scaled) -> (B, 3, 8h, 8w) in about [-1, 1]."""
        return super().forward(latents.to(self[1].weight.dtype)) * 2 - 1   # TAESD draws in [0, 1]
