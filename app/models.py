"""Which models the user can pick, and loading one (a blocking call the session runs off-thread).

    scan_models(folder) -> [Path]       .safetensors files and diffusers folders in the models folder
    load(path, spec, known_hash) -> ReadyModel       with the model's preview decoder, when it has one
    describe(model) -> "tiny · Stable Diffusion 1.x · CPU"

A model is named by its *spec*: BUILTIN for the built-in model, else its path as text (what
GenerationRequest.model and the settings store).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.jobs import ReadyModel

if TYPE_CHECKING:   # the window imports this module before the engine (torch) has loaded
    import torch
    from torch import nn

    from core.model import DiffusionModel

BUILTIN = "builtin"         # the built-in model's spec (GenerationRequest.model's default)
MODEL_SUFFIXES = (".safetensors",)
REFUSED_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")   # pickles: core refuses them with a reason


def spec_label(spec: str) -> str:
    """A model's short name for the user: "Built-in model", or the file's or folder's name."""
    if spec == BUILTIN:
        return "Built-in model"
    path = Path(spec)
    return path.stem if path.suffix else path.name


def quietly(test: Callable[[Path], bool], path: Path) -> bool:
    """`test(path)` (Path.exists, Path.is_file, …), False where the path cannot be looked at: Python
    3.11-3.13 raise PermissionError for a path under a folder the user may not read, and the window
    asks these while it opens, where an exception would abort the app."""
    try:
        return test(path)
    except OSError:
        return False


def is_diffusers_folder(path: Path) -> bool:
    return quietly(Path.is_dir, path) and quietly(Path.is_file, path / "model_index.json")


def is_model_path(path: Path) -> bool:
    """Something a user may mean as a model (the loader still decides whether it is one)."""
    return path.suffix.lower() in MODEL_SUFFIXES + REFUSED_SUFFIXES or is_diffusers_folder(path)


def is_preview_decoder_file(path: Path) -> bool:
    """Files that live beside models but draw previews: ours (`x.preview.safetensors`) and TAESD's."""
    name = path.name.lower()   # the suffix is core.loading.preview_decoders.SUFFIX, not imported: it would load torch at start-up
    return name.endswith(".preview.safetensors") or (name.startswith("tae") and ("_decoder." in name or "_encoder." in name))


def scan_models(folder: Path) -> list[Path]:
    """The models in `folder`; what cannot be read there (the folder, or a subfolder) is left out."""
    try:
        entries = list(folder.iterdir()) if quietly(Path.is_dir, folder) else []
    except OSError:
        return []
    found = [p for p in entries
             if (p.suffix.lower() in MODEL_SUFFIXES and not is_preview_decoder_file(p) and quietly(Path.is_file, p))
             or is_diffusers_folder(p)]
    return sorted(found, key=lambda p: p.name.lower())


def load(path: Path, spec: str, known_hash: str | None = None, precision: str = "float32",
         cancel: threading.Event | None = None, models_dir: Path | None = None) -> ReadyModel:
    """Load and hash a model, its networks in `precision` ("float32" or "bfloat16"). Blocking: the session
    awaits it in a worker thread, so the engine's first import (torch, transformers: seconds) happens
    here too, not while the window opens."""
    from core.loading.checkpoint import load_model
    from core.loading.safetensors_io import reads_stop_when
    from core.metadata.hashing import model_hash
    from core.nets.latent_rgb import fit_latent_to_rgb
    from core.precision import precision_dtype

    with reads_stop_when(cancel):       # set when the user picks another model before this one is in
        model = load_model(path, dtype=precision_dtype(precision))
    digest = known_hash or model_hash(path)
    decoder, note = load_preview_decoder_beside(path, model, (models_dir,) if models_dir else ())
    return ReadyModel(model, spec, digest, fit_latent_to_rgb(model.vae), decoder, note)


def resolve_precision(path: Path, precision: str) -> str:
    """The format to load `path` in: "auto" (the user has not chosen) becomes bfloat16 for a full-size model on a
    CPU where it runs faster, float32 otherwise (core/precision.py automatic_precision); a choice stays."""
    import torch

    from core.loading.footprint import weights_bytes
    from core.precision import AUTO, automatic_precision

    if precision != AUTO:
        return precision
    try:
        size = weights_bytes(path, torch.float32)
    except Exception:       # noqa: BLE001 - an unreadable file: the load itself will say why
        return "float32"
    return automatic_precision(size)


def load_preview_decoder_beside(path: Path, model: DiffusionModel,
                                folders: tuple[Path, ...] = ()) -> tuple[nn.Module | None, str | None]:
    """The model's preview decoder, if there is one, and why not if it is unusable: its own
    (`x.preview.safetensors`, ours or a TAESD file renamed), else TAESD's for a Stable Diffusion model
    when it lies in the same folder or one of `folders` (the models folder, where the Get models dialog
    puts it) under its usual name (`taesd_decoder.safetensors`, or `taesdxl_decoder.safetensors` for SDXL).
    Only previews and drafts depend on it, so a broken file costs those, never the model."""
    from core.errors import LatentDeskError
    from core.loading.preview_decoders import load_preview_decoder, tiny_decoder_file

    config = model.vae.config
    decoder_path = tiny_decoder_file(path, model.family.name, config.scale_factor, folders)
    if decoder_path is None:
        return None, None
    try:
        decoder = load_preview_decoder(decoder_path, config.z_channels, config.downsample_factor)
    except (LatentDeskError, OSError) as error:
        return None, f"The tiny preview decoder was not loaded, so previews use the fast map: {error}"
    # It stays float32 (~100 KB, and its forward casts the latents to its own dtype) on the model's device.
    return decoder.to(model.device), None


def tiny_decoder_note(loaded: ReadyModel) -> str:
    """What "Tiny decoder" means for this model, for the Preview box's tooltip."""
    from core.nets.taesd import TaesdDecoder

    if loaded.preview_decoder is None:
        return "Tiny decoder: none loaded for this model, so the fast map draws instead"
    if isinstance(loaded.preview_decoder, TaesdDecoder):
        return "Tiny decoder: TAESD, from the file beside the model"
    return "Tiny decoder: the model's own (its .preview.safetensors)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        import torch  # loaded already: a model is on this device
        return f"GPU · {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "GPU · Apple"
    return "CPU"


def describe(model: DiffusionModel) -> str:
    from core.precision import precision_name  # a model is loaded: the engine is imported already
    precision = precision_name(model)
    return f"{model.name} · {model.family.title}" + (f" · {precision}" if precision else "")


def needs_room(path: Path, precision: str, current: ReadyModel) -> bool:
    """True when `path` fits in memory only once `current` is released (the session then closes it
    first); False when it fits beside it, or would not fit either way (the loader says so)."""
    from core.loading.footprint import weights_bytes
    from core.memory import available_bytes
    from core.precision import precision_dtype

    try:
        needed = weights_bytes(path, precision_dtype(precision))
    except Exception:       # noqa: BLE001 - an unreadable file: the load itself will say why
        return False
    held_model = current.diffusion
    free = available_bytes(held_model.device)
    held = sum(t.numel() * t.element_size() for net in (held_model.unet, held_model.vae)
               for t in net.state_dict().values())
    held += sum(t.numel() * t.element_size() for encoder in held_model.text_encoder.models
                for t in encoder.state_dict().values())
    return free is not None and 0.9 * free < needed <= 0.9 * (free + held)
