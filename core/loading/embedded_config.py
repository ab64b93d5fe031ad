"""A model file's own description of itself: the `latentdesk.config` metadata entry.

Latent Desk's built-in model (and anything trained with `latentdesk train`) states
its network sizes and defaults there, because small custom networks cannot be told
apart by tensor shapes the way the released SD families can. The format:

    {"format": 1, "family": "sd1",            # the key layout (core/families.py)
     "unet": {UNetConfig fields}, "vae": {VAEConfig fields, incl. scale_factor},
     "text_encoder": {"num_attention_heads": 2, "hidden_act": "gelu", ...},
     "default_size": 128, "default_steps": 20, "default_guidance": 5.0, "default_sampler": "Euler",
     "zero_terminal_snr": true,        # trained on the schedule that ends in pure noise (core/sampling/schedules.py)
     "pooled_text_y": true}            # the UNet's y (adm_in_channels wide) is the pooled text embedding
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

from core.errors import LatentDeskError, ModelLoadError, shown
from core.families import FAMILIES, Family
from core.limits import check_size, flag, whole
from core.loading.config_checks import check_unet_config, check_vae_config
from core.loading.untrusted_json import UnreadableJson, loads
from core.nets.unet import UNetConfig
from core.nets.vae import VAEConfig
from core.sampling.sampler_names import SAMPLER_NAMES
from core.text.encoder import STATED_SETTINGS

KEY = "latentdesk.config"
FORMAT = 1
MAX_STEPS = 1000      # the noise schedule's own length: more steps than timesteps cannot differ
MAX_GUIDANCE = 100.0  # far beyond any useful scale (SD: 7, the app's slider: 20); NaN and infinity fail it too


@dataclass(frozen=True)
class EmbeddedConfig:
    family: Family
    unet: UNetConfig
    vae: VAEConfig
    text_encoder: dict   # settings the shapes cannot tell (core.text.encoder.STATED_SETTINGS)


def read(path: Path, metadata: dict[str, str]) -> EmbeddedConfig | None:
    if KEY not in metadata:
        return None
    try:
        config = loads(metadata[KEY])
    except UnreadableJson as e:
        raise ModelLoadError(path, f"metadata {KEY} is {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelLoadError(path, f"metadata {KEY} is not format {FORMAT}; a newer Latent Desk may read it")
    family = config.get("family")
    base = FAMILIES.get(family) if isinstance(family, str) else None
    if base is None:
        raise ModelLoadError(path, f"metadata {KEY} names unknown family {shown(family)}")
    # Sizes are only bounded here; core.loading.checkpoint holds them against the tensors before building anything.
    unet = _dataclass(path, UNetConfig, config.get("unet"), "unet", check_unet_config)
    vae = _dataclass(path, VAEConfig, config.get("vae"), "vae", check_vae_config)
    text = config.get("text_encoder", {})
    if not isinstance(text, dict):
        raise ModelLoadError(path, f"metadata {KEY}: text_encoder is not an object")
    text = {k: v for k, v in text.items() if k in STATED_SETTINGS}
    defaults = {k: config[k] for k in ("default_size", "default_steps", "default_guidance", "default_sampler",
                                       "zero_terminal_snr", "pooled_text_y") if k in config}
    try:
        _check_defaults(defaults)
    except LatentDeskError as e:
        raise ModelLoadError(path, f"metadata {KEY}: {e}") from None
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


def _dataclass(path: Path, cls, values, name: str, check):
    """A config dataclass from JSON, `check`ed: lists become tuples; unknown or missing fields are refused."""
    if not isinstance(values, dict):
        raise ModelLoadError(path, f"metadata {KEY}: {name} is missing or not an object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ModelLoadError(path, f"metadata {KEY}: {name} has unknown settings {shown(unknown)}")
    try:
        config = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        check(config)
    except (TypeError, ValueError, LatentDeskError) as e:
        raise ModelLoadError(path, f"metadata {KEY}: {name}: {e}") from None
    return config


def _check_defaults(defaults: dict) -> None:
    """What a request starts from: the same limits a request has (core.generate checks those again)."""
    if "default_size" in defaults:
        try:
            check_size(defaults["default_size"], defaults["default_size"], min_side=8)   # tiny trained models: 32 px
        except LatentDeskError as e:
            raise LatentDeskError(f"default_size: {e}") from None
    if "default_steps" in defaults:
        whole("default_steps", defaults["default_steps"], 1, MAX_STEPS)
    if "default_guidance" in defaults:
        guidance = defaults["default_guidance"]
        if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 0 <= guidance <= MAX_GUIDANCE:
            raise LatentDeskError(f"default_guidance must be a number from 0 to {MAX_GUIDANCE}, not {shown(guidance)}")
    if defaults.get("default_sampler", SAMPLER_NAMES[0]) not in SAMPLER_NAMES:
        raise LatentDeskError(f"default_sampler {shown(defaults['default_sampler'])} is not one of {SAMPLER_NAMES}")
    for name in ("zero_terminal_snr", "pooled_text_y"):
        flag(name, defaults.get(name, False))


def to_metadata(family: str, unet: UNetConfig, vae: VAEConfig, text_encoder: dict, **defaults) -> str:
    """The JSON text to store under `latentdesk.config` (the trainer's export writes it)."""
    return json.dumps({"format": FORMAT, "family": family, "unet": dataclasses.asdict(unet),
                       "vae": dataclasses.asdict(vae), "text_encoder": text_encoder, **defaults})
