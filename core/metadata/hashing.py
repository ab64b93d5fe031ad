"""The hashes an image's settings name its files by, as A1111 writes them.

    model_hash(path)        "Model hash": the first 10 hex digits of the model file's SHA-256
    lora_hash(path)         "Lora hashes": the first 12 hex digits of the SHA-256 of the file after its header
    embedding_hash(path)    "TI hashes": the first 12 hex digits of the whole file's SHA-256

Sources (stable-diffusion-webui): `modules/hashes.py` `calculate_sha256` and `addnet_hash_safetensors`
(the kohya / sd-webui-additional-networks hash: skip the 8-byte header length and the JSON header, hash
the tensor data, so editing a LoRA's metadata keeps its hash); `extensions-builtin/Lora/network.py`
`NetworkOnDisk.read_hash` uses the addnet hash for a `.safetensors` LoRA and `set_hash` keeps `[0:12]`;
`modules/textual_inversion/textual_inversion.py` sets an embedding's hash from `hashes.sha256(path, ...)`,
the whole file's, and keeps `[0:12]` too.

LoRAs and embeddings are hashed for every image, so their hashes are kept by (path, size, mtime_ns), as
A1111's cache.json keeps them by mtime: a 200 MB LoRA is read once, not once per image.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

from core.errors import LatentDeskError

HASH_BLOCK = 1 << 20
SHORT_HASH = 12            # A1111's shorthash for LoRAs and embeddings
MODEL_HASH = 10            # A1111's "Model hash"
HASHES_KEPT = 256          # remembered file hashes; each is a few dozen bytes
_hashes: OrderedDict[tuple, str] = OrderedDict()


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
        _digest_file(file, digest)
    return digest.hexdigest()[:MODEL_HASH]


def lora_hash(path: str | Path) -> str:
    """A1111's LoRA hash (its "addnet" hash): the SHA-256 of a .safetensors file's tensor data, 12 hex digits."""
    return _remembered(Path(path), "addnet", lambda p: _digest_file(p, hashlib.sha256(), skip_header=True))


def embedding_hash(path: str | Path) -> str:
    """A1111's textual-inversion hash: the SHA-256 of the whole file, 12 hex digits."""
    return _remembered(Path(path), "sha256", lambda p: _digest_file(p, hashlib.sha256()))


def _remembered(path: Path, kind: str, digest) -> str:
    try:
        info = os.stat(path)
    except OSError as e:
        raise LatentDeskError(f"Cannot read {path} to hash it: {e.strerror or e}") from e
    key = (kind, str(path.resolve()), info.st_size, info.st_mtime_ns)
    if key in _hashes:
        _hashes.move_to_end(key)
        return _hashes[key]
    value = digest(path).hexdigest()[:SHORT_HASH]
    _hashes[key] = value
    while len(_hashes) > HASHES_KEPT:
        _hashes.popitem(last=False)
    return value


def _digest_file(file: Path, digest, skip_header: bool = False):
    """`digest` updated with the file's bytes (after the safetensors header when `skip_header`)."""
    try:
        with open(file, "rb") as f:
            if skip_header:
                # The header's length as the file states it (a lie past the end leaves nothing to hash).
                stated = 8 + int.from_bytes(f.read(8), "little")
                f.seek(min(stated, os.fstat(f.fileno()).st_size))
            while block := f.read(HASH_BLOCK):
                digest.update(block)
    except OSError as e:
        raise LatentDeskError(f"Cannot read {file} to hash it: {e.strerror or e}") from e
    return digest
