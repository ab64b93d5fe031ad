"""Filling a network built on the meta device with tensors read from a file.

Building on `meta` allocates nothing; `load_state_dict(assign=True)` then adopts
the tensors we read as the parameters themselves, so a model is in memory once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from core.errors import ModelLoadError, shown


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return build()


def fill(module: nn.Module, state: dict[str, torch.Tensor], path: Path, file_key: Callable[[str], str]) -> nn.Module:
    """Adopt `state` as `module`'s weights after checking that every key and shape matches.

    `file_key` turns a module key back into the name the user's file uses, for messages.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelLoadError(path, f"tensor {file_key(missing[0])!r}{more} missing: incomplete or unsupported model")
    extra = [k for k in state if k not in expected]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise ModelLoadError(path, f"unexpected tensor {shown(file_key(extra[0]))}{more}: not an architecture Latent Desk knows")
    for k, ref in expected.items():
        if tuple(state[k].shape) != tuple(ref.shape):
            raise ModelLoadError(
                path, f"tensor {file_key(k)!r} has shape {tuple(state[k].shape)}, expected {tuple(ref.shape)}")
    module.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:  # a buffer the file does not carry and the module forgot to create for real
        raise ModelLoadError(path, f"internal error: {leftover[0]!r} was not loaded")
    return module.eval().requires_grad_(False)
