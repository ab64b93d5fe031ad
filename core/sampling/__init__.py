"""Stage 3, noise → latents: the noise schedule, the UNet as a denoiser, classifier-free guidance,
the samplers, and the approximate speed-ups (DeepCache, guidance cut-off)."""
