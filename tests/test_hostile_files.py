"""Crafted broken and hostile model files: each gives one clear ModelLoadError, none crashes.

The message must name the file and say what is wrong, so a user knows which
download to replace and why.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ModelLoadError
from core.loading.checkpoint import load_model, load_vae
from core.loading.safetensors_io import all_finite
from tests.tiny_models import write_diffusers_folder, write_single_file


def raw_safetensors(path: Path, header: dict | bytes | list, data: bytes = b"", header_len: int | None = None) -> Path:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(body) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", length) + body + data)
    return path


def f32(shape, begin=0) -> dict:
    n = 4
    for s in shape:
        n *= s
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + n]}


class RunsCode:
    """Unpickling this writes a marker file: proof that a loader executed the payload."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


# Each case: (file name, builder(tmp_path) -> path, words the message must contain)
FORMAT_CASES = [
    ("empty.safetensors", lambda p: (p.write_bytes(b""), p)[1], "empty or truncated"),
    ("short.safetensors", lambda p: (p.write_bytes(b"\x01\x02\x03"), p)[1], "empty or truncated"),
    ("random.safetensors", lambda p: (p.write_bytes(bytes(range(7, 256)) * 40), p)[1], "header length"),
    ("hugeheader.safetensors", lambda p: raw_safetensors(p, {}, header_len=2**40), "header length"),
    ("notutf8.safetensors", lambda p: raw_safetensors(p, b"\xff\xfe{}"), "not valid JSON"),
    ("notjson.safetensors", lambda p: raw_safetensors(p, b"{this is not json"), "not valid JSON"),
    ("list.safetensors", lambda p: raw_safetensors(p, [1, 2, 3]), "not a JSON object"),
    ("metalist.safetensors", lambda p: raw_safetensors(p, {"__metadata__": [1]}), "__metadata__ is not"),
    ("metaint.safetensors", lambda p: raw_safetensors(p, {"__metadata__": {"a": 5}}), "expected text"),
    ("metahuge.safetensors", lambda p: raw_safetensors(p, {"__metadata__": {"x": "y" * (17 * 2**20)}}),
     "limit"),
    ("metamany.safetensors", lambda p: raw_safetensors(p, {"__metadata__": {str(i): "" for i in range(20_000)}}),
     "entries"),
    ("dtype.safetensors", lambda p: raw_safetensors(p, {"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}},
                                                    b"\0"), "unsupported dtype"),
    ("shape.safetensors", lambda p: raw_safetensors(p, {"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
                                                    b"\0" * 8), "invalid shape"),
    ("offsets.safetensors", lambda p: raw_safetensors(p, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}},
                                                      b"\0" * 8), "invalid data offsets"),
    ("size.safetensors", lambda p: raw_safetensors(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}},
                                                   b"\0" * 8), "needs 16 bytes"),
    ("overlap.safetensors", lambda p: raw_safetensors(p, {"a": f32([2]), "b": f32([2], begin=4)}, b"\0" * 12),
     "overlap or gap"),
    ("truncated.safetensors", lambda p: raw_safetensors(p, {"a": f32([1000])}, b"\0" * 100), "truncated"),
    ("trailing.safetensors", lambda p: raw_safetensors(p, {"a": f32([2])}, b"\0" * 8 + b"junk"), "unexplained bytes"),
    ("weights.ckpt", lambda p: (p.write_bytes(pickle.dumps(RunsCode(p.with_suffix(".marker")))), p)[1], "pickle"),
    ("disguised.safetensors", lambda p: (p.write_bytes(pickle.dumps(RunsCode(p.with_suffix(".marker")))), p)[1],
     "pickle"),
    ("torchsave.bin", lambda p: (torch.save({"w": torch.zeros(2)}, p), p)[1], "pickle"),
    ("notamodel.safetensors", lambda p: (save_file({"foo": torch.zeros(3)}, p), p)[1], "not a Stable Diffusion"),
    ("lora.safetensors", lambda p: (save_file({"lora_unet_down.lora_down.weight": torch.zeros(3)}, p), p)[1],
     "LoRA"),
    ("vaeonly.safetensors", lambda p: (save_file({"encoder.conv_in.weight": torch.zeros(3)}, p), p)[1],
     "standalone VAE"),
    ("transformer.safetensors", lambda p: (save_file({"model.diffusion_model.joint_blocks.0.w": torch.zeros(3)}, p),
                                           p)[1], "unknown architecture"),
    # Headers that parse as JSON but not as Python values a loader can use
    ("dtypelist.safetensors", lambda p: raw_safetensors(p, {"w": {"dtype": ["F32"], "shape": [1],
                                                                  "data_offsets": [0, 4]}}, b"\0" * 4),
     "unsupported dtype"),
    ("emptyhuge.safetensors", lambda p: raw_safetensors(p, {"w": {"dtype": "F32", "shape": [0, 10**30],
                                                                  "data_offsets": [0, 0]}}), "invalid shape"),
    ("emptywide.safetensors", lambda p: raw_safetensors(p, {"w": {"dtype": "F32", "shape": [0] + [2**31] * 4,
                                                                  "data_offsets": [0, 0]}}), "invalid shape"),
    ("rank.safetensors", lambda p: raw_safetensors(p, {"w": {"dtype": "F32", "shape": [1] * 100,
                                                             "data_offsets": [0, 4]}}, b"\0" * 4), "invalid shape"),
    ("boolshape.safetensors", lambda p: raw_safetensors(p, {"w": {"dtype": "F32", "shape": [True],
                                                                  "data_offsets": [0, 4]}}, b"\0" * 4),
     "invalid shape"),
    ("longnumber.safetensors", lambda p: raw_safetensors(p, b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000
                                                         + b'], "data_offsets": [0, 4]}}', b"\0" * 4), "digits"),
    ("deep.safetensors", lambda p: raw_safetensors(p, b"[" * 100_000 + b"]" * 100_000), "nested"),
    ("deepmeta.safetensors", lambda p: raw_safetensors(p, b'{"__metadata__": ' + b"{\"a\": " * 50_000 + b"1"
                                                       + b"}" * 50_001), "nested"),
]


@pytest.mark.parametrize("name,build,words", FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_broken_file_gives_clear_error(tmp_path, name, build, words):
    path = build(tmp_path / name)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and words in message, message
    assert not path.with_suffix(".marker").exists(), "the pickle payload ran"


@pytest.mark.parametrize("shape", [[0, 10**30], [0] + [2**31] * 4], ids=["huge", "wide"])
def test_a_zero_size_tensor_with_huge_dimensions_is_refused_before_it_is_made(tmp_path, shape):
    # Zero bytes of data pass the size check, but torch cannot make the tensor (or its strides overflow).
    path = raw_safetensors(tmp_path / "vae.safetensors", {"encoder.conv_in.weight": {
        "dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
    with pytest.raises(ModelLoadError, match="invalid shape"):
        load_vae(path, scale_factor=0.18215)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="file not found"):
        load_model(tmp_path / "nope.safetensors")


# --- files that parse but do not hold a model we can use -------------------------------------------

def rewrite(src: Path, dst: Path, change) -> Path:
    from safetensors.torch import load_file
    state = load_file(src)
    change(state)
    save_file(state, dst)
    return dst


@pytest.fixture(scope="module")
def good_sd1(tmp_path_factory) -> Path:
    return write_single_file("sd1", tmp_path_factory.mktemp("good") / "tiny_sd1.safetensors")


def _set(state, key, value):
    state[key] = value


MODEL_CASES = [
    ("missing", lambda s: s.pop("model.diffusion_model.out.2.weight"), "(model.diffusion_model.*): the UNet "
                                                                       "has no tensor 'out.2.weight'"),
    ("extra", lambda s: _set(s, "model.diffusion_model.extra_block.weight", torch.zeros(2)),
     "(model.diffusion_model.*): the UNet has a tensor 'extra_block.weight'"),
    ("misshaped", lambda s: _set(s, "first_stage_model.decoder.conv_out.weight",
                                 torch.zeros(3, 5, 3, 3)),
     "VAE (first_stage_model.*): VAE weights do not fit a VAE with 2 levels of [32, 64] channels and 4 latent "
     "channels — wrong shape: decoder.conv_out.weight (3, 5, 3, 3) (expected (3, 32, 3, 3))"),
    ("nan", lambda s: s["model.diffusion_model.out.2.bias"].fill_(float("nan")), "NaN"),
    ("inf", lambda s: s["first_stage_model.quant_conv.weight"].view(-1)[0].fill_(float("inf")), "NaN or infinite"),
    ("no_text_encoder", lambda s: [s.pop(k) for k in list(s) if k.startswith("cond_stage_model.")],
     "text encoder"),
    ("mixed_width", lambda s: [_set(s, k, torch.zeros(v.shape[0], v.shape[1] + 8)) for k, v in list(s.items())
                               if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))],
     "the text encoders give 64-wide tokens but the UNet's cross-attention expects 72"),
]


@pytest.mark.parametrize("name,change,words", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_broken_model_gives_clear_error(tmp_path, good_sd1, name, change, words):
    path = rewrite(good_sd1, tmp_path / f"{name}.safetensors", change)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and words in message, message


def test_good_file_loads(good_sd1):
    model = load_model(good_sd1)
    assert model.family.name == "sd1"


def test_nothing_half_loaded_survives_a_failure(tmp_path, good_sd1):
    import gc
    import weakref

    from core.nets.unet import UNet

    created = []
    original_init = UNet.__init__

    def tracking_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        created.append(weakref.ref(self))

    path = rewrite(good_sd1, tmp_path / "bad_vae.safetensors",
                   lambda s: _set(s, "first_stage_model.decoder.conv_out.weight", torch.zeros(3, 5, 3, 3)))
    UNet.__init__ = tracking_init
    try:
        with pytest.raises(ModelLoadError):
            load_model(path)
    finally:
        UNet.__init__ = original_init
    gc.collect()
    assert created, "the UNet was built before the VAE failed"
    assert all(ref() is None for ref in created), "a half-loaded UNet is still alive"


def test_diffusers_folder_with_only_pickles_is_refused(tmp_path):
    folder = write_diffusers_folder("sd1", tmp_path / "model")
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    torch.save({"w": torch.zeros(1)}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(folder)


@pytest.mark.parametrize("breakage,words", [
    (lambda f: (f / "model_index.json").write_text("{oops"), "not valid JSON"),
    (lambda f: (f / "model_index.json").write_text('{"_class_name": "FluxPipeline"}'), "FluxPipeline"),
    (lambda f: (f / "unet" / "config.json").unlink(), "unet/config.json is missing"),
    (lambda f: (f / "unet" / "config.json").write_text(json.dumps({"x": "y" * 2_000_000})), "too large"),
])
def test_broken_diffusers_folder(tmp_path, breakage, words):
    folder = write_diffusers_folder("sd1", tmp_path / "model")
    breakage(folder)
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    assert words in str(info.value), str(info.value)


def test_shard_index_cannot_point_outside_the_folder(tmp_path):
    folder = write_diffusers_folder("sd1", tmp_path / "model")
    for weights in (folder / "vae").glob("*.safetensors"):
        weights.unlink()
    (folder / "vae" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../../secret.safetensors"}}))
    with pytest.raises(ModelLoadError, match="outside the folder"):
        load_model(folder)


def test_vae_file_that_is_not_a_vae(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"something.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match="not a VAE"):
        load_vae(path, scale_factor=0.18215)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_finiteness_check_finds_any_nan_or_infinity_wherever_it_is(dtype):
    weights = torch.randn(4, 257).to(dtype)
    assert all_finite(weights)
    for bad in (float("nan"), float("inf"), float("-inf")):
        for index in (0, 500, weights.numel() - 1):
            damaged = weights.clone()
            damaged.view(-1)[index] = bad
            assert not all_finite(damaged), (bad, index)


def test_the_finiteness_check_accepts_huge_finite_values():
    # Values whose sum overflows float32 are still finite weights: the check must not add them up.
    assert all_finite(torch.full((8,), 3e38))
    assert all_finite(torch.tensor([torch.finfo(torch.bfloat16).max] * 4, dtype=torch.bfloat16))


def test_tensors_of_every_dtype_read_back_exactly_and_converted_ones_do_not_share_memory(tmp_path):
    from core.loading.safetensors_io import SafetensorsFile
    g = torch.Generator().manual_seed(0)
    tensors = {"bf16": torch.randn(3, 4, generator=g).bfloat16(), "fp16": torch.randn(5, generator=g).half(),
               "fp16b": torch.randn(2, 2, generator=g).half(), "ints": torch.arange(4), "scalar": torch.tensor(2.5),
               "empty": torch.zeros(0, 3), "fp32": torch.randn(6, generator=g)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    file = SafetensorsFile(tmp_path / "x.safetensors")
    stored = file.read_many(file.keys())
    assert all(stored[k].dtype == v.dtype and torch.equal(stored[k], v) for k, v in tensors.items())
    widened = file.read_many(file.keys(), torch.float32)
    for key, value in tensors.items():
        expected = value.float() if value.is_floating_point() else value
        assert widened[key].dtype == expected.dtype and torch.equal(widened[key], expected), key
    # the converted tensors came through one staging buffer: each must own its memory
    pointers = [widened[k].data_ptr() for k in ("bf16", "fp16", "fp16b")]
    assert len(set(pointers)) == 3
