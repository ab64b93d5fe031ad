"""A model file's own description of itself: the `latentdesk.config` metadata entry.

Latent Desk's built-in model (and anything trained with `latentdesk train`) states
its network sizes and defaults there, because small custom networks cannot be told
apart by tensor shapes the way the released SD families can. The format:

    {"format": 1, "family": "sd1",            # the key layout (core/families.py)
     "unet": {UNetConfig fields}, "vae": {VAEConfig fields, incl. scale_factor},
     "text_encoder": {"num_attention_heads": 2, "hidden_act": "gelu", ...},
     "default_size": 128, "default_steps": 20, "default_guidance": 5.0, "default_sampler": "Euler",
     "zero_terminal_snr": true,        # trained on the schedule that ends in pure noise (core/schedules.py)
     "pooled_text_y": true}            # the UNet's y (adm_in_channels wide) is the pooled text embedding
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

from core.errors import ModelLoadError
from core.families import FAMILIES, Family
from core.text_encoder import STATED_SETTINGS
from core.unet import UNetConfig
from core.vae import VAEConfig

KEY = "latentdesk.config"
FORMAT = 1


@dataclass(frozen=True)
class EmbeddedConfig:
    family: Family
    unet: UNetConfig
    vae: VAEConfig
    text_encoder: dict   # settings the shapes cannot tell (core.text_encoder.STATED_SETTINGS)


def read(path: Path, metadata: dict[str, str]) -> EmbeddedConfig | None:
    if KEY not in metadata:
        return None
    try:
        config = json.loads(metadata[KEY])
    except json.JSONDecodeError as e:
        raise ModelLoadError(path, f"metadata {KEY} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelLoadError(path, f"metadata {KEY} is not format {FORMAT}; a newer Latent Desk may read it")
    base = FAMILIES.get(config.get("family"))
    if base is None:
        raise ModelLoadError(path, f"metadata {KEY} names unknown family {config.get('family')!r}")
    unet = _dataclass(path, UNetConfig, config.get("unet"), "unet")
    vae = _dataclass(path, VAEConfig, config.get("vae"), "vae")
    text = config.get("text_encoder", {})
    if not isinstance(text, dict):
        raise ModelLoadError(path, f"metadata {KEY}: text_encoder is not an object")
    text = {k: v for k, v in text.items() if k in STATED_SETTINGS}
    defaults = {k: config[k] for k in ("default_size", "default_steps", "default_guidance", "default_sampler",
                                       "zero_terminal_snr", "pooled_text_y") if k in config}
    for flag in ("zero_terminal_snr", "pooled_text_y"):
        if not isinstance(defaults.get(flag, False), bool):
            raise ModelLoadError(path, f"metadata {KEY}: {flag} must be true or false")
    if defaults.get("pooled_text_y"):
        if unet.adm_in_channels is None or len(base.text_encoders) != 1:
            raise ModelLoadError(path, f"metadata {KEY}: pooled_text_y needs a UNet with adm_in_channels and "
                                       f"one text encoder")
        defaults["text_encoders"] = (dataclasses.replace(base.text_encoders[0], pooled=True, projected=False),)
    try:
        family = dataclasses.replace(base, title=f"{base.title}-style model", latent_scale=vae.scale_factor,
                                     **defaults)
    except TypeError as e:
        raise ModelLoadError(path, f"metadata {KEY}: {e}") from None
    return EmbeddedConfig(family, unet, vae, text)


def _dataclass(path: Path, cls, values, name: str):
    """A config dataclass from JSON: lists become tuples; unknown or missing fields are refused."""
    if not isinstance(values, dict):
        raise ModelLoadError(path, f"metadata {KEY}: {name} is missing or not an object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ModelLoadError(path, f"metadata {KEY}: {name} has unknown settings {unknown}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise ModelLoadError(path, f"metadata {KEY}: {name}: {e}") from None


def to_metadata(family: str, unet: UNetConfig, vae: VAEConfig, text_encoder: dict, **defaults) -> str:
    """The JSON text to store under `latentdesk.config` (the trainer's export writes it)."""
    return json.dumps({"format": FORMAT, "family": family, "unet": dataclasses.asdict(unet),
                       "vae": dataclasses.asdict(vae), "text_encoder": text_encoder, **defaults})
