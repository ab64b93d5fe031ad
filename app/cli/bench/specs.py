"""The two model sizes the comparison runs at: SD1.5's shapes, and a tiny one for `--quick` and tests.

Configs are written in diffusers' vocabulary (UNet2DConditionModel / AutoencoderKL kwargs,
transformers' CLIPTextConfig) because that is what both sides can be built from: diffusers
takes them as they are, and ours goes through our own converters (core/loading/convert_unet.py,
core/loading/convert_vae.py), the same route a diffusers folder takes when a user opens one.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTN_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
ATTN_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
CLIP_TOKENS = 77


@dataclass(frozen=True)
class BenchSpec:
    name: str                 # how the report names this size
    unet: dict                # diffusers UNet2DConditionModel(**unet)
    vae: dict                 # diffusers AutoencoderKL(**vae)
    clip: dict                # transformers CLIPTextConfig(**clip)
    image_size: int           # px, width and height
    steps: int                # txt2img steps (one guided UNet call each with Euler)
    guidance: float = 7.5     # > 1, so every step is one batch-2 UNet call on both sides
    sampler: str = "Euler"    # ours by A1111's name; diffusers' EulerDiscreteScheduler is the same method
    batch: int = 2            # UNet batch in the step case: cond + uncond, as guidance runs it
    approx_size: int = 0      # px, the approximate speed-ups case (app/cli/bench/approximate.py); 0: image_size
    approx_steps: int = 20    # its steps: the family's default, not the cut-down txt2img count

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def context_dim(self) -> int:
        return self.clip["hidden_size"]


# SD1.5's scheduler (runwayml/stable-diffusion-v1-5 scheduler_config.json, trained betas).
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", steps_offset=1)

SD15 = BenchSpec(
    name="SD1.5-shaped (random weights)",
    # runwayml/stable-diffusion-v1-5 unet/config.json; attention_head_dim holds the head count (8).
    unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
              block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
              down_block_types=(ATTN_DOWN, ATTN_DOWN, ATTN_DOWN, PLAIN_DOWN),
              up_block_types=(PLAIN_UP, ATTN_UP, ATTN_UP, ATTN_UP)),
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             scaling_factor=0.18215),
    # CLIP ViT-L/14's text tower, as SD1.x conditions on it.
    clip=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=CLIP_TOKENS, projection_dim=768,
              hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
    image_size=512,
    steps=10,   # fewer than SD's usual 20 to keep a CPU run bearable; every step costs the same on both sides
    # The speed-ups case runs four modes end to end, four times each, at SD's 20 steps: at 512x512 on a
    # CPU that is most of an hour, at 256x256 minutes. The ratio at 512 is not the same (attention's
    # share grows with the token count); measure there with a GPU.
    approx_size=256,
)

# Tiny, but every structural choice kept: 4 VAE levels (latents 1/8 of the image), an attention and a
# plain UNet level, SD1's 8 heads, channels in multiples of 32 (SD's 32 norm groups, which a single
# file does not record), and CLIP's 64-wide heads (our loader reads the head count off the width).
TINY = BenchSpec(
    name="tiny (random weights)",
    unet=dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64), attention_head_dim=8,
              cross_attention_dim=64, down_block_types=(ATTN_DOWN, PLAIN_DOWN), up_block_types=(PLAIN_UP, ATTN_UP)),
    vae=dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4, sample_size=64,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             scaling_factor=0.18215),
    clip=dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=1, max_position_embeddings=CLIP_TOKENS, projection_dim=64,
              hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
    image_size=64,
    steps=3,
    approx_steps=3,
)
