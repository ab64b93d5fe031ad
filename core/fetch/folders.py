"""The model folders users already have: AUTOMATIC1111's, ComfyUI's, and any folder of models.

    folders_under(root)       an A1111 or ComfyUI install → its model folders, each with the kind it holds;
                              any other folder → itself, as a folder of checkpoints
    extra_model_paths(yaml)   the folders a ComfyUI extra_model_paths.yaml names
    env_model_dirs()          the folders in LATENTDESK_MODEL_DIRS (os.pathsep-separated), for the command line
    scan(folders, cancel)     the models in those folders, one at a time, as they are found

Nothing is copied or moved: Latent Desk reads the models where they are, so a user with 100 GB of
checkpoints does not need another 100 GB. The scan is a generator over os.scandir that yields each
model as soon as its directory entry is read, so a window can show the first ones while it goes on,
in a thread, through 10,000 files; nothing is sorted up front (that would read everything first).

What a scan yields: `.safetensors` files (never pickles, which can run code when loaded) and diffusers
folders (a model_index.json; the scan does not go inside one, where every part would look like a
model). It skips hidden files and folders and partial downloads, goes down into subfolders (A1111
users sort models into them) to a depth limit, visits each real folder once however many links and
overlapping folders lead to it (so a symlink loop ends), and passes over folders it may not read.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENV_VAR = "LATENTDESK_MODEL_DIRS"
SOURCES = ("a1111", "comfyui", "comfyui-extra", "env", "user")
MODEL_SUFFIX = ".safetensors"
DIFFUSERS_MARKER = "model_index.json"
# Deep enough for Stable-diffusion/<author>/<style>/<version>/, shallow enough that a folder added by
# mistake (a whole drive) ends in reasonable time.
MAX_DEPTH = 8
MAX_YAML_BYTES = 1_000_000      # extra_model_paths.yaml is a few hundred bytes; a larger one is not one

# Each layout: the folder that marks it, then (folder, kind) for where it keeps each kind of model.
A1111_MARKER = "models/Stable-diffusion"
A1111_FOLDERS = (
    ("models/Stable-diffusion", "checkpoint"),
    ("models/Lora", "lora"),
    ("models/LyCORIS", "lora"),          # the LyCORIS extension's folder; ComfyUI's own example lists it
    ("models/VAE", "vae"),
    ("models/VAE-approx", "taesd"),
    ("embeddings", "embedding"),
)
COMFYUI_MARKER = "models/checkpoints"
COMFYUI_FOLDERS = (
    ("models/checkpoints", "checkpoint"),
    ("models/loras", "lora"),
    ("models/vae", "vae"),
    ("models/vae_approx", "taesd"),
    ("models/embeddings", "embedding"),
)
COMFYUI_EXTRA_PATHS = "extra_model_paths.yaml"
# extra_model_paths.yaml's folder names (ComfyUI's folder_paths) for the kinds Latent Desk reads;
# the rest (controlnet, upscale_models, ...) are not models it can use.
COMFYUI_KINDS = {"checkpoints": "checkpoint", "loras": "lora", "vae": "vae", "vae_approx": "taesd",
                 "embeddings": "embedding"}
COMFYUI_PORTABLE_FOLDER = "ComfyUI"     # the Windows portable build keeps the install one level down


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    kind: str          # what it holds: "checkpoint" | "lora" | "vae" | "taesd" | "embedding"
    source: str        # how it was found: one of SOURCES


@dataclass(frozen=True)
class FoundModel:
    path: Path         # a .safetensors file or a diffusers folder
    kind: str          # the folder's kind; a diffusers folder is always a "checkpoint"
    folder: ModelFolder


def folders_under(root: Path, source: str = "user") -> list[ModelFolder]:
    """The model folders of the install at `root`, or [root as checkpoints] when it is no known install.

    Only folders that exist are listed. `source` is what a plain folder is reported as ("user" when
    the user added it, "env" when LATENTDESK_MODEL_DIRS named it). [] when `root` is not a folder.
    """
    root = Path(root).expanduser()
    if not _is_dir(root):
        return []
    found: list[ModelFolder] = []
    for install in (root, root / COMFYUI_PORTABLE_FOLDER):
        if _is_dir(install / A1111_MARKER):
            found += _existing(install, A1111_FOLDERS, "a1111")
        if _is_dir(install / COMFYUI_MARKER):
            found += _existing(install, COMFYUI_FOLDERS, "comfyui")
        if _is_file(install / COMFYUI_EXTRA_PATHS):
            found += extra_model_paths(install / COMFYUI_EXTRA_PATHS)
    return _unique(found) or [ModelFolder(root, "checkpoint", source)]


def extra_model_paths(yaml_file: Path) -> list[ModelFolder]:
    """The existing folders a ComfyUI extra_model_paths.yaml names for the kinds Latent Desk reads.

    Read as ComfyUI's utils/extra_config.py reads it: each section has an optional base_path (with ~
    and $VARS expanded, relative to the file's folder when relative) and, per folder name, one or more
    paths separated by newlines, each relative to base_path (or to the file's folder without one).
    A file that cannot be read or parsed gives [] and a log line: it is the user's, not ours to refuse.
    """
    sections = _read_yaml(Path(yaml_file))
    if not isinstance(sections, dict):
        return []
    yaml_dir = Path(os.path.abspath(yaml_file)).parent
    found: list[ModelFolder] = []
    for section in sections.values():
        if not isinstance(section, dict):
            continue
        base = section.get("base_path")
        base_path = None
        if isinstance(base, str) and base:
            base_path = yaml_dir / os.path.expandvars(os.path.expanduser(base))   # an absolute one replaces yaml_dir
        for name, value in section.items():
            kind = COMFYUI_KINDS.get(name)
            if kind is None:
                continue
            for entry in _paths_in(value):
                folder = (base_path or yaml_dir) / entry
                if _is_dir(folder):
                    found.append(ModelFolder(folder, kind, "comfyui-extra"))
    return _unique(found)


def env_model_dirs() -> list[Path]:
    """The folders LATENTDESK_MODEL_DIRS names (os.pathsep-separated), without the missing ones."""
    dirs: list[Path] = []
    for part in os.environ.get(ENV_VAR, "").split(os.pathsep):
        path = Path(part.strip()).expanduser() if part.strip() else None
        if path is not None and _is_dir(path) and path not in dirs:
            dirs.append(path)
    return dirs


def env_model_folders() -> list[ModelFolder]:
    """The model folders under each LATENTDESK_MODEL_DIRS folder: an A1111 or ComfyUI install in it counts too."""
    return _unique([folder for root in env_model_dirs() for folder in folders_under(root, source="env")])


def scan(folders: Iterable[ModelFolder], cancel: threading.Event | None = None) -> Iterator[FoundModel]:
    """The models in `folders`, each yielded as soon as it is found; stops soon after `cancel` is set."""
    visited: set[tuple[int, int]] = set()      # real folders, by (device, inode): links and overlaps visit once
    for folder in folders:
        if cancel is not None and cancel.is_set():
            return
        yield from _scan_folder(folder, visited, cancel)


def _scan_folder(folder: ModelFolder, visited: set, cancel: threading.Event | None) -> Iterator[FoundModel]:
    pending = [(Path(folder.path), 0)]
    while pending:
        directory, depth = pending.pop()
        identity = _identity(directory)
        if identity is None or identity in visited:
            continue
        visited.add(identity)
        if _is_file(directory / DIFFUSERS_MARKER):
            yield FoundModel(directory, "checkpoint", folder)
            continue
        subfolders: list[str] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if cancel is not None and cancel.is_set():
                        return
                    if _hidden(entry):
                        continue
                    try:
                        if entry.is_dir():            # follows links: a linked folder of models is common
                            if depth < MAX_DEPTH:
                                subfolders.append(entry.path)
                        elif entry.name.lower().endswith(MODEL_SUFFIX) and entry.is_file():
                            yield FoundModel(Path(entry.path), folder.kind, folder)
                    except OSError:
                        continue                      # vanished or unreadable while we looked
        except OSError:
            continue                                  # a folder we may not read (or one that went away)
        # Subfolders after the folder's own files, in the order found; reversed so the stack pops the first.
        pending.extend((Path(path), depth + 1) for path in reversed(subfolders))


def _hidden(entry: os.DirEntry) -> bool:
    """Dot-files everywhere, and the hidden attribute on Windows (where DirEntry.stat costs no system call)."""
    if entry.name.startswith("."):
        return True
    if os.name != "nt":
        return False
    try:
        attributes = getattr(entry.stat(follow_symlinks=False), "st_file_attributes", 0)
    except OSError:
        return False
    return bool(attributes & getattr(stat, "FILE_ATTRIBUTE_HIDDEN", 0))


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(directory)
    except (OSError, ValueError):                     # ValueError: a path with a NUL in it
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


def _existing(install: Path, layout: tuple[tuple[str, str], ...], source: str) -> list[ModelFolder]:
    return [ModelFolder(install / relative, kind, source) for relative, kind in layout if _is_dir(install / relative)]


def _unique(folders: list[ModelFolder]) -> list[ModelFolder]:
    """The folders without repeats of the same path and kind (the first, and so its source, wins)."""
    seen: set[tuple[Path, str]] = set()
    unique = []
    for folder in folders:
        key = (folder.path, folder.kind)
        if key not in seen:
            seen.add(key)
            unique.append(folder)
    return unique


def _paths_in(value) -> list[str]:
    """ComfyUI's value for a folder name: one path, or several on separate lines ("|" blocks); a list also works."""
    if isinstance(value, str):
        lines = value.split("\n")
    elif isinstance(value, list):
        lines = [item for item in value if isinstance(item, str)]
    else:
        return []
    return [line.strip() for line in lines if line.strip()]


def _read_yaml(path: Path):
    try:
        import yaml  # only users with a ComfyUI install need PyYAML
    except ImportError:
        log.warning("%s: PyYAML is not installed, so ComfyUI's extra model paths are not read", path)
        return None
    try:
        with open(path, "rb") as file:
            text = file.read(MAX_YAML_BYTES + 1)
        if len(text) > MAX_YAML_BYTES:
            log.warning("%s: larger than %d bytes; not read", path, MAX_YAML_BYTES)
            return None
        return yaml.safe_load(text)
    except (OSError, yaml.YAMLError, RecursionError, ValueError) as error:
        log.warning("%s: cannot be read (%s)", path, error)
        return None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
