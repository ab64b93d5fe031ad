"""Where LoRAs and textual-inversion embeddings are found, by name.

    folders = addon_folders(models_dir, extra=shared_folders)   # the folders to look in, in order
    addons = find_addons(folders)                                # AddOns(loras={name: path}, embeddings={...})
    path = lora_path("ink", addons)                              # a name or a path -> the file, or a clear error

A LoRA's or an embedding's name is its file's stem (`ink.safetensors` is "ink"), as in A1111's
`<lora:ink:0.8>` and its embeddings written into the prompt. When two files have the same name, the
first folder in the list wins, and inside one folder the first file the scan finds (its own files before
its subfolders'): Latent Desk's own folders come first, then LATENTDESK_MODEL_DIRS, then the A1111 and
ComfyUI folders the window found. Only `.safetensors` files are listed (core.fetch.folders.scan): a
pickled `.pt` embedding or LoRA can run code when loaded, so it is not even offered.

This lives in core/fetch (beside the folder scan it uses) rather than core/loading, because fetch sits
above loading in the engine's layers. No torch: the window lists add-ons before the engine loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import LatentDeskError
from core.fetch.folders import ModelFolder, env_model_dirs, env_model_folders, scan

LORA_FOLDER, EMBEDDING_FOLDER = "loras", "embeddings"
ADDON_KINDS = {"lora": LORA_FOLDER, "embedding": EMBEDDING_FOLDER}
NAMES_SHOWN = 12      # an unknown name's message lists this many of the names found
FOLDERS_SHOWN = 4


@dataclass(frozen=True)
class AddOns:
    loras: Mapping[str, Path] = field(default_factory=dict)        # name (file stem) -> .safetensors file
    embeddings: Mapping[str, Path] = field(default_factory=dict)   # name (file stem) -> .safetensors file
    folders: tuple[ModelFolder, ...] = ()                          # where they were looked for, for messages


def addon_folders(models_dir: Path | None, extra: Iterable[ModelFolder] = ()) -> list[ModelFolder]:
    """The folders LoRAs and embeddings are looked for in, first wins: `<models_dir>/loras` and
    `/embeddings`, the same two in every LATENTDESK_MODEL_DIRS folder (and the LoRA and embedding folders of
    an A1111 or ComfyUI install named there), then `extra` (the shared A1111/ComfyUI folders the window
    found). Folders that do not exist are left out; a folder is listed once per kind."""
    found: list[ModelFolder] = []
    roots = ([(Path(models_dir), "user")] if models_dir is not None else []) + [(d, "env") for d in env_model_dirs()]
    for root, source in roots:
        for kind, sub in ADDON_KINDS.items():
            if (root / sub).is_dir():
                found.append(ModelFolder(root / sub, kind, source))
    found += [f for f in env_model_folders() if f.kind in ADDON_KINDS]
    found += [f for f in extra if f.kind in ADDON_KINDS]
    unique, seen = [], set()
    for folder in found:
        key = (Path(folder.path).resolve(), folder.kind)
        if key not in seen:
            seen.add(key)
            unique.append(folder)
    return unique


def find_addons(folders: Iterable[ModelFolder]) -> AddOns:
    """The LoRA and embedding files in `folders` by name; the first file with a name wins."""
    folders = tuple(folders)
    loras: dict[str, Path] = {}
    embeddings: dict[str, Path] = {}
    for found in scan(f for f in folders if f.kind in ADDON_KINDS):
        names = loras if found.kind == "lora" else embeddings
        if found.path.is_file():           # a diffusers folder among LoRAs is no LoRA
            names.setdefault(found.path.stem, found.path)
    return AddOns(loras, embeddings, folders)


def lora_path(spec: str, addons: AddOns | None) -> Path:
    """The file a request's LoRA names: a path to a file as it is, else a name found in `addons` (exactly,
    else ignoring case, for names typed on Windows); LatentDeskError listing what there is when not found."""
    path = Path(spec).expanduser()
    if (path.suffix.lower() == ".safetensors" or len(path.parts) > 1) and path.is_file():
        return path
    loras = addons.loras if addons is not None else {}
    if spec in loras:
        return Path(loras[spec])
    by_lower = {name.lower(): name for name in loras}
    if spec.lower() in by_lower:
        return Path(loras[by_lower[spec.lower()]])
    raise LatentDeskError(f"LoRA {spec!r} not found; {_what_there_is(addons)}")


def _what_there_is(addons: AddOns | None) -> str:
    if addons is None:
        return "give a path to its .safetensors file (no LoRA folders were searched)"
    names = sorted(addons.loras, key=str.lower)
    folders = [str(f.path) for f in addons.folders if f.kind == "lora"]
    where = ", ".join(folders[:FOLDERS_SHOWN]) + (f" and {len(folders) - FOLDERS_SHOWN} more" if
                                                  len(folders) > FOLDERS_SHOWN else "")
    where = f"in folders {where}" if folders else "there are no LoRA folders (put LoRAs in the models folder's loras/)"
    if not names:
        return f"no LoRAs found ({where})"
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return f"LoRAs found: {', '.join(names[:NAMES_SHOWN])}{more} ({where})"


def addon_name(spec: str) -> str:
    """What an image's settings call a LoRA given by name or path: its name, never the path (which says
    where the user keeps files, and means nothing on another machine)."""
    path = Path(spec)
    return path.stem if path.suffix.lower() == ".safetensors" or len(path.parts) > 1 or "\\" in spec else spec


def embeddings_in(texts: Iterable[str], addons: AddOns | None) -> list[tuple[str, Path]]:
    """The embeddings whose names the texts use, as A1111 uses them: the name written as a word of the prompt or
    the negative prompt. Case is ignored, as A1111's match is on CLIP's lower-cased tokens."""
    if addons is None or not addons.embeddings:
        return []
    text = "\n".join(texts)
    words = {m.group(0).lower() for m in _WORD.finditer(text)}
    found = []
    for name, path in addons.embeddings.items():
        # most names are one word, found in the set; a name with spaces or dashes is searched for as such
        if name.lower() in words or (not _WORD.fullmatch(name) and re.search(
                rf"(?<![\w]){re.escape(name)}(?![\w])", text, re.IGNORECASE)):
            found.append((name, Path(path)))
    return found


_WORD = re.compile(r"\w+")
