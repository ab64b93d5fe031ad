"""core/nets/packed_weights.py: bf16 CPU convolutions and linear layers with weights kept in oneDNN's layout give
F.conv2d's and F.linear's results, pack each weight once, pack again when the weight changes, and leave
everything else to nn.Conv2d / nn.Linear."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core import memory
from core.nets import packed_weights
from core.nets.onednn import has_bf16_kernels
from core.nets.packed_weights import Conv2d, Linear, linear

needs_onednn = pytest.mark.skipif(not has_bf16_kernels(), reason="no oneDNN bf16 kernels on this CPU")


def conv(c_in=16, c_out=32, kernel=3, dtype=torch.bfloat16, **kwargs):
    torch.manual_seed(0)
    return Conv2d(c_in, c_out, kernel, **kwargs).to(dtype).eval()


def images(*shape, dtype=torch.bfloat16, seed=1):
    torch.manual_seed(seed)
    return torch.randn(*shape).to(dtype)


def reference(module, x):
    """F.conv2d on the same bf16 numbers, accumulated in float32."""
    return F.conv2d(x.float(), module.weight.float(), module.bias.float() if module.bias is not None else None,
                    module.stride, module.padding, module.dilation, module.groups)


def packed_of(module):
    """The layer's one packed weight (None if none)."""
    kinds = packed_weights._packed.get(module.weight)
    assert kinds is None or len(kinds) <= 1
    return next(iter(kinds.values()))[2] if kinds else None


@needs_onednn
@pytest.mark.parametrize("kwargs, shapes", [
    ({"kernel": 3, "padding": 1}, [(2, 16, 20, 20), (1, 16, 9, 13)]),      # packed for one size, used for another
    ({"kernel": 1}, [(2, 16, 8, 8)]),
    ({"kernel": 3, "stride": 2}, [(1, 16, 17, 17)]),                         # the VAE's downsampler: no padding
    ({"kernel": 3, "padding": 1, "bias": False}, [(1, 16, 8, 8)]),
])
def test_packed_path_gives_the_convolution(kwargs, shapes):
    module = conv(**kwargs)
    with torch.inference_mode():
        for shape in shapes:
            x = images(*shape)
            got = module(x)
            assert packed_of(module) is not None and got.dtype == torch.bfloat16
            expected = reference(module, x)
            assert got.shape == expected.shape
            # bf16 output rounding (8 bits) of values of this scale
            assert (got.float() - expected).abs().max() <= 2e-2 * expected.abs().max()


@needs_onednn
def test_channels_last_input_as_the_vae_decoder_runs():
    module, x = conv(padding=1), images(1, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = module(x)
    expected = reference(module, x)
    assert packed_of(module) is not None
    assert (got.float() - expected).abs().max() <= 2e-2 * expected.abs().max()


@needs_onednn
def test_packs_once_and_again_when_the_weight_changes():
    module, x = conv(padding=1), images(1, 16, 8, 8)
    with torch.no_grad():
        module(x)
        first = packed_of(module)
        module(x)
        assert packed_of(module) is first                    # kept, not packed per call
        module.weight.mul_(-1)                               # as a LoRA switch writes it: in place
        got = module(x)
        assert packed_of(module) is not first
    expected = reference(module, x)
    assert (got.float() - expected).abs().max() <= 2e-2 * expected.abs().max()


@needs_onednn
def test_a_deep_copy_and_its_state_dict_are_an_ordinary_convolutions():
    module = conv(padding=1)
    with torch.inference_mode():
        module(images(1, 16, 8, 8))
    twin = copy.deepcopy(module)
    assert packed_of(twin) is None                           # the cache belongs to the original weight only
    assert set(twin.state_dict()) == set(nn.Conv2d(16, 32, 3).state_dict()) == {"weight", "bias"}
    assert all(t.layout == torch.strided for t in twin.state_dict().values())


@needs_onednn
def test_a_pack_never_takes_the_working_memory_the_run_was_checked_for(monkeypatch):
    """check_fits found 3 GiB free enough for a run's working memory; earlier packs have since used the rest:
    a pack that would leave less than what the run needs (though more than the fixed reserve) is not made."""
    need, model = 3 << 30, SimpleNamespace(device=torch.device("cpu"))
    monkeypatch.setattr(memory, "_working_bytes", 0)           # put back after the test
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 << 30)
    monkeypatch.setattr(memory, "activation_bytes", lambda *args: need)
    module = conv(padding=1)
    x = images(1, 16, 8, 8)
    monkeypatch.setattr(packed_weights, "available_bytes", lambda device: need + module.weight.nbytes // 2)
    assert need + module.weight.nbytes // 2 - module.weight.nbytes > packed_weights.FREE_MEMORY_RESERVE
    memory.check_fits(model, 1024, 1024, 1, True)
    with torch.no_grad():
        module(x)
    assert packed_of(module) is None
    monkeypatch.setattr(memory, "activation_bytes", lambda *args: 1 << 20)    # a small run: room to pack
    memory.check_fits(model, 64, 64, 1, True)
    with torch.no_grad():
        module(x)
    assert packed_of(module) is not None


@pytest.mark.parametrize("case", ["float32", "gradients", "switched off", "inference-tensor weights",
                                  "memory short"])
def test_everything_else_is_nn_conv2d(monkeypatch, case):
    module = conv(dtype=torch.float32 if case == "float32" else torch.bfloat16, padding=1)
    x = images(1, 16, 8, 8, dtype=module.weight.dtype)
    if case == "switched off":
        monkeypatch.setattr(packed_weights, "PACK_WEIGHTS", False)
    if case == "memory short":                 # the packed copy would leave less than the reserve free
        monkeypatch.setattr(packed_weights, "available_bytes", lambda device: packed_weights.FREE_MEMORY_RESERVE + 1)
    if case == "inference-tensor weights":     # made under inference_mode: no version counter to watch
        with torch.inference_mode():
            module.weight = nn.Parameter(module.weight.detach().clone(), requires_grad=False)
    if case == "gradients":
        got = module(x)
        got.float().sum().backward()
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    else:
        with torch.no_grad():
            got = module(x)
    assert packed_of(module) is None
    with torch.no_grad():
        assert torch.equal(got.detach(), nn.Conv2d.forward(module, x))


@needs_onednn
@pytest.mark.parametrize("bias, shapes", [(True, [(2, 300, 48), (1, 7, 48)]), (False, [(5, 48)])])
def test_packed_linear_gives_the_product(bias, shapes):
    torch.manual_seed(0)
    layer = Linear(48, 96, bias=bias).bfloat16().eval()
    with torch.inference_mode():
        for shape in shapes:
            x = images(*shape)
            got = layer(x)
            assert packed_of(layer) is not None
            expected = F.linear(x.float(), layer.weight.float(), layer.bias.float() if bias else None)
            assert got.shape == expected.shape
            assert (got.float() - expected).abs().max() <= 2e-2 * expected.abs().max()


@needs_onednn
def test_a_1x1_convolution_as_a_linear_layer_on_tokens():
    """The SD1 UNet's proj_in/proj_out: 1x1 convolutions applied to (B, HW, C) tokens."""
    module = conv(kernel=1)
    x = images(2, 64, 16)
    with torch.inference_mode():
        got = linear(x, module)
        assert packed_of(module) is not None
    expected = F.linear(x.float(), module.weight.float().flatten(1), module.bias.float())
    assert (got.float() - expected).abs().max() <= 2e-2 * expected.abs().max()


@needs_onednn
def test_the_packed_unet_matches_the_plain_one(monkeypatch):
    """A whole tiny UNet in bf16 with and without packing: the same products, so the same numbers up to
    oneDNN's order of summation."""
    from core.nets.unet import UNet, UNetConfig
    torch.manual_seed(0)
    unet = UNet(UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                           num_heads=(2, 2), context_dim=24, norm_groups=8)).bfloat16().eval()
    x, t, context = images(2, 4, 16, 16), torch.tensor([500.0, 20.0]), images(2, 5, 24, seed=2)
    with torch.inference_mode():
        packed = unet(x, t, context).float()
        count = sum(bool(packed_weights._packed.get(m.weight)) for m in unet.modules()
                    if isinstance(m, (nn.Conv2d, nn.Linear)))
        geglu = packed_weights._packed[unet.input_blocks[1][1].transformer_blocks[0].ff.net[0].proj.weight]
        assert len(geglu) == 2                    # its two halves, the gate's with GELU fused in
        monkeypatch.setattr(packed_weights, "PACK_WEIGHTS", False)
        plain = unet(x, t, context).float()
    assert count > 10
    assert (packed - plain).abs().max() <= 2e-2 * plain.abs().max()
