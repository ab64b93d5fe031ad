"""Files written whole or not at all: a temporary file beside the target, fsync, then one rename,
so a crash or a full disk leaves the old file (or none), never half of a new one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from core.errors import LatentDeskError


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


def writable_folder(folder: Path, flag: str) -> Path:
    """`folder`, made if missing, once a file has been made and removed in it; else a LatentDeskError naming
    `flag`. Asked before a long job, not at its first save."""
    if folder.exists() and not folder.is_dir():
        raise LatentDeskError(f"{flag} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LatentDeskError(f"{flag} {folder}: the folder cannot be made ({e.strerror or e})") from None
    _probe(folder, flag)
    return folder


def check_can_make(folder: Path, flag: str) -> None:
    """Whether `folder` could be made and written in, without making it (a refused run leaves nothing
    behind): the folder if it exists, else the nearest one above it, must take a file."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LatentDeskError(f"{flag} {folder}: {existing} is a file, not a folder")
    _probe(existing, f"{flag} {folder}")


def _probe(folder: Path, what: str) -> None:
    # Permission bits say nothing for root, a read-only disk or /proc: only making a file tells.
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".latentdesk-"):
            pass
    except OSError as e:
        raise LatentDeskError(f"{what}: no file can be written in {folder} ({e.strerror or e})") from None
