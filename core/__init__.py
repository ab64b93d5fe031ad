"""Latent Desk's engine: the latent diffusion model, with no Qt in it.

Data flow (docs/ARCHITECTURE.md): model files → loading/ → DiffusionModel (model.py); prompt →
text/ → context; noise → sampling/ (the UNet of nets/ as a guided denoiser) → latents → the VAE of
nets/ → images.py → metadata/ (the PNG). generate.py is the recipe that runs those stages for one
GenerationRequest (request.py). train/ and shapes/ make the built-in model; nothing else imports them.
"""

__version__ = "0.1.0"
