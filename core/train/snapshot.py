"""A stage-2 run's model as it stands at its last checkpoint (EMA weights), before the run has finished.

    export_snapshot(run folder, autoencoder, its id, out, defaults) -> (path, step)
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import LatentDeskError
from core.nets.unet import UNetConfig
from core.nets.vae import AutoencoderKL
from core.train.checkpoints import CHECKPOINT_DIR, read_checkpoint
from core.train.diffusion import DiffusionObjective, NoiseTarget, TextEncoderConfig, build_networks
from core.train.export import ModelDefaults, export_model


def export_snapshot(folder: str | Path, vae: AutoencoderKL, autoencoder: str, out: str | Path,
                    defaults: ModelDefaults, export_dtype: str = "fp16") -> tuple[Path, int]:
    """The model as it stands at the last checkpoint of an unfinished stage-2 run in `folder` (EMA weights).

    `autoencoder` is the stage-1 id (`autoencoder_id`) the caller loaded `vae` from; a run trained on
    another autoencoder is refused, as its latents would mean something else. Returns (path, step).
    """
    folder = Path(folder)
    found = read_checkpoint(folder / CHECKPOINT_DIR)
    if found is None:
        raise LatentDeskError(f"{folder}: no training checkpoint here (a stage-2 run's --out folder has one)")
    tensors, meta = found
    if meta.get("stage") != "diffusion":
        raise LatentDeskError(f"{folder}: the checkpoint is of a {meta.get('stage')} run, not a diffusion one")
    described = meta["description"]
    if described.get("autoencoder") != autoencoder:
        raise LatentDeskError(f"{folder} was trained on autoencoder {described.get('autoencoder')}, "
                              f"not on the one given ({autoencoder})")
    unet_config = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in described["unet"].items()})
    text_config = TextEncoderConfig(**described["text_encoder"])
    target = NoiseTarget(**{k: tuple(v) if isinstance(v, list) else v for k, v in described.get("target", {}).items()})
    objective = DiffusionObjective(*build_networks(unet_config, text_config, 0), target,
                                   tuple(described.get("label_classes", ())), described.get("attribute_loss", 0.0))
    objective.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    parameters = dict(objective.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("ema."):
                parameters[key.removeprefix("ema.")].copy_(value)
    path = export_model(out, objective.unet, vae, objective.text_model, defaults, export_dtype,
                        prediction=target.prediction, zero_terminal_snr=target.zero_terminal_snr)
    return path, meta["step"]
