"""Does the UNet predict the noise (epsilon) or the velocity (v)?

The weights carry no reliable marker: SD 2.x's 768-v and 512-base checkpoints have the same keys and
shapes. So several signals are combined, strongest first (a ModelSpec `modelspec.prediction_type`
metadata entry, a `v_pred` key, a diffusers scheduler config, a probe of the UNet for SD2), and the
caller (the user) can always override.
"""

from __future__ import annotations

import torch

PREDICTIONS = ("epsilon", "v")


def decide_prediction(override: str | None, metadata: dict[str, str], keys, scheduler_prediction: str | None,
                      family, unet: torch.nn.Module) -> tuple[str, str]:
    """("epsilon" | "v", the signal that decided it) — the signal is shown to the user."""
    if override is not None:
        return override, "set by user"
    spec = metadata.get("modelspec.prediction_type", "").strip().lower()
    if spec in ("v", "v_prediction"):
        return "v", "file metadata (modelspec.prediction_type)"
    if spec in ("epsilon", "eps"):
        return "epsilon", "file metadata (modelspec.prediction_type)"
    if metadata.get("ss_v_parameterization", "").strip().lower() == "true":  # kohya's trainers
        return "v", "file metadata (ss_v_parameterization)"
    if "v_pred" in keys:  # an empty marker tensor some SDXL v-models carry
        return "v", "v_pred marker tensor"
    if scheduler_prediction is not None:
        kind = "v" if scheduler_prediction == "v_prediction" else "epsilon"
        return kind, "scheduler config (prediction_type)"
    if family.name == "sd2":  # only SD2 shipped both kinds under one architecture
        return ("v", "one-step probe") if probe_predicts_v(unet) else ("epsilon", "one-step probe")
    return "epsilon", f"{family.title} default"


@torch.no_grad()
def probe_predicts_v(unet: torch.nn.Module) -> bool:
    """A1111's test: at t=999 on a flat latent, a v-model's output sits well below its input."""
    param = next(unet.parameters())
    config = unet.config
    x = torch.full((1, config.in_channels, 8, 8), 0.5, dtype=param.dtype, device=param.device)
    t = torch.full((1,), 999.0, device=param.device)
    context = torch.zeros(1, 77, config.context_dim, dtype=param.dtype, device=param.device)
    y = torch.zeros(1, config.adm_in_channels, dtype=param.dtype, device=param.device) if config.adm_in_channels else None
    out = unet(x, t, context, y)
    return (out[:, :4] - x[:, :4]).mean().item() < -1
