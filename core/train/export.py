"""A trained model as ONE `.safetensors` in the original LDM single-file layout (what SD 1.x files use).

    model.diffusion_model.*                        the UNet (core/nets/unet.py keys)
    first_stage_model.*                            the autoencoder (core/nets/vae.py keys)
    cond_stage_model.transformer.text_model.*      the CLIP text encoder (transformers layout)

and in the metadata `modelspec.prediction_type` ("epsilon" or "v") and `latentdesk.config`, the
JSON that says what the shapes cannot: heads, activation, the latent scale factor and the
model's default size, steps, guidance and sampler (core/loading/embedded_config.py reads it).
So `core.loading.checkpoint.load_model` loads it by the same code path as any SD checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPTextModel

from core.atomic_files import save_tensors
from core.errors import LatentDeskError
from core.families import SD1, UNET_PREFIX, VAE_PREFIX
from core.loading import embedded_config
from core.nets.unet import UNet
from core.nets.vae import AutoencoderKL
from core.sampling.samplers import SAMPLERS

TEXT_PREFIX = SD1.text_encoders[0].prefix + "text_model."
TEXT_SETTINGS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "max_position_embeddings", "hidden_act", "vocab_size")
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class ModelDefaults:
    """What a generation request uses with this model unless the user says otherwise."""

    size: int = 128
    steps: int = 20
    guidance: float = 5.0
    sampler: str = "DPM++ 2M Karras"

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise LatentDeskError(f"Unknown sampler {self.sampler!r}. Choose one of: {', '.join(SAMPLERS)}.")


def export_state(unet: UNet, vae: AutoencoderKL, text_model: CLIPTextModel) -> dict[str, torch.Tensor]:
    state = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    state |= {VAE_PREFIX + k: v for k, v in vae.state_dict().items()}
    # transformers >= 5.6 dropped the `text_model.` level from CLIPTextModel's keys; SD1 files have it.
    state |= {TEXT_PREFIX + k.removeprefix("text_model."): v for k, v in text_model.state_dict().items()
              if not k.endswith("position_ids")}
    return state


def export_model(path: str | Path, unet: UNet, vae: AutoencoderKL, text_model: CLIPTextModel,
                 defaults: ModelDefaults = ModelDefaults(), dtype: str = "fp16", title: str = "", *,
                 prediction: str = "epsilon", zero_terminal_snr: bool = False) -> Path:
    """Write the three networks and their config to `path` (atomically); returns the path."""
    if dtype not in DTYPES:
        raise LatentDeskError(f"export dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if unet.config.adm_in_channels not in (None, text_model.config.hidden_size):
        raise LatentDeskError(f"UNet pooled-text width {unet.config.adm_in_channels} != text encoder width "
                              f"{text_model.config.hidden_size}")
    if unet.config.context_dim != text_model.config.hidden_size:
        raise LatentDeskError(f"UNet context width {unet.config.context_dim} != text encoder width "
                              f"{text_model.config.hidden_size}")
    path = Path(path)
    state = {k: v.detach().to("cpu", DTYPES[dtype]) if v.is_floating_point() else v.detach().cpu()
             for k, v in export_state(unet, vae, text_model).items()}
    text = {k: getattr(text_model.config, k) for k in TEXT_SETTINGS}
    config = embedded_config.to_metadata("sd1", unet.config, vae.config, text, default_size=defaults.size,
                                         default_steps=defaults.steps, default_guidance=float(defaults.guidance),
                                         default_sampler=defaults.sampler, zero_terminal_snr=zero_terminal_snr,
                                         pooled_text_y=unet.config.adm_in_channels is not None)
    metadata = {"modelspec.prediction_type": prediction, embedded_config.KEY: config}
    if title:
        metadata["modelspec.title"] = title
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, state, metadata)
    return path
