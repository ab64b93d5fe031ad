"""LoRAs and embeddings through generate() and `latentdesk generate` / `inspect`, on the tiny SD1 model.

- a run with a LoRA, then one without, equals a fresh run without: the weights come back bit for bit;
- switching LoRAs and weights reads each file once and never reloads the model;
- `<lora:name:w>` in the prompt is request.loras with the tag taken out; bf16 networks and DeepCache work;
- an unknown name and hostile files (wrong family, NaN, huge rank, pickle) give a clear message, exit 2 in the CLI;
- the PNG records "LoRAs", "Lora hashes" and "TI hashes", and the LoRAs read back.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from app.cli.commands import main
from core.errors import LatentDeskError
from core.fetch.addons import AddOns
from core.generate import generate
from core.loading import lora_session
from core.loading.checkpoint import load_model
from core.loading.lora_files import lora_layers
from core.metadata.infotext import parse_infotext, request_from_infotext
from core.metadata.png_files import read_parameters
from core.precision import at_precision
from core.request import GenerationRequest
from tests.tiny_models import write_single_file

RANK = 4
BASE = GenerationRequest(prompt="a red circle", negative_prompt="blurry", steps=3, width=64, height=64, seed=5,
                         sampler="Euler")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_single_file("sd1", tmp_path_factory.mktemp("lora-gen") / "tiny.safetensors", seed=4)


@pytest.fixture
def model(model_file):
    return load_model(model_file)      # a fresh one per test: LoRAs applied by one test cannot leak into another


def kohya_file(model, path, seed: int, metadata=None):
    """A kohya LoRA (LDM-named UNet layers, as SDXL trainers write them, and text-encoder layers) for `model`."""
    g, sd = torch.Generator().manual_seed(seed), {}
    wanted = ("attn1.to_q", "attn2.to_v", "in_layers.2", "q_proj", "fc1")
    nets = {"lora_unet_": model.unet, "lora_te_": model.text_encoder.models[0]}
    for prefix, net in nets.items():
        for name, module in lora_layers(net).items():
            if not name.endswith(wanted):
                continue
            out, fan_in = module.weight.shape[:2]
            kernel = tuple(module.weight.shape[2:])
            key = prefix + ("text_model." + name.removeprefix("text_model.") if prefix == "lora_te_" else name)
            key = key.replace(".", "_")
            sd[key + ".lora_down.weight"] = torch.randn(RANK, fan_in, *kernel, generator=g) * 0.3
            sd[key + ".lora_up.weight"] = torch.randn(out, RANK, *(1,) * len(kernel), generator=g) * 0.3
            sd[key + ".alpha"] = torch.tensor(2.0)
    save_file(sd, path, metadata=metadata)
    return path


def state_bits(model) -> dict[str, bytes]:
    nets = {"unet": model.unet, "vae": model.vae, "text": model.text_encoder}
    return {f"{n}.{k}": v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
            for n, net in nets.items() for k, v in net.state_dict().items()}


def latents(request, model, **kwargs):
    return generate(request, model, **kwargs).latents


def test_a_lora_run_then_a_plain_run_equals_a_plain_run_bit_for_bit(model, tmp_path):
    before = state_bits(model)
    plain = latents(BASE, model)
    ink = kohya_file(model, tmp_path / "ink.safetensors", 1)
    result = generate(BASE.__class__(**{**BASE.__dict__, "loras": ((str(ink), 0.8),)}), model)
    assert not torch.equal(result.latents, plain)
    assert result.loras == (("ink", hashlib.sha256(_tensor_data(ink)).hexdigest()[:12]),)
    assert state_bits(model) != before
    again = latents(BASE, model)
    assert torch.equal(again, plain)
    assert state_bits(model) == before


def _tensor_data(path) -> bytes:
    data = path.read_bytes()
    return data[8 + int.from_bytes(data[:8], "little"):]


def test_switching_reads_each_file_once_and_tags_equal_request_loras(model, tmp_path, monkeypatch):
    addons = AddOns({"ink": kohya_file(model, tmp_path / "ink.safetensors", 1),
                     "pastel": kohya_file(model, tmp_path / "pastel.safetensors", 2)})
    reads = []
    read = lora_session.read_lora
    monkeypatch.setattr(lora_session, "read_lora", lambda path, m: reads.append(path.name) or read(path, m))
    monkeypatch.setattr("core.loading.checkpoint.load_model", lambda *a, **k: pytest.fail("the model was reloaded"))
    runs = {}
    for label, prompt, loras in [("ink", "a red circle <lora:ink:0.7>", ()),
                                 ("pastel", "a red circle ", (("pastel", -0.5),)),
                                 ("both", "a red circle <lyco:PASTEL:-0.5>", (("ink", 0.7),)),
                                 ("ink again", "a red circle ", (("ink", 0.7),))]:
        request = GenerationRequest(**{**BASE.__dict__, "prompt": prompt, "loras": loras})
        runs[label] = latents(request, model, addons=addons)
    assert reads == ["ink.safetensors", "pastel.safetensors"]           # switching back read nothing again
    assert torch.equal(runs["ink"], runs["ink again"])                  # the tag is the panel's LoRA, text removed
    assert not torch.equal(runs["ink"], runs["both"]) and not torch.equal(runs["pastel"], runs["both"])


def test_the_same_loras_run_after_run_patch_the_weights_once(model, tmp_path, monkeypatch):
    """Live regenerates with the same LoRAs at every pause: the weights are already right."""
    from core.loading.lora_apply import AppliedLoras
    ink = kohya_file(model, tmp_path / "ink.safetensors", 3)
    patches = []
    patch = AppliedLoras.set
    monkeypatch.setattr(AppliedLoras, "set", lambda self, loras: patches.append(len(loras)) or patch(self, loras))
    request = GenerationRequest(**{**BASE.__dict__, "loras": ((str(ink), 0.8),)})
    first, second = latents(request, model), latents(request, model)
    assert torch.equal(first, second) and patches == [1]
    latents(GenerationRequest(**{**BASE.__dict__, "loras": ((str(ink), 0.5),)}), model)   # a new weight patches
    latents(BASE, model)                                                                    # none: restored
    assert patches == [1, 1, 0]


def test_bf16_networks_and_deep_cache_with_a_lora(model_file, tmp_path):
    model = at_precision(load_model(model_file), torch.bfloat16)
    before = state_bits(model)
    ink = kohya_file(model, tmp_path / "ink.safetensors", 1)
    request = GenerationRequest(**{**BASE.__dict__, "steps": 4, "deep_cache_interval": 2, "deep_cache_start": 0.0})
    plain = latents(request, model)
    with_lora = generate(GenerationRequest(**{**request.__dict__, "loras": ((str(ink), 1.0),)}), model)
    assert len(with_lora.images) == 1 and not torch.equal(with_lora.latents, plain)
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    assert torch.equal(latents(request, model), plain) and state_bits(model) == before


def test_an_unknown_name_is_refused_before_anything_changes(model, tmp_path):
    addons = AddOns({"ink": kohya_file(model, tmp_path / "ink.safetensors", 1)})
    before = state_bits(model)
    with pytest.raises(LatentDeskError, match=r"LoRA 'ikn' not found; LoRAs found: ink"):
        generate(GenerationRequest(**{**BASE.__dict__, "prompt": "x <lora:ikn:1>"}), model, addons=addons)
    with pytest.raises(LatentDeskError, match=r"<lora:ink:x>: the weight 'x' is not a number"):
        generate(GenerationRequest(**{**BASE.__dict__, "prompt": "x <lora:ink:x>"}), model, addons=addons)
    assert state_bits(model) == before


def test_an_embedding_named_in_the_negative_prompt_is_used_and_hashed(model, tmp_path):
    width = model.text_encoder.models[0].config.hidden_size
    path = tmp_path / "smudge.safetensors"
    save_file({"emb_params": torch.randn(2, width, generator=torch.Generator().manual_seed(3))}, path)
    addons = AddOns({}, {"smudge": path, "unused": tmp_path / "missing.safetensors"})
    request = GenerationRequest(**{**BASE.__dict__, "negative_prompt": "blurry, smudge"})
    plain = latents(request, model)                      # without add-ons the name is only a word
    result = generate(request, model, addons=addons)
    assert result.embeddings == (("smudge", hashlib.sha256(path.read_bytes()).hexdigest()[:12]),)
    assert not torch.equal(result.latents, plain)
    assert torch.equal(latents(request, model), plain)   # the next run without it is plain again


# -- the command line -------------------------------------------------------------------------------------

def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data_dir(tmp_path, monkeypatch, model):
    """A data folder whose models/loras holds 'ink' (with kohya's training metadata)."""
    monkeypatch.setenv("LATENTDESK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LATENTDESK_MODEL_DIRS", raising=False)
    (tmp_path / "data" / "models" / "loras").mkdir(parents=True)
    tags = {"set1": {"inkstyle": 40, "lineart": 12, "cat": 3}, "set2": {"lineart": 30, "monochrome": 5}}
    kohya_file(model, tmp_path / "data" / "models" / "loras" / "ink.safetensors", 1,
               metadata={"ss_tag_frequency": json.dumps(tags)})
    return tmp_path / "data"


def test_cli_lora_by_name_end_to_end(capsys, tmp_path, model_file, data_dir):
    out = tmp_path / "a.png"
    code, _, err = run(capsys, "generate", "--model", model_file, "--prompt", "a red circle", "--steps", 2,
                       "--width", 64, "--height", 64, "--seed", 1, "--lora", "ink:0.5", "--out", out)
    assert code == 0, err
    text = read_parameters(out)
    info = parse_infotext(text)
    digest = hashlib.sha256(_tensor_data(data_dir / "models" / "loras" / "ink.safetensors")).hexdigest()[:12]
    assert (info["LoRAs"], info["Lora hashes"]) == ("ink:0.5", f"ink: {digest}")
    assert request_from_infotext(text, GenerationRequest())[0].loras == (("ink", 0.5),)


@pytest.mark.parametrize("lora, words", [
    ("nope", "LoRA 'nope' not found; LoRAs found: ink (in folders "),
    ("ink:1000", "the weight of LoRA 'ink' must be a number from -100.0 to 100.0"),
])
def test_cli_unknown_lora_or_bad_weight_exits_2_before_the_model_loads(capsys, tmp_path, model_file, data_dir,
                                                                        monkeypatch, lora, words):
    monkeypatch.setattr("core.loading.checkpoint.load_model", lambda *a, **k: pytest.fail("loaded"))
    code, _, err = run(capsys, "generate", "--model", model_file, "--prompt", "x", "--lora", lora,
                       "--out", tmp_path / "x.png")
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


Q = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"


def hostile(tmp_path, case):
    path = tmp_path / f"{case}.safetensors"
    if case == "pickle":
        torch.save({Q + ".lora_down.weight": torch.rand(4, 32)}, path)
        return path
    te2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    tensors = {
        "sdxl": {te2 + ".lora_down.weight": torch.rand(4, 96), te2 + ".lora_up.weight": torch.rand(96, 4)},
        "nan": {Q + ".lora_down.weight": torch.full((4, 32), float("nan")), Q + ".lora_up.weight": torch.rand(32, 4)},
        "huge rank": {Q + ".lora_down.weight": torch.rand(4096, 32), Q + ".lora_up.weight": torch.rand(32, 4096)},
    }[case]
    save_file(tensors, path)
    return path


@pytest.mark.parametrize("case, words", [
    ("sdxl", "this LoRA is made for Stable Diffusion XL, but the model is Stable Diffusion 1.x"),
    ("nan", "NaN or infinite"),
    ("huge rank", "rank 4096 is larger than the layer"),
    ("pickle", "pickle"),
])
def test_cli_hostile_lora_exits_2_with_one_line_naming_the_file(capsys, tmp_path, model_file, case, words):
    path = hostile(tmp_path, case)
    code, _, err = run(capsys, "generate", "--model", model_file, "--prompt", "x", "--steps", 2, "--width", 64,
                       "--height", 64, "--lora", f"{path}:0.5", "--out", tmp_path / "x.png")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert words in err and str(path) in err, err
    assert not (tmp_path / "x.png").exists()


def test_cli_inspect_describes_a_lora_and_an_embedding(capsys, tmp_path, data_dir):
    lora = data_dir / "models" / "loras" / "ink.safetensors"
    code, out, err = run(capsys, "inspect", lora, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["kind"], report["formats"], report["ranks"]) == ("lora", ["kohya LoRA"], [RANK])
    assert report["family"] == ["sd1", "sd2"]            # top-level attention: SD1/SD2, never SDXL
    assert report["trigger_words"] == ["lineart", "inkstyle", "monochrome", "cat"]   # 12 + 30, 40, 5, 3
    assert report["layers"]["UNet"] > 0 and report["layers"]["text encoder"] > 0
    code, out, _ = run(capsys, "inspect", lora)
    assert code == 0 and re.search(r"ink\.safetensors: kohya LoRA for Stable Diffusion 1\.x or .*\n  rank 4;", out)
    embedding = tmp_path / "smudge.safetensors"
    save_file({"clip_l": torch.rand(3, 768), "clip_g": torch.rand(3, 1280)}, embedding)
    code, out, _ = run(capsys, "inspect", embedding)
    assert code == 0 and out.startswith("smudge.safetensors: textual-inversion embedding for Stable Diffusion XL; "
                                        "clip_l: 3 vectors of 768, clip_g: 3 vectors of 1280"), out


def test_a_model_let_go_takes_its_loras_with_it(model_file, tmp_path):
    """The per-model state is held weakly by the UNet: the app's old model is freed, LoRAs and all."""
    import gc
    import weakref

    model = load_model(model_file)
    ink = kohya_file(model, tmp_path / "ink.safetensors", 1)
    generate(GenerationRequest(**{**BASE.__dict__, "steps": 1, "loras": ((str(ink), 1.0),)}), model)
    unet = weakref.ref(model.unet)
    assert unet() in lora_session._STATES
    del model
    gc.collect()
    assert unet() is None
