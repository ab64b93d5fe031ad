"""Text encoders against diffusers (test-only oracle): weight conversion and each family's conditioning.

Tiny random CLIPs (width 64/96, 3 layers, 1 head) with the real 49,408-token
vocabulary, so real prompts go through the shipped tokenizer.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from core.errors import LatentDeskError
from core.families import SD1, SD2, SDXL, Family
from core.text.encoder import (
    TextEncoder,
    build_clip,
    clip_config_from_state_dict,
    clip_from_state_dict,
    load_clip_weights,
    openclip_to_hf,
)
from core.text.tokenizer import tokenizer_dir

LAYERS = 3
PROMPTS = ["a photo of a cat", "(masterpiece:1.2), best quality, highly detailed, " * 8, ""]


def tiny_config(width: int, *, openclip: bool, layers: int = LAYERS, projection: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                          num_attention_heads=1, projection_dim=projection,
                          hidden_act="gelu" if openclip else "quick_gelu")


def _randn(gen: torch.Generator, *shape: int, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def openclip_state_dict(width: int, projection: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """OpenCLIP text-tower weights as in SD2 / SDXL checkpoints, plus the keys that must be dropped."""
    g = torch.Generator().manual_seed(seed)
    sd = {"token_embedding.weight": _randn(g, 49408, width, scale=0.1),
          "positional_embedding": _randn(g, 77, width, scale=0.02)}
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + _randn(g, width, scale=0.1), _randn(g, width)
        sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = _randn(g, 3 * width, width), _randn(g, 3 * width)
        sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = _randn(g, width, width), _randn(g, width)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = _randn(g, 4 * width, width), _randn(g, 4 * width)
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = _randn(g, width, 4 * width), _randn(g, width)
    sd["ln_final.weight"], sd["ln_final.bias"] = 1 + _randn(g, width, scale=0.1), _randn(g, width)
    sd["text_projection"] = _randn(g, width, projection, scale=width**-0.5)    # applied as x @ P
    sd["logit_scale"] = torch.tensor(4.6052)
    sd["visual.conv1.weight"], sd["visual.proj"] = _randn(g, 8, 3, 2, 2), _randn(g, 8, projection)
    return sd


def hf_state_dict(width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """OpenAI CLIP-L-style weights in transformers' checkpoint layout (`text_model.` keys), as SD1 stores them."""
    g = torch.Generator().manual_seed(seed)
    shapes = build_clip(tiny_config(width, openclip=False), with_projection=False).state_dict()
    sd = {}
    for key, meta in shapes.items():
        key = key if key.startswith("text_model.") else "text_model." + key
        sd[key] = 1 + _randn(g, *meta.shape, scale=0.1) if "norm" in key and key.endswith("weight") \
            else _randn(g, *meta.shape, scale=0.1 if "embedding" in key else 0.05)
    # Old SD1 files carry this buffer; some merges broke it into floats. It must be ignored.
    sd["text_model.embeddings.position_ids"] = torch.arange(77.0)[None] * 0.9999
    return sd


def prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def stripped(checkpoint: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in checkpoint.items() if k.startswith(prefix)}


def diffusers_clip(cls, checkpoint, config: CLIPTextConfig, folder) -> CLIPTextModel | CLIPTextModelWithProjection:
    """diffusers' own single-file conversion, with our tiny config standing in for the hub's."""
    config.save_pretrained(folder)
    model = create_diffusers_clip_model_from_ldm(cls, checkpoint, config=str(folder)).eval()
    # diffusers 0.42's StableDiffusionPipeline(clip_skip=...) still reads `.text_model`, which transformers 5.6
    # removed from CLIPTextModel; a self-reference outside the module tree restores it for the oracle only.
    if not hasattr(model, "text_model"):
        model.__dict__["text_model"] = model
    return model


def hf_tokenizer(pad_token: str) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(tokenizer_dir(), model_max_length=77, pad_token=pad_token)


def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def ours_for(family: Family, checkpoint) -> TextEncoder:
    """What the single-file loader does: one prefix-stripped state dict per encoder."""
    return TextEncoder.from_state_dicts(family.text_encoders,
                                        [stripped(checkpoint, s.prefix) for s in family.text_encoders])


# (a) weight conversion ------------------------------------------------------------------------------------


def test_openclip_to_hf_matches_diffusers_sdxl(tmp_path):
    prefix = SDXL.text_encoders[1].prefix               # conditioner.embedders.1.model.
    checkpoint = prefixed(openclip_state_dict(96), prefix)
    ref = diffusers_clip(CLIPTextModelWithProjection, checkpoint, tiny_config(96, openclip=True), tmp_path)
    ours = clip_from_state_dict(openclip_to_hf(stripped(checkpoint, prefix)), openclip=True, with_projection=True)

    ids = torch.randint(0, 49406, (2, 77), generator=torch.Generator().manual_seed(1))
    ids[:, 0], ids[:, 20], ids[:, 21:] = 49406, 49407, 0
    with torch.no_grad():
        a, b = ours(ids, output_hidden_states=True), ref(ids, output_hidden_states=True)
    assert len(a.hidden_states) == LAYERS + 1
    for h_ours, h_ref in zip(a.hidden_states, b.hidden_states, strict=True):
        assert rel_diff(h_ours, h_ref) <= 1e-4
    assert rel_diff(a.last_hidden_state, b.last_hidden_state) <= 1e-4
    assert rel_diff(a.text_embeds, b.text_embeds) <= 1e-4


def test_openclip_to_hf_matches_diffusers_sd2(tmp_path):
    # diffusers keeps SD2's OpenCLIP-H as a CLIPTextModel one layer short (23 of 24), so that its
    # last_hidden_state is the penultimate layer through the final LayerNorm.
    prefix = SD2.text_encoders[0].prefix                # cond_stage_model.model.
    checkpoint = prefixed(openclip_state_dict(64), prefix)
    config = tiny_config(64, openclip=True, layers=LAYERS - 1)
    ref = diffusers_clip(CLIPTextModel, checkpoint, config, tmp_path)
    ours = clip_from_state_dict(openclip_to_hf(stripped(checkpoint, prefix)), openclip=True, with_projection=False)

    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [0] * 70])
    with torch.no_grad():
        a, b = ours(ids, output_hidden_states=True), ref(ids, output_hidden_states=True)
    for h_ours, h_ref in zip(a.hidden_states[:LAYERS], b.hidden_states, strict=True):
        assert rel_diff(h_ours, h_ref) <= 1e-4
    assert rel_diff(ours.final_layer_norm(a.hidden_states[-2]), b.last_hidden_state) <= 1e-4


def test_openclip_qkv_are_views_and_unknown_keys_raise():
    sd = openclip_state_dict(64)
    hf = openclip_to_hf(sd)
    packed = sd["transformer.resblocks.1.attn.in_proj_weight"]
    for proj in "qkv":
        part = hf[f"text_model.encoder.layers.1.self_attn.{proj}_proj.weight"]
        assert part.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()
    assert not any("visual" in k or "logit" in k for k in hf)
    assert torch.equal(hf["text_projection.weight"], sd["text_projection"].T)
    with pytest.raises(LatentDeskError, match="transformer.resblocks.0.ls_1"):
        openclip_to_hf({**sd, "transformer.resblocks.0.ls_1.gamma": torch.ones(64)})


# (b) each family's conditioning against diffusers' encode_prompt ------------------------------------------


def _check_ids(ours: TextEncoder, tokenizers: list[CLIPTokenizer]):
    """Our tokenizer and padding give the ids diffusers feeds each encoder (plain prompts: no ftfy effects)."""
    for ids, tokenizer in zip(ours.token_ids(PROMPTS), tokenizers, strict=True):
        ref = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        assert torch.equal(ids, ref.input_ids)


def sd_pipeline(text_encoder: CLIPTextModel, pad_token: str) -> StableDiffusionPipeline:
    """Just what `encode_prompt` uses: no UNet, VAE or scheduler needed."""
    return StableDiffusionPipeline(vae=None, text_encoder=text_encoder, tokenizer=hf_tokenizer(pad_token),
                                   unet=None, scheduler=None, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def assert_matches_sd_pipeline(ours: TextEncoder, pipe: StableDiffusionPipeline, clip_skips: tuple[int, ...]):
    _check_ids(ours, [pipe.tokenizer])
    with torch.no_grad():
        for clip_skip in clip_skips:
            ref, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False,
                                        clip_skip=None if clip_skip == 1 else clip_skip - 1)
            context, pooled = ours.encode(PROMPTS, clip_skip=clip_skip)
            assert pooled is None and rel_diff(context, ref) <= 1e-4, f"clip_skip={clip_skip}"


def test_sd1_matches_diffusers(tmp_path):
    checkpoint = prefixed(hf_state_dict(64), SD1.text_encoders[0].prefix)
    pipe = sd_pipeline(diffusers_clip(CLIPTextModel, checkpoint, tiny_config(64, openclip=False), tmp_path),
                       "<|endoftext|>")
    assert_matches_sd_pipeline(ours_for(SD1, checkpoint), pipe, clip_skips=(1, 2, 3))


def test_sd2_matches_diffusers(tmp_path):
    checkpoint = prefixed(openclip_state_dict(64), SD2.text_encoders[0].prefix)
    config = tiny_config(64, openclip=True, layers=LAYERS - 1)
    pipe = sd_pipeline(diffusers_clip(CLIPTextModel, checkpoint, config, tmp_path), "!")
    assert_matches_sd_pipeline(ours_for(SD2, checkpoint), pipe, clip_skips=(1, 2))

    # A diffusers SD2 folder holds that shortened encoder in transformers layout, already trimmed.
    from_folder = TextEncoder.from_state_dicts(SD2.text_encoders, [pipe.text_encoder.state_dict()], trimmed=True)
    assert from_folder.models[0].config.num_hidden_layers == LAYERS - 1
    assert_matches_sd_pipeline(from_folder, pipe, clip_skips=(1, 2))


def test_single_file_encoder_too_shallow_to_trim():
    one_layer = {k: v for k, v in openclip_state_dict(64).items() if "resblocks.0." in k or "resblocks" not in k}
    with pytest.raises(LatentDeskError, match="has 1 layers"):
        TextEncoder.from_state_dicts(SD2.text_encoders, [one_layer])


def test_sdxl_matches_diffusers(tmp_path):
    # Different widths (64 vs 96), as in the real model (768 vs 1280): diffusers tells the encoders apart by width.
    checkpoint = {**prefixed(hf_state_dict(64, seed=1), SDXL.text_encoders[0].prefix),
                  **prefixed(openclip_state_dict(96, seed=2), SDXL.text_encoders[1].prefix)}
    pipe = StableDiffusionXLPipeline(
        vae=None, unet=None, scheduler=None,
        text_encoder=diffusers_clip(CLIPTextModel, checkpoint, tiny_config(64, openclip=False), tmp_path / "1"),
        text_encoder_2=diffusers_clip(CLIPTextModelWithProjection, checkpoint, tiny_config(96, openclip=True),
                                      tmp_path / "2"),
        tokenizer=hf_tokenizer("<|endoftext|>"), tokenizer_2=hf_tokenizer("!"), add_watermarker=False)
    ours = ours_for(SDXL, checkpoint)
    _check_ids(ours, [pipe.tokenizer, pipe.tokenizer_2])
    with torch.no_grad():
        for clip_skip in (1, 2):
            ref, _, ref_pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False,
                                                       clip_skip=None if clip_skip == 1 else clip_skip - 1)
            context, pooled = ours.encode(PROMPTS, clip_skip=clip_skip)
            assert context.shape == (3, 77, 64 + 96) and pooled.shape == (3, 32)
            assert rel_diff(context, ref) <= 1e-4, f"clip_skip={clip_skip}"
            assert rel_diff(pooled, ref_pooled) <= 1e-4, f"clip_skip={clip_skip}"


def test_clip_skip_past_first_layer_raises():
    ours = ours_for(SD1, prefixed(hf_state_dict(64), SD1.text_encoders[0].prefix))
    ours.encode("a cat", clip_skip=LAYERS)
    with pytest.raises(LatentDeskError, match="CLIP skip"):
        ours.encode("a cat", clip_skip=LAYERS + 1)


# (c) configs from shapes ---------------------------------------------------------------------------------

REAL_SIZES = {   # name: (width, layers, intermediate, projection, openclip)
    "CLIP-L (SD1, SDXL 1st)": (768, 12, 3072, None, False),
    "OpenCLIP-H (SD2)": (1024, 24, 4096, 1024, True),
    "OpenCLIP-bigG (SDXL 2nd)": (1280, 32, 5120, 1280, True),
}


@pytest.mark.parametrize("name", REAL_SIZES)
def test_config_from_state_dict(name):
    width, layers, intermediate, projection, openclip = REAL_SIZES[name]
    true = CLIPTextConfig(hidden_size=width, num_hidden_layers=layers, intermediate_size=intermediate,
                          num_attention_heads=width // 64, projection_dim=projection or width)
    sd = build_clip(true, with_projection=projection is not None).state_dict()      # meta tensors: shapes only
    config = clip_config_from_state_dict(sd, openclip=openclip)
    got = (config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.projection_dim,
           config.num_attention_heads, config.vocab_size, config.max_position_embeddings)
    assert got == (width, layers, intermediate, projection or width, width // 64, 49408, 77)
    assert config.hidden_act == ("gelu" if openclip else "quick_gelu")
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (49406, 49407, 0 if openclip else 49407)


def test_tiny_configs_recovered():
    config = clip_config_from_state_dict(openclip_to_hf(openclip_state_dict(96)), openclip=True)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.projection_dim) == \
        (96, LAYERS, 1, 32)
    config = clip_config_from_state_dict(hf_state_dict(64), openclip=False)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 256, LAYERS)


# (d) loading -----------------------------------------------------------------------------------------------


def test_load_assigns_without_copies_and_rebuilds_buffers():
    sd = hf_state_dict(64)
    model = clip_from_state_dict(sd, openclip=False, with_projection=False)
    weight = model.embeddings.token_embedding.weight
    assert weight.data_ptr() == sd["text_model.embeddings.token_embedding.weight"].data_ptr()
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert torch.equal(model.embeddings.position_ids, torch.arange(77)[None])


def test_shape_mismatch_names_the_key():
    sd = hf_state_dict(64)
    sd["text_model.encoder.layers.1.mlp.fc1.weight"] = torch.zeros(128, 64)
    with pytest.raises(LatentDeskError, match=r"encoder\.layers\.1\.mlp\.fc1\.weight.*\(128, 64\).*\(256, 64\)"):
        load_clip_weights(build_clip(tiny_config(64, openclip=False), with_projection=False), sd)


def test_missing_and_unexpected_keys_raise():
    config = tiny_config(64, openclip=False)
    sd = hf_state_dict(64)
    del sd["text_model.final_layer_norm.bias"]
    with pytest.raises(LatentDeskError, match="final_layer_norm.bias"):
        load_clip_weights(build_clip(config, with_projection=False), sd)
    sd = {**hf_state_dict(64), "text_model.encoder.layers.7.mlp.fc1.weight": torch.zeros(256, 64)}
    with pytest.raises(LatentDeskError, match="layers.7"):
        load_clip_weights(build_clip(config, with_projection=False), sd)


def test_openclip_errors_name_the_files_tensor():
    sd = openclip_state_dict(64)
    sd["transformer.resblocks.1.attn.in_proj_weight"] = torch.zeros(3 * 64 + 3, 64)
    with pytest.raises(LatentDeskError, match=r"'transformer\.resblocks\.1\.attn\.in_proj_weight' has shape"):
        TextEncoder.from_state_dicts(SD2.text_encoders, [sd])
    sd = openclip_state_dict(64)
    del sd["ln_final.bias"]
    with pytest.raises(LatentDeskError, match="'ln_final.bias' missing"):
        TextEncoder.from_state_dicts(SD2.text_encoders, [sd])
