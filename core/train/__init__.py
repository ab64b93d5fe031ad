"""Two-stage training of a latent diffusion model (Rombach et al. 2022), as the built-in model was made.

    data         captioned image folders, the shapes world, the deterministic batch order
    loop         the shared training loop, put together from:
      settings     TrainSettings and the learning-rate schedule
      distributed  one process or several (DDP under torchrun)
      ema          the moving average of the weights that ships
      checkpoints  the resumable state on disk, and whether it resumes this run
      progress     the progress line (core/eta.py's sum) and loss.jsonl
    autoencoder  stage 1: AutoencoderKL (perceptual compression) and its latent scale factor
    diffusion    stage 2: UNet + CLIP text encoder on the frozen autoencoder's latents, epsilon objective
    export       one single-file `.safetensors` in the original LDM layout, config in its metadata
    recipe       BUILTIN_RECIPE (v1, shipped) and V2_RECIPE: the fixed settings `latentdesk train builtin` runs
    preview      a model's tiny preview decoder, trained to imitate its VAE decoder

The command line (`latentdesk train ...`) is app/cli/train.py.
"""
