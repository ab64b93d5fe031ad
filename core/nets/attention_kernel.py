"""Scaled dot-product attention, with a faster path for long bf16 sequences on CPUs.

PyTorch's fused CPU attention (the flash kernel behind F.scaled_dot_product_attention) works in blocks with an
online softmax; on a CPU without AMX (AVX512-BF16 only) it is no faster in bf16 than in fp32 and was 46 % of
an SD1.5 UNet step. Spelled out one head at a time instead, the two products are bf16 GEMMs and the softmax
runs over a block of query rows that stays in cache. Where oneDNN's bf16 kernels are there, the block stays a
oneDNN tensor throughout for heads up to 64 wide (oneDNN's softmax is about twice PyTorch's speed on a dense
bf16 tensor); wider heads and CPUs without it use torch.matmul. Measured on a 2-core AMD EPYC (AVX512-BF16,
no AMX), torch 2.13, bf16, ms per call, medians of scripts/bench_attention_kernel.py
(docs/performance/attention_kernel.json before the oneDNN path, attention_kernel_onednn.json after):
                                                                   SDPA   matmul  now
    SD1.5 self-attention at 64x64 (2 x 8 heads, 4096 tokens, dim 40)   273    118     99 (oneDNN)
    SD1.5 self-attention at 32x32 (2 x 8 heads, 1024 tokens, dim 80)    28.2   11.0   11.4 (matmul)
    VAE mid-block at 512 px (1 head, 4096 tokens, dim 512)             161     40     42 (matmul)
    cross-attention on 77 text tokens (4096 queries, dim 40; one-off)   10     12      6.5 (oneDNN)
Short key sequences (the text tokens) stay on SDPA unless there are many queries and oneDNN, and so does
anything that needs gradients: this path writes into a preallocated output, and autograd would keep every
block's probabilities anyway. So does fp16: PyTorch's CPU fp16 GEMMs are slow (the 64x64 case took 12.6 s
blocked against 1.1 s fused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._C._nn import mkldnn_linear

from core.nets.onednn import has_bf16_kernels

# Below this many keys (77 text tokens, small grids) SDPA's fused kernel wins...
MIN_KEYS = 256
# ...except on oneDNN's path with this many queries: SD1.5's cross-attention on the 77 text tokens at
# 64x64 took 6.5 ms against SDPA's 10.0 (2 x 8 heads, dim 40); at 1,024 queries both 3.3 ms, at 256 SDPA wins.
MIN_QUERIES_SHORT_KEYS = 2048
# oneDNN's path only for heads this narrow: there the softmax is a large share and oneDNN's is faster. With
# wider heads the per-head conversions cost more than it saves (medians of 9, ms, oneDNN against matmul):
# dim 40 at 64x64 104 / 119, dim 80 at 32x32 11.6 / 11.4, dim 160 at 16x16 3.5 / 2.3, VAE dim 512 51 / 41.
ONEDNN_MAX_HEAD_DIM = 64
# Query rows per block: the score block (rows x keys) is kept near 2 M elements (4 MB in bf16), which fits
# the shared L3 cache; 512 rows at 4096 keys measured best of 128 / 256 / 512.
BLOCK_ELEMENTS = 1 << 21


def uses_blocked_path(q: Tensor, k: Tensor, v: Tensor) -> bool:
    long_enough = k.shape[-2] >= MIN_KEYS or q.shape[-2] >= MIN_QUERIES_SHORT_KEYS and _onednn_suits(q)
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and long_enough
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))))


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ / sqrt(d)) v for (B, heads, T, d) tensors; (B, heads, T, d_v) back."""
    if not uses_blocked_path(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)
    return _blocked_attention(q, k, v)


def _blocked_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    batch, heads, queries, dim = q.shape
    rows = max(1, min(queries, BLOCK_ELEMENTS // k.shape[-2]))
    # Scaled into (B, heads, T, d) order: each head's block of rows is then contiguous, never copied again.
    q = torch.mul(q, dim ** -0.5, out=q.new_empty(batch, heads, queries, dim))
    one_head = _one_head_onednn if _onednn_suits(q) else _one_head_blas
    # Written as (B, T, heads, d): the caller's transpose back to (B, T, heads * d) is then a view, not a copy.
    out = q.new_empty(batch, queries, heads, v.shape[-1])
    for b in range(batch):
        for head in range(heads):
            one_head(q[b, head], k[b, head], v[b, head], out[b, :, head], rows)
    return out.transpose(1, 2)


def _onednn_suits(q: Tensor) -> bool:
    return q.shape[-1] <= ONEDNN_MAX_HEAD_DIM and has_bf16_kernels()


def _one_head_onednn(q: Tensor, k: Tensor, v: Tensor, out: Tensor, rows: int) -> None:
    """out = softmax(q kᵀ) v for one head's (T, d) tensors, `rows` queries at a time, all in oneDNN.

    The score block stays a oneDNN tensor from q·kᵀ through the softmax to p·v: oneDNN's softmax (a
    JIT-compiled exp) takes about half the time of PyTorch's on a dense bf16 tensor, and the block is
    never converted. The keys and the transposed values play the weights of two linear layers.
    """
    keys, values_t = k.contiguous().to_mkldnn(), v.t().contiguous().to_mkldnn()
    for start in range(0, q.shape[0], rows):
        scores = mkldnn_linear(q[start:start + rows].contiguous().to_mkldnn(), keys, None)
        out[start:start + rows] = mkldnn_linear(scores.softmax(-1), values_t, None).to_dense()


def _one_head_blas(q: Tensor, k: Tensor, v: Tensor, out: Tensor, rows: int) -> None:
    """The same with dense tensors, where oneDNN's bf16 kernels are missing."""
    keys_t = k.transpose(0, 1)    # strided views of the caller's layout: BLAS reads them by leading dimension
    for start in range(0, q.shape[0], rows):
        out[start:start + rows] = torch.matmul(torch.matmul(q[start:start + rows], keys_t).softmax(-1), v)
