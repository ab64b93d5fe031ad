"""Acceptance at full size: an SD1.5-shaped single file (random weights, fp16 as distributed)
loaded by us matches diffusers' own converters, UNet at 64x64 latents, VAE at 512x512, CLIP-L.

Slow (a few minutes on 2 cores, ~11 GB of memory) but part of the default run; `-m "not slow"` skips it.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from app.cli.bench.random_sd15 import clip_l_config, write_full_size_sd15
from core.loading.checkpoint import load_model
from core.nets.unet import UNetConfig

TOLERANCE = 1e-4
SD15_UNET = dict(  # diffusers' config of runwayml/stable-diffusion-v1-5 unet/config.json
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


def relative(ours, ref) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def sd15_file(tmp_path_factory):
    """Original-layout SD1.5 tensors with PyTorch's default random init, stored in fp16 (2 GB)."""
    return write_full_size_sd15(tmp_path_factory.mktemp("sd15") / "sd15-random.safetensors")


@pytest.mark.slow
def test_sd15_full_size_single_file_matches_diffusers(sd15_file):
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from transformers import CLIPTextModel

    ours = load_model(sd15_file)
    assert (ours.family.name, ours.prediction, ours.unet.config) == ("sd1", "epsilon", UNetConfig())
    diffs = {}
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        checkpoint = {k: v.float() for k, v in load_file(sd15_file).items()}

        ref_unet = UNet2DConditionModel(**SD15_UNET)
        ref_unet.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, dict(ref_unet.config)), strict=True)
        x, t = torch.randn(1, 4, 64, 64, generator=g), torch.tensor([601.0])
        context = torch.randn(1, 77, 768, generator=g)
        diffs["unet"] = relative(ours.unet(x, t, context), ref_unet(x, t, context).sample)
        del ref_unet

        ref_vae = DiffusersVAE(**SD15_VAE)
        ref_vae.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, dict(ref_vae.config)), strict=True)
        image = torch.rand(1, 3, 512, 512, generator=g) * 2 - 1
        diffs["vae encode mean"] = relative(ours.vae.encode(image).mean, ref_vae.encode(image).latent_dist.mean)
        z = torch.randn(1, 4, 64, 64, generator=g)
        diffs["vae decode"] = relative(ours.vae.decode(z), ref_vae.decode(z).sample)
        del ref_vae

        ref_clip = CLIPTextModel(clip_l_config())
        clip_state = convert_ldm_clip_checkpoint(checkpoint)
        expected = ref_clip.state_dict().keys()  # transformers >= 5.6 dropped the `text_model.` level
        ref_clip.load_state_dict({k if k in expected else k.removeprefix("text_model."): v
                                  for k, v in clip_state.items() if not k.endswith("position_ids")}, strict=True)
        ids = ours.text_encoder.token_ids(["a photograph of an astronaut riding a horse", ""])
        context, _ = ours.text_encoder(ids)
        diffs["text context"] = relative(context, ref_clip(input_ids=ids[0]).last_hidden_state)
    print(f"\n[parity] sd15 full-size single-file {diffs}")
    assert max(diffs.values()) <= TOLERANCE, diffs
