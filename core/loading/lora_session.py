"""The add-ons in use on each loaded model: the LoRAs patched into its weights and the embeddings its text
encoder knows, kept between generations so that a switch costs only what changed.

    use_loras(model, [(path, 0.8), ...])        # W = W0 + Σ weight·ΔW for exactly these; [] restores W0 bit for bit
    use_embeddings(model, [path, ...])          # exactly these embeddings set on the text encoder; [] removes all

One state per model, held weakly by its UNet (a model the app lets go takes its state with it): the
AppliedLoras with the original weights of the touched layers, and the files read for this model. A
LoRA file is read once per (path, size, mtime_ns), so changing a weight or switching back costs no
read; a file changed on disk is read again. At most FILES_KEPT files stay read besides those in use.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from core.errors import LatentDeskError
from core.loading.lora_apply import AppliedLoras
from core.loading.lora_files import LoraFile, read_lora
from core.model import DiffusionModel

FILES_KEPT = 4     # read LoRA files kept besides those in use: a few switches back and forth cost no read


class _ModelAddOns:
    def __init__(self, model: DiffusionModel):
        self.applied = AppliedLoras(model)
        self.loras: OrderedDict[tuple, LoraFile] = OrderedDict()   # file key -> the file read for this model
        self.embeddings: OrderedDict[tuple, object] = OrderedDict()  # file key -> embedding fitted to this encoder
        self.embeddings_set: tuple = ()                             # the file keys set on the encoder now
        self.loras_set: tuple = ()                                  # ((file key, weight), ...) patched in now


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()    # UNet -> _ModelAddOns


def _state(model: DiffusionModel) -> _ModelAddOns:
    state = _STATES.get(model.unet)
    if state is None:
        state = _STATES[model.unet] = _ModelAddOns(model)
    return state


def file_key(path: Path) -> tuple[str, int, int]:
    """(path, size, mtime_ns): a file edited or replaced on disk is a new key."""
    try:
        info = os.stat(path)
    except OSError as e:
        raise LatentDeskError(f"{path}: cannot be read ({e.strerror or e})") from None
    return str(Path(path).resolve()), info.st_size, info.st_mtime_ns


def use_loras(model: DiffusionModel, loras: Sequence[tuple[Path, float]]) -> list[LoraFile]:
    """Make `model`'s weights its own plus exactly these LoRAs; the files, in order. Every file is read and
    checked before any weight changes, so a refused file leaves the model as it was."""
    if not loras and model.unet not in _STATES:
        return []         # never given any: nothing to restore
    state = _state(model)
    keys = [file_key(Path(path)) for path, _ in loras]
    files = [_cached(state.loras, key, lambda p=path: read_lora(p, model))
             for key, (path, _) in zip(keys, loras, strict=True)]
    _forget_unused(state.loras, set(keys))
    wanted = tuple(zip(keys, (weight for _, weight in loras), strict=True))
    if wanted != state.loras_set:     # the same LoRAs run after run (Live) patch nothing again
        state.applied.set([(file, weight) for file, (_, weight) in zip(files, loras, strict=True)])
        state.loras_set = wanted
    return files


def applied_loras(model: DiffusionModel) -> list[tuple[LoraFile, float]]:
    """The LoRAs applied to `model` now (none for a model never given any)."""
    state = _STATES.get(model.unet)
    return list(state.applied.active) if state is not None else []


def use_embeddings(model: DiffusionModel, paths: Sequence[Path]) -> None:
    """Set exactly these embeddings on `model`'s text encoder (session only: no file changes); [] removes all."""
    state = _STATES.get(model.unet)
    if state is None:
        if not paths:
            return        # nothing was ever set on this model: nothing to remove
        state = _state(model)
    keys = tuple(file_key(Path(path)) for path in paths)
    if keys == state.embeddings_set:
        return
    from core.loading.embedding_files import fit_embedding, read_embedding_file
    embeddings = _embeddings_module()
    fitted = [_cached(state.embeddings, key, lambda p=path: fit_embedding(
        read_embedding_file(p), model.text_encoder)) for key, path in zip(keys, paths, strict=True)]
    _forget_unused(state.embeddings, set(keys))
    embeddings.set_embeddings(model.text_encoder, fitted)
    state.embeddings_set = keys


def embeddings_in_use(model: DiffusionModel, *prompts: str) -> list[str]:
    """The names of the embeddings set on `model` that these prompts use, matched by tokens as A1111 does."""
    state = _STATES.get(model.unet)
    if state is None or not state.embeddings_set:
        return []
    return _embeddings_module().embeddings_used(model.text_encoder, *prompts)


def _embeddings_module():
    """core/text/embeddings.py (set_embeddings, embeddings_used), imported when
    an embedding is first used: a run without embeddings does not need it."""
    from core.text import embeddings
    return embeddings


def _cached(cache: OrderedDict, key, read):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = value = read()
    return value


def _forget_unused(cache: OrderedDict, in_use: set) -> None:
    """Drop the oldest entries not in use until at most FILES_KEPT unused ones are left."""
    unused = [key for key in cache if key not in in_use]
    for key in unused[:max(0, len(unused) - FILES_KEPT)]:
        del cache[key]
