"""Where the files that ship with Latent Desk live (tokenizer, built-in model, icons).

`resources/` sits next to the `core` package in a source checkout and in the
packaged app; this is the one place that knows it.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import LatentDeskError


def resources_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "resources"


def builtin_model_path() -> Path:
    return resources_dir() / "models" / "builtin.safetensors"


def resolve_model(spec: str) -> Path:
    """A model argument ("builtin" or a path) as a path that exists."""
    if spec == "builtin":
        path = builtin_model_path()
        if not path.is_file():
            raise LatentDeskError(f"the built-in model is not installed ({path} is missing); "
                                  "pass --model with a .safetensors file or a diffusers folder")
        return path
    path = Path(spec).expanduser()
    if not path.exists():
        raise LatentDeskError(f"{path}: model not found")
    return path
