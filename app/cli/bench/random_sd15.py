"""An SD1.5-shaped single file with random weights, for measuring and checking at full size without
downloading 2 GB: what scripts/bench_preview.py --sd15 times and tests/test_full_size.py loads.

    clip_l_config() -> CLIPTextConfig             SD 1.x's text encoder (specs.SD15's)
    write_full_size_sd15(path) -> path             original-layout tensors, PyTorch's default init, fp16

Unlike the comparison's pair (pair.py, checkpoint_load.py) it needs no diffusers: our own networks
at their SD1.5 defaults and transformers' CLIP model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from app.cli.bench.specs import SD15


def clip_l_config():
    """SD 1.x's text encoder, CLIP ViT-L/14's text tower."""
    from transformers import CLIPTextConfig
    return CLIPTextConfig(**SD15.clip)


def write_full_size_sd15(path: Path) -> Path:
    """An SD1.5-shaped single file: original-layout tensors, PyTorch's default random init, fp16 (2 GB)."""
    from transformers import CLIPTextModel

    from core.families import UNET_PREFIX, VAE_PREFIX
    from core.nets.unet import UNet, UNetConfig
    from core.nets.vae import AutoencoderKL, VAEConfig

    torch.manual_seed(0)
    state = {UNET_PREFIX + k: v for k, v in UNet(UNetConfig()).state_dict().items()}
    state |= {VAE_PREFIX + k: v for k, v in AutoencoderKL(VAEConfig()).state_dict().items()}
    clip = CLIPTextModel(clip_l_config())
    state |= {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
              for k, v in clip.state_dict().items()}
    save_file({k: v.half() for k, v in state.items()}, path)
    return path
