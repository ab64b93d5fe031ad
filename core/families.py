"""The model families Latent Desk knows, one table row each.

Everything that differs between SD1.x, SD2.x and SDXL and cannot be read off the
tensor shapes lives here, so no `if family == ...` chains spread across files.
"""

from __future__ import annotations

from dataclasses import dataclass

EOS_ID = 49407   # <|endoftext|>
BANG_ID = 0      # "!" — OpenCLIP's padding token


@dataclass(frozen=True)
class TextEncoderSpec:
    """How one CLIP text encoder is stored and which of its outputs conditions the UNet."""

    prefix: str                 # key prefix in a single-file checkpoint
    layout: str                 # "hf": transformers CLIPTextModel keys; "openclip": OpenCLIP keys
    diffusers_folder: str       # sub-folder in a diffusers model folder
    hidden_layer: int           # -1 = last layer, -2 = penultimate (before clip-skip)
    final_norm: bool            # apply final_layer_norm to the chosen hidden state
    pad_id: int                 # token that fills the 77 slots after the prompt
    pooled: bool = False        # also return the pooled embedding (SDXL's second encoder; Latent Desk's built-in)
    projected: bool = True      # pooled through text_projection (SDXL); False: the final-normed EOS token as is
    unused_final_layers: int = 0  # layers after the one used, dropped at load (diffusers folders lack them)


@dataclass(frozen=True)
class Family:
    name: str                   # "sd1" | "sd2" | "sdxl"
    title: str                  # for people
    latent_scale: float
    default_size: int           # the resolution the family was trained at
    heads_fixed: int | None     # SD1: always 8 heads ...
    head_dim: int | None        # ... SD2/SDXL: 64 channels per head
    text_encoders: tuple[TextEncoderSpec, ...]
    size_embed_dim: int = 0     # SDXL: each of the 6 size/crop numbers gets a 256-wide embedding
    # What a request uses unless the user says otherwise (a model file may state its own).
    default_steps: int = 20
    default_guidance: float = 7.0
    default_sampler: str = "DPM++ 2M Karras"
    # Trained on the schedule rescaled to end in pure noise (core.sampling.schedules); only a file can say so.
    zero_terminal_snr: bool = False
    # The UNet's extra vector y (added to its timestep embedding) is the pooled text embedding alone,
    # as in Latent Desk's built-in model; SDXL's y also holds size embeddings. Only a file can say so.
    pooled_text_y: bool = False

    def heads_for(self, channels: int) -> int:
        if self.heads_fixed is not None:
            return self.heads_fixed
        return max(1, channels // self.head_dim)


UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

SD1 = Family(
    name="sd1", title="Stable Diffusion 1.x", latent_scale=0.18215, default_size=512,
    heads_fixed=8, head_dim=None,
    text_encoders=(TextEncoderSpec("cond_stage_model.transformer.", "hf", "text_encoder",
                                   hidden_layer=-1, final_norm=True, pad_id=EOS_ID),),
)
SD2 = Family(
    name="sd2", title="Stable Diffusion 2.x", latent_scale=0.18215, default_size=768,
    heads_fixed=None, head_dim=64,
    # SD2 conditions on OpenCLIP-H's penultimate layer, then the final LayerNorm. Diffusers folders
    # store the encoder without its last layer (23 of 24); single files are trimmed the same way at load.
    text_encoders=(TextEncoderSpec("cond_stage_model.model.", "openclip", "text_encoder",
                                   hidden_layer=-1, final_norm=True, pad_id=BANG_ID, unused_final_layers=1),),
)
SDXL = Family(
    name="sdxl", title="Stable Diffusion XL", latent_scale=0.13025, default_size=1024,
    heads_fixed=None, head_dim=64, size_embed_dim=256,
    # Both encoders' penultimate layers, without final LayerNorm, concatenated on the channel axis.
    text_encoders=(
        TextEncoderSpec("conditioner.embedders.0.transformer.", "hf", "text_encoder",
                        hidden_layer=-2, final_norm=False, pad_id=EOS_ID),
        TextEncoderSpec("conditioner.embedders.1.model.", "openclip", "text_encoder_2",
                        hidden_layer=-2, final_norm=False, pad_id=BANG_ID, pooled=True),
    ),
)

FAMILIES = {f.name: f for f in (SD1, SD2, SDXL)}
