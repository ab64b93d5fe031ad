"""core/nets/attention_kernel.py: the blocked bf16 path computes the same attention as SDPA, and only where it is
meant to run (CPU, bf16, long key sequences, no gradients)."""

import pytest
import torch
import torch.nn.functional as F

from core.nets import attention_kernel
from core.nets.attention_kernel import attention, uses_blocked_path
from core.nets.onednn import has_bf16_kernels

# Both per-head kernels: oneDNN's (where the CPU has bf16 units, as the development machine has) and BLAS's.
KERNELS = [pytest.param(True, marks=pytest.mark.skipif(not has_bf16_kernels(), reason="no oneDNN bf16 kernels"),
                        id="onednn"), pytest.param(False, id="blas")]


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    monkeypatch.setattr(attention_kernel, "has_bf16_kernels", lambda: request.param)
    used = []
    for name in ("_one_head_onednn", "_one_head_blas"):
        original = getattr(attention_kernel, name)
        monkeypatch.setattr(attention_kernel, name, lambda *a, _f=original, _n=name: used.append(_n) or _f(*a))
    yield "_one_head_onednn" if request.param else "_one_head_blas", used


def heads(batch, count, tokens, dim, dtype, seed):
    torch.manual_seed(seed)
    return torch.randn(batch, count, tokens, dim).to(dtype)


@pytest.mark.parametrize("queries, keys, dim, block", [
    (300, 300, 40, 1 << 21),        # one block of rows
    (300, 512, 16, 512 * 64),       # 64 rows a block: 300 = 4 full blocks and a ragged one of 44
    (7, 2048, 8, 2048 * 3),         # fewer queries than a block holds; blocks of 3 rows
])
def test_blocked_path_equals_attention_in_float32(monkeypatch, kernel, queries, keys, dim, block):
    dtype, tolerance = torch.bfloat16, 2e-2
    monkeypatch.setattr(attention_kernel, "BLOCK_ELEMENTS", block)
    q = heads(2, 3, queries, dim, dtype, 0)
    k, v = heads(2, 3, keys, dim, dtype, 1), heads(2, 3, keys, dim, dtype, 2) * 3
    assert uses_blocked_path(q, k, v)
    blocked, calls = attention_kernel._blocked_attention, []
    monkeypatch.setattr(attention_kernel, "_blocked_attention", lambda *a: calls.append(1) or blocked(*a))
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    got = attention(q, k, v)
    assert calls == [1] and got.dtype == dtype and got.shape == expected.shape
    # Within bf16's rounding of the inputs to each product, relative to the values' scale (3).
    assert (got.float() - expected).abs().max() <= tolerance * 3
    name, used = kernel
    assert set(used) == {name} and len(used) == 2 * 3      # one call per (batch, head)


def test_heads_with_strided_layout_as_the_unet_passes_them(kernel):
    """The UNet hands over (B, T, heads, d) transposed to (B, heads, T, d): a view, not contiguous."""
    torch.manual_seed(3)
    x = torch.randn(2, 600, 4, 32).bfloat16()
    q = x.transpose(1, 2)
    assert not q.is_contiguous()
    expected = F.scaled_dot_product_attention(q.float(), q.float(), q.float())
    assert (attention(q, q, q).float() - expected).abs().max() <= 0.05
    assert set(kernel[1]) == {kernel[0]}


@pytest.mark.parametrize("case", ["float32", "float16", "short keys", "gradients"])
def test_everything_else_goes_to_sdpa(monkeypatch, case):
    dtype = {"float32": torch.float32, "float16": torch.float16}.get(case, torch.bfloat16)
    q = heads(1, 2, 300, 16, dtype, 0)
    k = heads(1, 2, 77 if case == "short keys" else 300, 16, q.dtype, 1)
    v = k.clone()
    if case == "gradients":
        q.requires_grad_(True)
    called = []
    monkeypatch.setattr(attention_kernel, "_blocked_attention", lambda *a: called.append(1))
    assert not uses_blocked_path(q, k, v)
    out = attention(q, k, v)
    assert called == [] and out.shape == (1, 2, 300, 16)
    if case == "gradients":
        out.float().sum().backward()                      # SDPA's result carries the graph
        assert q.grad is not None and q.grad.abs().sum() > 0
    with torch.no_grad():                                 # without gradients the same bf16 tensors take the path
        assert uses_blocked_path(q, k, v) == (case == "gradients")


@pytest.mark.parametrize("queries, onednn, blocked", [(4096, True, True), (4096, False, False), (1024, True, False)])
def test_short_keys_with_many_queries_take_onednn(monkeypatch, queries, onednn, blocked):
    """The text cross-attention at SD1.5's 64x64 level (4,096 queries, 77 keys) is faster on oneDNN's path."""
    monkeypatch.setattr(attention_kernel, "has_bf16_kernels", lambda: onednn)
    q, k = heads(1, 2, queries, 16, torch.bfloat16, 0), heads(1, 2, 77, 16, torch.bfloat16, 1)
    with torch.no_grad():
        assert uses_blocked_path(q, k, k) == blocked
        if blocked and has_bf16_kernels():
            expected = F.scaled_dot_product_attention(q.float(), k.float(), k.float())
            assert (attention(q, k, k).float() - expected).abs().max() <= 2e-2


def test_wide_heads_take_the_matmul_path_even_with_onednn(kernel):
    """Heads wider than ONEDNN_MAX_HEAD_DIM (SD1.5's 16x16 level: 160; the VAE's mid-block: 512) run on matmul."""
    q = heads(1, 2, 300, attention_kernel.ONEDNN_MAX_HEAD_DIM + 16, torch.bfloat16, 0)
    with torch.no_grad():
        got = attention(q, q, q)
    expected = F.scaled_dot_product_attention(q.float(), q.float(), q.float())
    assert (got.float() - expected).abs().max() <= 0.05
    assert set(kernel[1]) == {"_one_head_blas"}
