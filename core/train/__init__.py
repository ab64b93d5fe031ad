"""Two-stage training of a latent diffusion model (Rombach et al. 2022), as the built-in model was made.

    data         captioned image folders, the shapes world, the deterministic batch order
    loop         the shared training loop: resumable checkpoints, EMA, DDP, progress, loss log
    autoencoder  stage 1: AutoencoderKL (perceptual compression) and its latent scale factor
    diffusion    stage 2: UNet + CLIP text encoder on the frozen autoencoder's latents, epsilon objective
    export       one single-file `.safetensors` in the original LDM layout, config in its metadata
    recipe       BUILTIN_RECIPE: the fixed settings `latentdesk train builtin` runs
    cli          `latentdesk train autoencoder | diffusion | builtin`
"""
