"""Scaled dot-product attention, with a faster path for long bf16 sequences on CPUs.

PyTorch's fused CPU attention (the flash kernel behind F.scaled_dot_product_attention) works in blocks with an
online softmax; on a CPU without AMX (AVX512-BF16 only) it is no faster in bf16 than in fp32 and was 46 % of
an SD1.5 UNet step. Spelled out one head at a time instead, the two products are plain bf16 GEMMs (oneDNN's
AVX512-BF16 kernels) and the softmax runs over a block of query rows that stays in cache. Measured on a
2-core AMD EPYC (AVX512-BF16, no AMX), torch 2.13, bf16 (ms per call, SDPA -> this path; medians of
scripts/bench_attention_kernel.py, docs/performance/attention_kernel.json):
    SD1.5 self-attention at 64x64 (2 x 8 heads, 4096 tokens, dim 40) ....... 276 -> 118
    SD1.5 self-attention at 32x32 (2 x 8 heads, 1024 tokens, dim 80) .......  28.8 -> 11.0
    VAE mid-block at 512 px (1 head, 4096 tokens, dim 512) ................. 163 -> 40
    cross-attention on 77 text tokens (4096 queries, dim 40, one try) ......   8 -> 12 (kept on SDPA)
Short key sequences (the text tokens) stay on SDPA, and so does anything that needs gradients: this path
writes into a preallocated output, and autograd would keep every block's probabilities anyway. So does fp16:
PyTorch's CPU fp16 GEMMs are slow (the 64x64 case took 12.6 s blocked against 1.1 s fused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Below this many keys (77 text tokens, small grids) SDPA's fused kernel wins.
MIN_KEYS = 256
# Query rows per block: the score block (rows x keys) is kept near 2 M elements (4 MB in bf16), which fits
# the shared L3 cache; 512 rows at 4096 keys measured best of 128 / 256 / 512.
BLOCK_ELEMENTS = 1 << 21


def uses_blocked_path(q: Tensor, k: Tensor, v: Tensor) -> bool:
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.shape[-2] >= MIN_KEYS
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))))


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ / sqrt(d)) v for (B, heads, T, d) tensors; (B, heads, T, d_v) back."""
    if not uses_blocked_path(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)
    return _blocked_attention(q, k, v)


def _blocked_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    batch, heads, queries, dim = q.shape
    rows = max(1, min(queries, BLOCK_ELEMENTS // k.shape[-2]))
    q = q * dim ** -0.5
    # Written as (B, T, heads, d): the caller's transpose back to (B, T, heads * d) is then a view, not a copy.
    out = q.new_empty(batch, queries, heads, v.shape[-1])
    for b in range(batch):
        for head in range(heads):
            # Strided (T, d) views of the caller's layout: BLAS reads them by leading dimension, no copies.
            keys_t, values = k[b, head].transpose(0, 1), v[b, head]
            for start in range(0, queries, rows):
                scores = torch.matmul(q[b, head, start:start + rows], keys_t)
                out[b, start:start + rows, head] = torch.matmul(scores.softmax(-1), values)
    return out.transpose(1, 2)
