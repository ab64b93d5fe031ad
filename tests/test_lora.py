"""LoRA files read and applied (core/loading/lora_files.py, lora_math.py, lora_apply.py).

Acceptance: on tiny random SD1 and SDXL models, the UNet output and the text context with LoRAs applied
match diffusers' `load_lora_weights` + `set_adapters` (peft) within 1e-4 relative, for kohya files
(Linear and Conv, diffusers- and LDM-named), PEFT files and the text-encoder parts, at weights 0.5 and
1.0 and two LoRAs at once; LoHa and LoKr match the published formulas computed here; after `clear`
every weight is bit-identical to the loaded one; hostile files are refused with a clear message.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from core.errors import LatentDeskError, ModelLoadError
from core.loading.checkpoint import load_model
from core.loading.lora_apply import AppliedLoras
from core.loading.lora_files import diffusers_unet_names, read_lora
from core.nets import packed_weights
from core.nets.onednn import has_bf16_kernels
from core.nets.unet import sdxl_added_condition
from core.precision import at_precision
from tests.test_load_parity import (
    PROMPTS,
    TEXT_PROJECTION,
    pipeline_class,
    reference_prompt_embeddings,
    relative,
)
from tests.tiny_models import write_diffusers_folder, write_single_file

TOLERANCE = 1e-4
RANK = 4
# Diffusers-named UNet layers every kohya/PEFT test file changes: attention (Linear), a 1x1 and a 3x3 conv.
UNET_TARGETS = ["attn1.to_q", "attn1.to_k", "attn2.to_k", "attn2.to_v", "attn1.to_out.0", "ff.net.0.proj",
                "ff.net.2", "proj_in", "resnets.0.conv1", "resnets.0.conv_shortcut", "time_emb_proj"]
TEXT_TARGETS = ["self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1"]


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def pair(request, tmp_path_factory):
    """(family, our model, diffusers pipeline) from the same diffusers folder."""
    pytest.importorskip("peft")
    family = request.param
    folder = write_diffusers_folder(family, tmp_path_factory.mktemp(family) / "model", seed=3)
    pipe = pipeline_class(family).from_pretrained(folder, local_files_only=True)
    return family, load_model(folder), pipe


def _modules(network, wanted: list[str]) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in network.named_modules()
            if isinstance(m, torch.nn.Linear | torch.nn.Conv2d) and any(name.endswith(w) for w in wanted)}


def _factors(module, g, rank=RANK) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) for a layer, conv-shaped for a conv (down takes the kernel, up is 1x1)."""
    out, fan_in = module.weight.shape[:2]
    if module.weight.dim() == 4:
        kh, kw = module.weight.shape[2:]
        return torch.randn(rank, fan_in, kh, kw, generator=g) * 0.1, torch.randn(out, rank, 1, 1, generator=g) * 0.1
    return torch.randn(rank, fan_in, generator=g) * 0.1, torch.randn(out, rank, generator=g) * 0.1


def _text_encoders(pipe) -> list:
    return [te for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None]


def _te_name(name: str) -> str:
    return "text_model." + name.removeprefix("text_model.")


def kohya_lora(pipe, seed: int, ldm_names_from=None) -> dict[str, torch.Tensor]:
    """kohya's keys: diffusers module names (or, given our UNet, the LDM ones SDXL trainers write)."""
    g, sd = torch.Generator().manual_seed(seed), {}
    renamed = {v: k for k, v in diffusers_unet_names(ldm_names_from).items()} if ldm_names_from else {}
    for name, module in _modules(pipe.unet, UNET_TARGETS).items():
        down, up = _factors(module, g)
        key = "lora_unet_" + renamed.get(name, name).replace(".", "_")
        sd |= {key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(2.0)}
    encoders = _text_encoders(pipe)
    for i, te in enumerate(encoders):
        prefix = "lora_te_" if len(encoders) == 1 else f"lora_te{i + 1}_"
        for name, module in _modules(te, TEXT_TARGETS).items():
            down, up = _factors(module, g)
            key = prefix + _te_name(name).replace(".", "_")
            sd |= {key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(8.0)}
    return sd


def peft_lora(pipe, seed: int) -> dict[str, torch.Tensor]:
    """diffusers' own format: `unet.` / `text_encoder[_2].` + module path, lora_A / lora_B, scale 1."""
    g, sd = torch.Generator().manual_seed(seed), {}
    for name, module in _modules(pipe.unet, [t for t in UNET_TARGETS if "conv" not in t]).items():
        down, up = _factors(module, g)
        sd |= {f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up}
    for i, te in enumerate(_text_encoders(pipe)):
        prefix = "text_encoder." if i == 0 else "text_encoder_2."
        for name, module in _modules(te, TEXT_TARGETS).items():
            down, up = _factors(module, g)
            sd |= {f"{prefix}{_te_name(name)}.lora_A.weight": down, f"{prefix}{_te_name(name)}.lora_B.weight": up}
    return sd


def outputs(family, run_unet, encode) -> dict[str, torch.Tensor]:
    """UNet output on fixed random inputs, and the prompt's text context.

    `run_unet(x, t, context, pooled, time_ids)`: ours or diffusers' calling convention."""
    g = torch.Generator().manual_seed(1234)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10.0, 700.0])
    context = torch.randn(2, 77, 64 if family == "sd1" else 64 + 96, generator=g)
    pooled = torch.randn(2, TEXT_PROJECTION, generator=g)
    time_ids = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]] * 2)
    with torch.no_grad():
        return {"unet": run_unet(x, t, context, pooled, time_ids), "text context": encode()}


def ours(family, model):
    def run(x, t, context, pooled, time_ids):
        y = sdxl_added_condition(pooled, time_ids) if family == "sdxl" else None
        return model.unet(x, t, context, y)
    return outputs(family, run, lambda: model.text_encoder.encode(PROMPTS)[0])


def theirs(family, pipe):
    def run(x, t, context, pooled, time_ids):
        kwargs = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}} if family == "sdxl" else {}
        return pipe.unet(x, t, context, **kwargs).sample
    return outputs(family, run, lambda: reference_prompt_embeddings(pipe, family)[0])


def state_bits(model) -> dict[str, torch.Tensor]:
    nets = {"unet": model.unet} | {f"te{i}": m for i, m in enumerate(model.text_encoder.models)}
    return {f"{n}.{k}": v.detach().flatten().view(torch.uint8).clone()
            for n, net in nets.items() for k, v in net.state_dict().items()}


def assert_bit_identical(before, model):
    after = state_bits(model)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed[:5]


def write(tmp_path, name, sd, metadata=None):
    path = tmp_path / name
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, path, metadata=metadata)
    return path


CASES = {  # name: [(file maker, weight), ...]
    "kohya w1.0": [("kohya", 1.0)],
    "kohya w0.5": [("kohya", 0.5)],
    "kohya ldm-named": [("kohya-ldm", 1.0)],
    "peft w1.0": [("peft", 1.0)],
    "kohya+peft 0.5/1.0": [("kohya", 0.5), ("peft", 1.0)],
    "negative weight": [("kohya", -0.7)],
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers(case, pair, tmp_path):
    family, model, pipe = pair
    before = state_bits(model)
    makers = {"kohya": lambda s: kohya_lora(pipe, s), "peft": lambda s: peft_lora(pipe, s),
              "kohya-ldm": lambda s: kohya_lora(pipe, s, ldm_names_from=model.unet)}
    applied, names, weights = AppliedLoras(model), [], []
    loras = []
    # All files made first: once peft wraps a layer, the layer is no longer an nn.Linear to find.
    # The reference reads the same tensors under diffusers' names: its SGM-name mapping is SDXL-only.
    files = [(makers[kind](10 + i), makers[kind.removesuffix("-ldm")](10 + i), weight)
             for i, (kind, weight) in enumerate(CASES[case])]
    for i, (sd, reference, weight) in enumerate(files):
        loras.append((read_lora(write(tmp_path, f"lora{i}.safetensors", sd), model), weight))
        pipe.load_lora_weights(reference, adapter_name=f"l{i}")
        names.append(f"l{i}")
        weights.append(weight)
    try:
        pipe.set_adapters(names, adapter_weights=weights)
        applied.set(loras)
        mine, ref = ours(family, model), theirs(family, pipe)
        diffs = {k: relative(mine[k], ref[k]) for k in ref}
        print(f"\n[lora parity] {family} {case} {diffs}")
        assert max(diffs.values()) <= TOLERANCE, diffs
        base = outputs_without(family, pipe)
        assert all(relative(mine[k], base[k]) > 1e-3 for k in base)   # the LoRAs changed both networks
    finally:
        pipe.unload_lora_weights()
        applied.clear()
    assert_bit_identical(before, model)


def outputs_without(family, pipe):
    pipe.disable_lora()
    try:
        return theirs(family, pipe)
    finally:
        pipe.enable_lora()


def test_fused_diffusers_and_weight_switch(pair, tmp_path):
    """diffusers' fuse_lora at 0.5, against ours after a detour through other weights (no drift)."""
    family, model, pipe = pair
    before, base = state_bits(model), ours(family, model)
    sd = kohya_lora(pipe, 21)
    lora = read_lora(write(tmp_path, "k.safetensors", sd), model)
    other = read_lora(write(tmp_path, "p.safetensors", peft_lora(pipe, 22)), model)
    applied = AppliedLoras(model)
    for weights in ([(lora, 1.0), (other, -2.0)], [(other, 0.3)], [(lora, 3.0)], [(lora, 0.5)]):
        applied.set(weights)
    pipe.load_lora_weights(sd, adapter_name="k")
    try:
        pipe.fuse_lora(lora_scale=0.5)
        mine, ref = ours(family, model), theirs(family, pipe)
        diffs = {k: relative(mine[k], ref[k]) for k in ref}
        print(f"\n[lora parity] {family} fused 0.5 after switches {diffs}")
        assert max(diffs.values()) <= TOLERANCE, diffs
        assert all(relative(mine[k], base[k]) > 1e-3 for k in base)
    finally:
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        applied.clear()
    assert_bit_identical(before, model)


# --- LyCORIS forms, against the published formulas -------------------------------------------------

@pytest.fixture(scope="module")
def sd1_model(tmp_path_factory):
    return load_model(write_single_file("sd1", tmp_path_factory.mktemp("sd1") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def sdxl_model(tmp_path_factory):
    return load_model(write_single_file("sdxl", tmp_path_factory.mktemp("sdxl") / "tiny.safetensors"))


LINEAR, CONV3, CONV1 = ("input_blocks.1.1.transformer_blocks.0.attn1.to_q", "input_blocks.1.0.in_layers.2",
                        "input_blocks.1.1.proj_in")


def _layer(model, name):
    return dict(model.unet.named_modules())[name]


def _r(g, *shape):
    return torch.randn(shape, generator=g) * 0.1


def loha_and_lokr(model, g) -> tuple[dict, dict]:
    """A LyCORIS file (LoHa on a Linear and a 3x3 conv, LoKr on a Linear and a 1x1 conv, LoCon with a
    Tucker core on a 3x3 conv) and the ΔW each layer should get, by the formulas as published."""
    sd, expected = {}, {}
    for name, rank, alpha in ((LINEAR, 4, 2.0), (CONV3, 3, 6.0)):
        w = _layer(model, name).weight
        out, fan_in = w.shape[0], w[0].numel()
        key = "lora_unet_" + name.replace(".", "_")
        parts = {"hada_w1_a": _r(g, out, rank), "hada_w1_b": _r(g, rank, fan_in),
                 "hada_w2_a": _r(g, out, rank), "hada_w2_b": _r(g, rank, fan_in)}
        sd |= {f"{key}.{k}": v for k, v in parts.items()} | {f"{key}.alpha": torch.tensor(alpha)}
        delta = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"])
        expected[name] = delta.reshape(w.shape) * alpha / rank
    # LoKr, Linear: w1 = w1a @ w1b (rank 2, alpha 4 -> scale 2), w2 whole.
    w = _layer(model, LINEAR).weight     # 32 x 32 = kron(4x8, 8x4)
    w1a, w1b, w2 = _r(g, 4, 2), _r(g, 2, 8), _r(g, 8, 4)
    key = "lora_unet_" + "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k".replace(".", "_")
    sd |= {f"{key}.lokr_w1_a": w1a, f"{key}.lokr_w1_b": w1b, f"{key}.lokr_w2": w2, f"{key}.alpha": torch.tensor(4.0)}
    expected["input_blocks.1.1.transformer_blocks.0.attn1.to_k"] = torch.kron(w1a @ w1b, w2) * 2.0
    # LoKr, 1x1 conv: both whole, w2 as a 4-D kernel; no factorised part, so alpha is ignored (scale 1).
    w = _layer(model, CONV1).weight      # 32 x 32 x 1 x 1
    w1, w2 = _r(g, 2, 4), _r(g, 16, 8, 1, 1)
    key = "lora_unet_" + CONV1.replace(".", "_")
    sd |= {f"{key}.lokr_w1": w1, f"{key}.lokr_w2": w2, f"{key}.alpha": torch.tensor(9.0)}
    expected[CONV1] = torch.kron(w1[:, :, None, None], w2)
    # LoCon with lora_mid (Tucker): ΔW[o,i,h,w] = Σ up[o,m] mid[m,n,h,w] down[n,i] · alpha/rank.
    name = "input_blocks.1.0.out_layers.3"
    w = _layer(model, name).weight
    up, mid, down = _r(g, w.shape[0], 3, 1, 1), _r(g, 3, 3, 3, 3), _r(g, 3, w.shape[1], 1, 1)
    key = "lora_unet_" + name.replace(".", "_")
    sd |= {f"{key}.lora_up.weight": up, f"{key}.lora_mid.weight": mid, f"{key}.lora_down.weight": down,
           f"{key}.alpha": torch.tensor(1.5)}
    expected[name] = torch.einsum("om,mnhw,ni->oihw", up.flatten(1), mid, down.flatten(1)) * 1.5 / 3
    return sd, expected


def test_loha_lokr_locon_match_formulas(sd1_model, tmp_path):
    model = sd1_model
    sd, expected = loha_and_lokr(model, torch.Generator().manual_seed(5))
    lora = read_lora(write(tmp_path, "lycoris.safetensors", sd), model)
    assert {c.form for c in lora.changes} == {"LoHa", "LoKr", "LoRA"} and len(lora.changes) == 5
    before = {name: _layer(model, name).weight.detach().clone() for name in expected}
    bits = state_bits(model)
    applied = AppliedLoras(model)
    applied.set([(lora, 0.75)])
    for name, delta in expected.items():
        got = _layer(model, name).weight - before[name]
        assert relative(got, 0.75 * delta) <= TOLERANCE, name
    applied.clear()
    assert_bit_identical(bits, model)


# --- bfloat16 networks -------------------------------------------------------------------------------

def test_bf16_network(sd1_model, tmp_path):
    """Patched from the bf16 originals in float32, rounded once; clear() restores the bf16 bits."""
    model = at_precision(sd1_model, torch.bfloat16)
    sd, expected = loha_and_lokr(model, torch.Generator().manual_seed(6))
    lora = read_lora(write(tmp_path, "lycoris.safetensors", sd), model)
    bits, original = state_bits(model), _layer(model, CONV3).weight.detach().clone()
    applied = AppliedLoras(model)
    applied.set([(lora, 1.0)])
    weight = _layer(model, CONV3).weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, (original.float() + expected[CONV3]).to(torch.bfloat16))
    applied.set([(lora, 0.25)])
    applied.clear()
    assert_bit_identical(bits, model)


@pytest.mark.skipif(not has_bf16_kernels(), reason="no oneDNN bf16 kernels: nothing is packed")
def test_bf16_network_with_packed_weights_runs_the_patched_weights(sd1_model, tmp_path, monkeypatch):
    """Weights packed for oneDNN at the first call are packed again after a switch: the LoRA takes effect."""
    model = at_precision(sd1_model, torch.bfloat16)
    sd, _ = loha_and_lokr(model, torch.Generator().manual_seed(7))
    lora = read_lora(write(tmp_path, "lycoris.safetensors", sd), model)
    g = torch.Generator().manual_seed(8)
    x, t = torch.randn(2, 4, 16, 16, generator=g).bfloat16(), torch.tensor([10.0, 700.0])
    context = torch.randn(2, 77, 64, generator=g).bfloat16()

    def run(packed: bool) -> torch.Tensor:
        monkeypatch.setattr(packed_weights, "PACK_WEIGHTS", packed)
        with torch.inference_mode():
            return model.unet(x, t, context).float()

    base = run(True)
    assert packed_weights._packed.get(_layer(model, CONV3).weight)     # packed by that call
    applied = AppliedLoras(model)
    applied.set([(lora, 10.0)])              # strong enough to move the output well past bf16's rounding
    patched, plain = run(True), run(False)
    change, rounding = (plain - base).abs().max(), (patched - plain).abs().max()
    assert change > 0.05 * base.abs().max()  # the LoRA changed the output...
    assert rounding <= 0.1 * change          # ...and the packed layers compute what the plain ones do
    applied.clear()
    assert (run(True) - base).abs().max() <= 1e-6                     # the originals packed again


# --- hostile files ---------------------------------------------------------------------------------

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
K2 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def _pair(rank, fan_in, out=32):
    return torch.rand(rank, fan_in), torch.rand(out, rank)


def test_wrong_family_names_both(sd1_model, sdxl_model, tmp_path):
    down, up = _pair(4, 64)
    te2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    path = write(tmp_path, "xl.safetensors", {te2 + ".lora_down.weight": down, te2 + ".lora_up.weight": up.T[:, :4]})
    with pytest.raises(ModelLoadError, match="made for Stable Diffusion XL, but the model is Stable Diffusion 1.x"):
        read_lora(path, sd1_model)
    # An SDXL-wide cross-attention key (2048) says SDXL even without a second text encoder.
    down, up = _pair(4, 2048)
    path = write(tmp_path, "xl-unet.safetensors", {K2 + ".lora_down.weight": down, K2 + ".lora_up.weight": up})
    with pytest.raises(ModelLoadError, match="made for Stable Diffusion XL"):
        read_lora(path, sd1_model)
    # Attention at the UNet's top level is SD1/SD2's, never SDXL's.
    down, up = _pair(4, 32)
    path = write(tmp_path, "sd1.safetensors", {Q + ".lora_down.weight": down, Q + ".lora_up.weight": up})
    with pytest.raises(ModelLoadError, match="made for Stable Diffusion 1.x or .*but the model is Stable Diffusion XL"):
        read_lora(path, sdxl_model)


@pytest.mark.parametrize("case, tensors, message", [
    ("wrong shape", {Q + ".lora_down.weight": torch.rand(4, 40), Q + ".lora_up.weight": torch.rand(32, 4)},
     "does not fit this model's input_blocks.1.1.transformer_blocks.0.attn1.to_q: makes a 32x40 change"),
    ("ranks disagree", {Q + ".lora_down.weight": torch.rand(4, 32), Q + ".lora_up.weight": torch.rand(32, 5)},
     "disagree on the rank"),
    ("huge rank", {Q + ".lora_down.weight": torch.rand(4096, 32), Q + ".lora_up.weight": torch.rand(32, 4096)},
     "rank 4096 is larger than the layer"),
    ("nan", {Q + ".lora_down.weight": torch.full((4, 32), float("nan")), Q + ".lora_up.weight": torch.rand(32, 4)},
     "NaN or infinite"),
    ("inf alpha", {Q + ".lora_down.weight": torch.rand(4, 32), Q + ".lora_up.weight": torch.rand(32, 4),
                   Q + ".alpha": torch.tensor(float("inf"))}, "NaN or infinite"),
    ("not a LoRA", {"model.diffusion_model.out.2.weight": torch.rand(4, 4)}, "none of its layers fit"),
    ("no tensors", {}, "holds no LoRA layers"),
    ("unknown form", {Q + ".lora_down.weight": torch.rand(4, 32)}, "not a form Latent Desk knows"),
    ("bad kron", {Q + ".lokr_w1": torch.rand(3, 4), Q + ".lokr_w2": torch.rand(8, 8)}, "does not divide"),
])
def test_hostile_files_refused(sd1_model, tmp_path, case, tensors, message):
    path = write(tmp_path, "hostile.safetensors", tensors)
    with pytest.raises(ModelLoadError, match=message) as error:
        read_lora(path, sd1_model)
    assert str(path) in str(error.value)


def test_pickle_refused_whatever_its_name(sd1_model, tmp_path):
    for name in ("lora.pt", "lora.safetensors"):
        path = tmp_path / name
        torch.save({Q + ".lora_down.weight": torch.rand(4, 32)}, path)
        with pytest.raises(ModelLoadError, match="pickle"):
            read_lora(path, sd1_model)


def test_unmatched_layers_counted_and_named(sd1_model, tmp_path):
    down, up = _pair(4, 32)
    ghost = "lora_unet_down_blocks_7_attentions_0_proj_in"
    path = write(tmp_path, "extra.safetensors", {Q + ".lora_down.weight": down, Q + ".lora_up.weight": up,
                                                 ghost + ".lora_down.weight": down, ghost + ".lora_up.weight": up})
    with pytest.raises(ModelLoadError, match="1 of its layers fit nothing in this model: 'down_blocks_7_attentions"):
        read_lora(path, sd1_model)
    lora = read_lora(path, sd1_model, strict=False)
    assert lora.unmatched == ["down_blocks_7_attentions_0_proj_in"] and len(lora.changes) == 1


def test_bad_weights_and_other_models_loras_refused(sd1_model, sdxl_model, tmp_path):
    down, up = _pair(4, 32)
    lora = read_lora(write(tmp_path, "q.safetensors", {Q + ".lora_down.weight": down, Q + ".lora_up.weight": up}),
                     sd1_model)
    applied = AppliedLoras(sd1_model)
    for weight in (float("nan"), 1e6):
        with pytest.raises(LatentDeskError, match="weight"):
            applied.set([(lora, weight)])
    te = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    xl = read_lora(write(tmp_path, "xl.safetensors", {te + ".lora_down.weight": torch.rand(4, 96),
                                                      te + ".lora_up.weight": torch.rand(96, 4)}), sdxl_model)
    with pytest.raises(LatentDeskError, match="read for another model"):
        applied.set([(xl, 1.0)])
    assert applied.active == []
