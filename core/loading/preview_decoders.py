"""Preview decoder files: ours (core/nets/preview_decoder.py) and TAESD's (core/nets/taesd.py).

    preview_decoder_path(model_path)   where a model's preview decoder lives: `<model>.preview.safetensors`
    tiny_decoder_file(model_path, model, folders)   the file of the tiny decoder a model has, if any
    save_preview_decoder(path, decoder, about)   one .safetensors, the config in its metadata
    load_preview_decoder(path, latent_channels, factor)   ours or a TAESD file, checked against the VAE;
                                       ModelLoadError if unusable
    is_taesd(names), load_taesd_decoder(file, latent_channels, factor)   TAESD, in either layout

Every size a file states is checked before a network of that size is built (on the meta device, shapes
only, until they match the file's own tensors).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from core.atomic_files import save_tensors
from core.errors import ModelLoadError
from core.loading.safetensors_io import SafetensorsFile
from core.loading.untrusted_json import loads
from core.loading.weights import build_on_meta
from core.nets.preview_decoder import PreviewDecoder, PreviewDecoderConfig
from core.nets.taesd import UPSAMPLINGS, TaesdDecoder, taesd_file_for

CONFIG_KEY = "latentdesk.preview_decoder"   # metadata entry holding the config as JSON
SUFFIX = ".preview.safetensors"
_DIFFUSERS_PREFIX = "decoder.layers."   # AutoencoderTiny keeps no module for the clamp, so its indices are one lower
_MAX_TAESD_WIDTH = 256   # TAESD's releases are 64 wide; a file claiming far more is refused before it costs memory
_LAYER_NUMBER = re.compile(r"[0-9]{1,4}")


def preview_decoder_path(model_path: str | Path) -> Path:
    """`models/x.safetensors` -> `models/x.preview.safetensors`; a diffusers folder keeps it inside."""
    model_path = Path(model_path)
    if model_path.is_dir():
        return model_path / f"preview{SUFFIX}"
    return model_path.with_name(model_path.name.removesuffix(".safetensors") + SUFFIX)


def tiny_decoder_file(model_path: str | Path, family: str, latent_scale: float,
                      folders: Sequence[Path] = ()) -> Path | None:
    """The tiny decoder a model has: its own (`x.preview.safetensors`, ours or a TAESD file renamed), else
    TAESD's for a Stable Diffusion model under its usual name (`taesd_decoder.safetensors`, for SDXL
    `taesdxl_decoder.safetensors`) beside the model or in one of `folders` (the models folder, where
    `latentdesk models get taesd` puts it). None when there is none."""
    own = preview_decoder_path(model_path)
    if own.is_file():
        return own
    name = taesd_file_for(family, latent_scale)
    if name is None:
        return None
    return next((folder / name for folder in (Path(model_path).parent, *folders) if (folder / name).is_file()), None)


def save_preview_decoder(path: str | Path, decoder: PreviewDecoder, about: dict[str, str] | None = None) -> Path:
    """Write the weights (fp32: the file is ~100 KB) and config atomically; `about` adds metadata entries."""
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
    if not (1 <= width <= _MAX_TAESD_WIDTH and 1 <= channels <= _MAX_TAESD_WIDTH):   # before building a network that size
        raise ModelLoadError(file.path, f"is a TAESD-like decoder {width} channels wide for {channels}-channel "
                                        f"latents; TAESD's are 64 wide")
    if latent_channels is not None and channels != latent_channels:
        raise ModelLoadError(file.path, f"is a TAESD decoder for {channels}-channel latents; this model's VAE makes "
                                        f"{latent_channels}")
    if factor is not None and factor != 2 ** UPSAMPLINGS:
        raise ModelLoadError(file.path, f"is a TAESD decoder, which upscales {2 ** UPSAMPLINGS}x; this model's VAE "
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
