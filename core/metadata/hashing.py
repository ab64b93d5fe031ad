"""A1111's "Model hash", which an image's settings name its model by."""

from __future__ import annotations

import hashlib
from pathlib import Path

from core.errors import LatentDeskError

HASH_BLOCK = 1 << 20


def model_hash(path: str | Path) -> str:
    """A1111's "Model hash": the first 10 hex digits of the file's SHA-256.

    For a diffusers folder, which A1111 cannot load, it is the hash of the UNet's
    weights (`unet/diffusion_pytorch_model[.fp16].safetensors`, shards in order),
    the part that tells fine-tunes apart.
    """
    path = Path(path)
    if path.is_dir():
        from core.loading.diffusers_folder import weight_files  # imports torch: only for a folder
        files = weight_files(path / "unet")
    else:
        files = [path]
    digest = hashlib.sha256()
    for file in files:
        try:
            with open(file, "rb") as f:
                while block := f.read(HASH_BLOCK):
                    digest.update(block)
        except OSError as e:
            raise LatentDeskError(f"Cannot read {file} to hash it: {e.strerror or e}") from e
    return digest.hexdigest()[:10]
