"""Files written whole or not at all: a temporary file beside the target, fsync, then one rename,
so a crash or a full disk leaves the old file (or none), never half of a new one."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_json(path: Path, value) -> None:
    """JSON a reader sees as the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    fsync_file(tmp)
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """A `.safetensors` file (tensors copied to the CPU, contiguous) written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    fsync_file(tmp)
    os.replace(tmp, path)
