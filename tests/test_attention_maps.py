"""Attention maps (issue #25): the probe's running sums against a slow, explicit computation that keeps
every step's attention probabilities; words mapped back to their tokens; nothing changes when maps are off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.attention_maps import AttentionSettings, WordMap, grey_image, heat_overlay, save_attention_maps
from core.generate import generate
from core.loading.checkpoint import load_model
from core.nets.unet import Attention, SpatialTransformer
from core.request import GenerationRequest
from core.sampling.attention_probe import CrossAttentionProbe
from core.text.prompt_words import prompt_words
from core.text.tokenizer import ClipTokenizer
from tests.tiny_models import randomize, write_single_file

PROMPT = "a (red:1.3) sunflower circle, a blue background"
NEGATIVE = "green blurry"


@pytest.fixture(scope="module", params=["sd1", "sdxl", "cross_only"])
def model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("attn")
    if request.param == "cross_only":
        return load_model(cross_only_model(folder / "cross_only.safetensors"))
    return load_model(write_single_file(request.param, folder / f"{request.param}.safetensors", seed=3))


def cross_only_model(path):
    """A trained-here model shaped like the built-in v2: blocks at the latent's own size that only cross-attend
    (a layer whose grid is the latent itself), full blocks below."""
    from core.nets.unet import UNetConfig
    from core.nets.vae import VAEConfig
    from core.train.autoencoder import build_autoencoder
    from core.train.diffusion import TextEncoderConfig, build_networks
    from core.train.export import export_model

    unet_config = UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                             num_heads=(1, 2), context_dim=32, norm_groups=8, cross_attention_only=(0,))
    text_config = TextEncoderConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    unet, text_model = (randomize(net, seed=3) for net in build_networks(unet_config, text_config, seed=3))
    vae = build_autoencoder(VAEConfig(base_channels=8, channel_mult=(1, 1, 1, 1), num_res_blocks=1, norm_groups=4,
                                      scale_factor=1.0), seed=3)
    return export_model(path, unet, vae, text_model, dtype="fp32")


def request_for(steps=3, guidance=5.0, batch=1, prompt=PROMPT):
    return GenerationRequest(prompt=prompt, negative_prompt=NEGATIVE, steps=steps, guidance=guidance,
                             width=80, height=64, seed=11, batch=batch, sampler="Heun")


class SlowRecorder:
    """Keeps every cross-attention call's full probabilities (rows, heads, T, S), with its step and grid,
    computed from the layer's own weights in float64 with an explicit softmax."""

    def __init__(self, unet):
        self.calls, self.step, self.grid, self.handles = [], 0, None, []
        for module in unet.modules():
            if isinstance(module, SpatialTransformer):
                self.handles.append(module.register_forward_pre_hook(self.at_transformer))
        for name, module in unet.named_modules():
            if isinstance(module, Attention) and name.endswith("attn2"):
                self.handles.append(module.register_forward_hook(self.at_cross_attention))

    def at_transformer(self, module, args):
        self.grid = tuple(args[0].shape[-2:])

    def at_cross_attention(self, layer, args, output):
        x, context = (a.double() for a in args)
        q = x @ layer.to_q.weight.double().T
        k = context @ layer.to_k.weight.double().T
        q = q.unflatten(-1, (layer.heads, -1)).transpose(1, 2)
        k = k.unflatten(-1, (layer.heads, -1)).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        e = torch.exp(logits - logits.amax(-1, keepdim=True))
        self.calls.append((self.step, self.grid, e / e.sum(-1, keepdim=True)))

    def on_step(self, info):
        self.step += 1

    def sums(self, latent, rows, steps=None):
        """(rows, S, H, W) sums over the kept calls of the chosen steps, rows = the batch rows wanted."""
        total = 0
        for step, (h, w), probs in self.calls:
            if steps is not None and step not in steps:
                continue
            maps = probs[rows].mean(1).transpose(1, 2).reshape(len(rows), -1, h, w)
            total = total + F.interpolate(maps.float(), size=latent, mode="bilinear", align_corners=False).double()
        return total

    def close(self):
        for handle in self.handles:
            handle.remove()


def word_sum(sums, words, text):
    return sum(sums[0, p] for w in words if w.text == text for p in w.positions)


@pytest.mark.parametrize("steps", [None, (1,)])
def test_maps_equal_a_slow_explicit_computation(model, steps):
    slow = SlowRecorder(model.unet)
    try:
        result = generate(request_for(), model, on_step=slow.on_step, attention=AttentionSettings(steps))
    finally:
        slow.close()
    latent = tuple(result.latents.shape[-2:])
    maps = result.attention[0]
    assert maps.steps == (3 if steps is None else 1)
    tokenizer = model.text_encoder.tokenizer
    for text, negative, rows in ((PROMPT, False, [1]), (NEGATIVE, True, [0])):    # CFG rows: uncond, cond
        words = prompt_words(tokenizer, text)
        expected_sums = slow.sums(latent, rows, steps)
        listed = maps.negative if negative else maps.prompt
        assert [m.word for m in listed] == list(dict.fromkeys(w.text for w in words))
        for word_map in listed:
            expected = word_sum(expected_sums, words, word_map.word)
            assert word_map.map.shape == latent
            torch.testing.assert_close(word_map.map.double(), expected, atol=1e-5, rtol=0)


def test_words_of_several_tokens_and_repeats_sum_their_tokens(model):
    maps = generate(request_for(steps=2), model, attention=AttentionSettings()).attention[0]
    words = {w.text: w for w in prompt_words(model.text_encoder.tokenizer, PROMPT)}
    assert len(words["sunflower"].tokens) >= 1
    a = maps.word("a")
    assert a is not None and a.tokens == (320,)           # typed twice, one entry
    assert sum(m.total for m in maps.prompt) == pytest.approx(1.0)
    assert all(m.total > 0 for m in maps.prompt)
    assert maps.word(",") is None                         # punctuation is no word


def test_batch_rows_and_an_unguided_run(model):
    guided = generate(request_for(batch=2), model, attention=AttentionSettings())
    assert len(guided.attention) == 2
    assert not torch.equal(guided.attention[0].prompt[0].map, guided.attention[1].prompt[0].map)
    single = generate(request_for(batch=1), model, attention=AttentionSettings())
    torch.testing.assert_close(guided.attention[0].prompt[0].map, single.attention[0].prompt[0].map,
                               atol=1e-5, rtol=1e-5)            # image 0 does not depend on the batch
    unguided = generate(request_for(guidance=1.0), model, attention=AttentionSettings())
    assert unguided.attention[0].negative == [] and unguided.attention[0].prompt


def test_off_by_default_and_the_image_is_the_same_with_maps(model):
    plain = generate(request_for(), model)
    assert plain.attention is None
    with_maps = generate(request_for(), model, attention=AttentionSettings())
    assert torch.equal(plain.latents, with_maps.latents)
    layers = [m for n, m in model.unet.named_modules() if n.endswith("attn2")]
    assert layers and all(layer.probe is None for layer in layers)   # taken off after the run


def test_long_prompts_map_back_across_chunks():
    tokenizer = ClipTokenizer()
    filler = ", ".join(["green grass"] * 30)
    words = prompt_words(tokenizer, f"{filler} BREAK a (tall:1.2) tower")
    tower = [w for w in words if w.text == "tower"]
    assert len(tower) == 1 and tower[0].positions[0] > 77 * 1      # in a later chunk, past its BOS
    ids = [w for w in words if w.text == "tall"][0]
    assert ids.tokens == tuple(tokenizer.encode("tall"))
    grass = [w for w in words if w.text == "grass"]
    assert len(grass) == 30 and len({p for w in grass for p in w.positions}) == 30


def test_the_probe_refuses_a_layer_that_fits_no_level():
    probe = CrossAttentionProbe(1, (8, 8))
    with pytest.raises(ValueError):
        probe(torch.zeros(1, 2, 7, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError):
        probe(torch.zeros(3, 2, 16, 4), torch.zeros(3, 2, 3, 4))
    probe(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 3, 4))       # the 1x1 bottom of an 8x8 latent
    assert probe.cond.shape == (1, 3, 8, 8)
    torch.testing.assert_close(probe.cond.sum(1), torch.ones(1, 8, 8))   # probabilities over 3 tokens


def test_grey_map_overlay_and_files(tmp_path):
    m = torch.zeros(4, 4)
    m[0, 0] = 2.0
    word = WordMap("star", (1565,), m, 0.5)
    grey = grey_image(word, (32, 16))
    assert grey.size == (32, 16) and grey.mode == "L"
    pixels = np.asarray(grey)
    assert pixels.max() == 255 and pixels[0, 0] == 255 and pixels[-1, -1] == 0
    picture = Image.new("RGB", (32, 16), (0, 0, 255))
    overlay = np.asarray(heat_overlay(picture, word, opacity=0.8))
    assert tuple(overlay[-1, -1]) == (0, 0, 255)                   # unattended: the picture as it is
    assert tuple(overlay[0, 0]) != (0, 0, 255)

    from core.attention_maps import AttentionMaps
    maps = AttentionMaps([word, WordMap("blue sky", (1, 2), m.T, 0.5)], [], 3)
    written = save_attention_maps(maps, picture, tmp_path / "maps")
    index = json.loads((tmp_path / "maps" / "words.json").read_text())
    assert index["star"] == {"file": "01-star.png", "overlay": "overlay-01-star.png", "tokens": [1565], "total": 0.5}
    assert index["blue sky"]["file"] == "02-blue_sky.png"
    for path in written:
        assert path.is_file()
    assert not list((tmp_path / "maps").glob("*.tmp"))
    assert Image.open(tmp_path / "maps" / "01-star.png").size == (32, 16)


def test_maps_of_a_masked_area_are_set_back_where_it_came_from():
    from core.attention_maps import AttentionMaps, placed_in
    region = WordMap("cat", (2368,), torch.ones(8, 8), 1.0)
    whole = placed_in(AttentionMaps([region], [], 1), box=(64, 32, 128, 96), canvas=(256, 128)).prompt[0]
    assert whole.map.shape == (16, 32)
    assert float(whole.map[4:12, 8:16].min()) == 1.0 and float(whole.map.sum()) == 64.0   # only the box
    grey = np.asarray(grey_image(whole, (256, 128)))
    assert grey[64, 96] == 255 and grey[10, 10] == 0 and grey[64, 200] == 0


def test_an_inpainting_of_the_masked_area_gives_maps_over_the_whole_picture(model, tmp_path):
    picture, mask = tmp_path / "picture.png", tmp_path / "mask.png"
    Image.new("RGB", (160, 128), (90, 120, 60)).save(picture)
    hole = Image.new("L", (160, 128), 0)
    hole.paste(255, (96, 64, 144, 112))
    hole.save(mask)
    request = GenerationRequest(prompt="a red circle", steps=2, width=160, height=128, seed=1, init_image=str(picture),
                                strength=1.0, mask=str(mask), inpaint_area="masked", inpaint_padding=0)
    result = generate(request, model, attention=AttentionSettings())
    assert result.images[0].size == (160, 128)
    circle = result.attention[0].word("circle").map
    assert circle.shape == (16, 20)
    assert float(circle[:6, :8].abs().max()) == 0.0 and float(circle[8:14, 12:18].min()) > 0
