"""Latent Desk's engine: the latent diffusion model, with no Qt in it.

Data flow (docs/ARCHITECTURE.md): prompt -> tokenizer -> text_encoder -> unet
(inside the sampler) -> latents -> vae -> image. Checkpoints come in through
checkpoint.load_model().
"""

__version__ = "0.1.0"
