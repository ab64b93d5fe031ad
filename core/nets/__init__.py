"""The networks: the UNet that removes noise, the VAE between pixels and latents, and the small
decoders (TAESD, the built-in model's preview decoder, the linear latent→RGB map) that draw previews."""
