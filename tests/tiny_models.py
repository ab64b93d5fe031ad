"""Tiny random models of each family, written the two ways users have them.

- `write_diffusers_folder`: diffusers' own classes, randomly initialised, saved
  by diffusers (`save_pretrained`), so the folder layout is diffusers' not ours.
- `write_single_file`: original-LDM-layout tensors (our networks' native keys,
  OpenCLIP keys made here from raw shapes) in one `.safetensors`, so that
  diffusers' own single-file converters can serve as the independent oracle.

Sizes follow each family's head rule (SD1: 8 heads; SD2/SDXL: 64 channels a
head) so the single-file loader can read the config off the shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from core.families import FAMILIES
from core.text.tokenizer import tokenizer_dir

TEXT_PROJECTION = 32
VOCAB = 49408
# (width, layers as released) of each text encoder. SD2 keeps its real 24 layers so diffusers' own
# single-file loader (which drops resblocks.23) treats it as it treats the real one; SDXL's two
# encoders differ in width because diffusers tells them apart by width.
TEXT = {"sd1": [(64, 3)], "sd2": [(64, 24)], "sdxl": [(64, 3), (96, 3)]}

UNET = {
    "sd1": dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
                cross_attention_dim=64, layers_per_block=1),
    "sd2": dict(block_out_channels=(64, 128), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(1, 2),
                cross_attention_dim=64, use_linear_projection=True, layers_per_block=1),
    "sdxl": dict(block_out_channels=(64, 128), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2),
                 transformer_layers_per_block=(1, 2), cross_attention_dim=64 + 96,
                 use_linear_projection=True, layers_per_block=1, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=TEXT_PROJECTION + 6 * 256),
}
VAE = dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def seeded(seed: int):
    torch.manual_seed(seed)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Normal weights everywhere: zero-initialised output layers would hide wiring mistakes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.02 if "embedding" in name else 0.2
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if name.endswith("norm.weight") else 0.0))
    return module


def clip_config(family: str, index: int, trimmed: bool = False):
    """`trimmed`: without the layers the family never uses, as diffusers folders store it."""
    from transformers import CLIPTextConfig
    spec = FAMILIES[family].text_encoders[index]
    openclip = spec.layout == "openclip"
    width, layers = TEXT[family][index]
    layers -= spec.unused_final_layers if trimmed else 0
    return CLIPTextConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width,
                          num_hidden_layers=layers, num_attention_heads=1, max_position_embeddings=77,
                          projection_dim=TEXT_PROJECTION, hidden_act="gelu" if openclip else "quick_gelu",
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=1)


def diffusers_components(family: str, seed: int = 0, prediction: str = "epsilon") -> dict:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    seeded(seed)
    components = {
        "unet": randomize(UNet2DConditionModel(sample_size=16, **UNET[family]), seed),
        "vae": randomize(AutoencoderKL(scaling_factor=FAMILIES[family].latent_scale, **VAE), seed + 1),
        "scheduler": EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            prediction_type=prediction),
    }
    for i, spec in enumerate(FAMILIES[family].text_encoders):
        cls = CLIPTextModelWithProjection if spec.pooled else CLIPTextModel
        suffix = "" if i == 0 else "_2"
        components["text_encoder" + suffix] = randomize(cls(clip_config(family, i, trimmed=True)), seed + 2 + i)
        tok = CLIPTokenizer(str(tokenizer_dir() / "vocab.json"), str(tokenizer_dir() / "merges.txt"),
                            pad_token="<|endoftext|>" if spec.pad_id == 49407 else "!", model_max_length=77)
        components["tokenizer" + suffix] = tok
    return components


def diffusers_pipeline(family: str, seed: int = 0, prediction: str = "epsilon"):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    components = diffusers_components(family, seed, prediction)
    if family == "sdxl":
        return StableDiffusionXLPipeline(**components)
    return StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def write_diffusers_folder(family: str, folder: Path, seed: int = 0, prediction: str = "epsilon") -> Path:
    diffusers_pipeline(family, seed, prediction).save_pretrained(folder, safe_serialization=True)
    return folder


def write_lcm_folder(folder: Path, seed: int = 0, cond_dim: int = 32) -> Path:
    """An LCM-distilled SD1-style folder as diffusers writes one (SimianLuo/LCM_Dreamshaper_v7's layout): a UNet
    with a guidance embedding (time_cond_proj_dim) and LCMScheduler."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel
    components = diffusers_components("sd1", seed)
    components["unet"] = randomize(UNet2DConditionModel(sample_size=16, time_cond_proj_dim=cond_dim, **UNET["sd1"]),
                                   seed)
    with torch.no_grad():   # loud enough that a scale left out, or embedded wrong, shows in the latents
        components["unet"].time_embedding.cond_proj.weight.mul_(20)
    components["scheduler"] = LCMScheduler.from_config(components["scheduler"].config)
    pipe = LatentConsistencyModelPipeline(**components, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def openclip_tensors(width: int, layers: int, seed: int) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower's keys and shapes (q, k, v packed into in_proj), random values."""
    g = torch.Generator().manual_seed(seed)
    w, ff = width, 2 * width

    def r(*shape, scale=0.2, mean=0.0):
        return torch.randn(shape, generator=g) * scale + mean

    out = {"token_embedding.weight": r(VOCAB, w, scale=0.02), "positional_embedding": r(77, w, scale=0.02),
           "ln_final.weight": r(w, mean=1.0), "ln_final.bias": r(w), "logit_scale": torch.tensor(4.6),
           "text_projection": r(w, TEXT_PROJECTION)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        out |= {p + "ln_1.weight": r(w, mean=1.0), p + "ln_1.bias": r(w),
                p + "attn.in_proj_weight": r(3 * w, w), p + "attn.in_proj_bias": r(3 * w),
                p + "attn.out_proj.weight": r(w, w), p + "attn.out_proj.bias": r(w),
                p + "ln_2.weight": r(w, mean=1.0), p + "ln_2.bias": r(w),
                p + "mlp.c_fc.weight": r(ff, w), p + "mlp.c_fc.bias": r(ff),
                p + "mlp.c_proj.weight": r(w, ff), p + "mlp.c_proj.bias": r(w)}
    return out


def original_layout_state(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole single-file checkpoint's tensors in the original LDM layout."""
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from core.families import UNET_PREFIX, VAE_PREFIX
    from core.loading.convert_unet import unet_config_from_diffusers
    from core.loading.convert_vae import vae_config_from_diffusers
    from core.nets.unet import UNet
    from core.nets.vae import AutoencoderKL

    seeded(seed)
    unet_cfg = unet_config_from_diffusers(dict(UNet2DConditionModel(sample_size=16, **UNET[family]).config))
    vae_cfg = vae_config_from_diffusers(dict(DiffusersVAE(scaling_factor=FAMILIES[family].latent_scale, **VAE).config))
    state = {UNET_PREFIX + k: v for k, v in randomize(UNet(unet_cfg), seed).state_dict().items()}
    state |= {VAE_PREFIX + k: v for k, v in randomize(AutoencoderKL(vae_cfg), seed + 1).state_dict().items()}
    for i, spec in enumerate(FAMILIES[family].text_encoders):
        if spec.layout == "hf":
            clip = randomize(CLIPTextModel(clip_config(family, i)), seed + 2 + i)
            # Real files say `text_model.`; transformers >= 5.6 no longer puts it in CLIPTextModel's keys.
            state |= {spec.prefix + "text_model." + k.removeprefix("text_model."): v
                      for k, v in clip.state_dict().items()}
        else:
            state |= {spec.prefix + k: v for k, v in openclip_tensors(*TEXT[family][i], seed + 2 + i).items()}
    return {k: v.contiguous() for k, v in state.items()}


def write_single_file(family: str, path: Path, seed: int = 0, dtype: torch.dtype = torch.float32,
                      metadata: dict[str, str] | None = None) -> Path:
    state = original_layout_state(family, seed)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, path, metadata=metadata)
    return path

