"""core/nets/attention_kernel.py: the blocked bf16 path computes the same attention as SDPA, and only where it is
meant to run (CPU, bf16, long key sequences, no gradients)."""

import pytest
import torch
import torch.nn.functional as F

from core.nets import attention_kernel
from core.nets.attention_kernel import attention, uses_blocked_path


def heads(batch, count, tokens, dim, dtype, seed):
    torch.manual_seed(seed)
    return torch.randn(batch, count, tokens, dim).to(dtype)


@pytest.mark.parametrize("queries, keys, dim, block", [
    (300, 300, 40, 1 << 21),        # one block of rows
    (300, 512, 16, 512 * 64),       # 64 rows a block: 300 = 4 full blocks and a ragged one of 44
    (7, 2048, 8, 2048 * 3),         # fewer queries than a block holds; blocks of 3 rows
])
def test_blocked_path_equals_attention_in_float32(monkeypatch, queries, keys, dim, block):
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


def test_heads_with_strided_layout_as_the_unet_passes_them():
    """The UNet hands over (B, T, heads, d) transposed to (B, heads, T, d): a view, not contiguous."""
    torch.manual_seed(3)
    x = torch.randn(2, 600, 4, 32).bfloat16()
    q = x.transpose(1, 2)
    assert not q.is_contiguous()
    expected = F.scaled_dot_product_attention(q.float(), q.float(), q.float())
    assert (attention(q, q, q).float() - expected).abs().max() <= 0.05


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
