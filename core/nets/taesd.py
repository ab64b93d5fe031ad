"""TAESD's decoder (Ollin Boer Bohan's tiny autoencoder for Stable Diffusion): per-step previews for SD models.

    is_taesd(names)                          does a file's tensor list look like a TAESD decoder?
    load_taesd_decoder(file, latent_channels, factor) -> TaesdDecoder   latents -> image in [-1, 1]
    taesd_file_for(family, latent_scale)     the file name people keep it under, for models it fits

Why: Latent Desk trains its own preview decoder for the built-in model (core/nets/preview_decoder.py), but
a Stable Diffusion user cannot train one, and many already have TAESD's decoder, the one A1111 and
ComfyUI use for live previews. It reads the same scaled latents diffusion works on and upsamples
3 times by 2, so it fits only 8x VAEs. It comes in two layouts, both read here: the original one
(a bare `nn.Sequential`, `taesd_decoder.safetensors`) and diffusers' AutoencoderTiny folder file
(`decoder.layers.*`, with its encoder beside it).

The layer list follows the published architecture, so the original file's keys are this module's own.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from core.errors import ModelLoadError
from core.families import FAMILIES
from core.loading.safetensors_io import SafetensorsFile
from core.loading.weights import build_on_meta

# The decoder each family's latents need, under the names TAESD's releases use. SD1 and SD2 share
# the SD VAE's latent space; SDXL's VAE is another one.
_FILE_FOR_FAMILY = {"sd1": "taesd_decoder.safetensors", "sd2": "taesd_decoder.safetensors",
                    "sdxl": "taesdxl_decoder.safetensors"}
_DIFFUSERS_PREFIX = "decoder.layers."   # AutoencoderTiny keeps no module for the clamp, so its indices are one lower
_UPSAMPLINGS = 3
_MAX_WIDTH = 256   # TAESD's releases are 64 wide; a file claiming far more is refused before it costs memory
_LAYER_NUMBER = re.compile(r"[0-9]{1,4}")


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
        for _ in range(_UPSAMPLINGS):
            layers += [_Block(width), _Block(width), _Block(width),
                       nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
        layers += [_Block(width), _conv(width, 3)]
        super().__init__(*layers)

    def forward(self, latents: Tensor) -> Tensor:
        """(B, C, h, w) latents as diffusion sees them (scaled) -> (B, 3, 8h, 8w) in about [-1, 1]."""
        return super().forward(latents.to(self[1].weight.dtype)) * 2 - 1   # TAESD draws in [0, 1]


def is_taesd(names) -> bool:
    names = set(names)
    return {"1.weight", "3.conv.0.weight"} <= names or f"{_DIFFUSERS_PREFIX}0.weight" in names


def _our_name(name: str) -> str | None:
    """A file's tensor name in this module's layout; None for tensors it does not use (the encoder's)."""
    if not name.startswith(_DIFFUSERS_PREFIX):
        return None if name.startswith("encoder.") else name
    index, _, rest = name.removeprefix(_DIFFUSERS_PREFIX).partition(".")
    # ASCII digits, few: int() reads other scripts' digits too, and refuses more than 4,300 of them.
    return f"{int(index) + 1}.{rest}" if _LAYER_NUMBER.fullmatch(index) else name


def load_taesd_decoder(file: SafetensorsFile, latent_channels: int | None = None,
                       factor: int | None = None) -> TaesdDecoder:
    """Read either layout, refusing a decoder for other latents (channels) or another VAE (factor)."""
    names = {ours: name for name in file.keys() if (ours := _our_name(name)) is not None}
    shapes = file.shapes
    first = shapes.get(names.get("1.weight", ""))
    if first is None or len(first) != 4:
        raise ModelLoadError(file.path, "looks like a TAESD decoder but has no usable first convolution")
    width, channels = first[0], first[1]
    if not (1 <= width <= _MAX_WIDTH and 1 <= channels <= _MAX_WIDTH):   # before building a network that size
        raise ModelLoadError(file.path, f"is a TAESD-like decoder {width} channels wide for {channels}-channel "
                                        f"latents; TAESD's are 64 wide")
    if latent_channels is not None and channels != latent_channels:
        raise ModelLoadError(file.path, f"is a TAESD decoder for {channels}-channel latents; this model's VAE makes "
                                        f"{latent_channels}")
    if factor is not None and factor != 2 ** _UPSAMPLINGS:
        raise ModelLoadError(file.path, f"is a TAESD decoder, which upscales {2 ** _UPSAMPLINGS}x; this model's VAE "
                                        f"{factor}x")
    decoder = build_on_meta(lambda: TaesdDecoder(channels, width))   # shapes only, until they match the file's
    expected = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    found = {k: shapes[names[k]] for k in expected if k in names}
    if found != expected:
        missing = sorted(expected.keys() - found.keys())
        wrong = sorted(k for k in found if found[k] != expected[k])
        raise ModelLoadError(file.path, f"is not a TAESD decoder this version reads (missing {missing[:3]}, "
                                        f"wrong shape {wrong[:3]})")
    tensors = file.read_many([names[k] for k in expected], torch.float32)
    decoder.load_state_dict({k: tensors[names[k]] for k in expected}, assign=True)
    return decoder.eval().requires_grad_(False)
