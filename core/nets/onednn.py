"""Whether oneDNN's bf16 kernels can run here: the fast paths of attention_kernel and packed_conv need them."""

from __future__ import annotations

import functools

import torch


@functools.cache
def has_bf16_kernels() -> bool:
    """PyTorch was built with oneDNN and the CPU has bf16 units (AVX512-BF16 or AMX) for it."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
