"""Which preset (core/presets.py) each model runs with: the user's choice for it, remembered, or what
its catalogue entry, metadata or name says.

A user's choice is stored per model under a digest of its spec (QSettings keys cannot hold a path's
slashes), so renaming nothing and re-opening a model brings its type back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PySide6.QtCore import QSettings

from app.settings import read

STANDARD = "standard"
KEY = "models/type-"


def kinds() -> list[tuple[str, str]]:
    """(kind, title) of every type the box offers: Standard, then each few-step kind with its steps."""
    from core.presets import PRESETS
    return [(STANDARD, "Standard")] + [(kind, f"{p.title} ({p.steps} step{'s' if p.steps > 1 else ''})")
                                       for kind, p in PRESETS.items()]


def _key(spec: str) -> str:
    return KEY + hashlib.sha256(spec.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def preset_in_force(settings: QSettings, spec: str, path: Path | None):
    """(Preset or None, what said so): the user's choice for this model, else what the file says."""
    from core.fetch.catalogue import load_catalogue
    from core.presets import PRESETS, preset_for, preset_named

    chosen = read(settings, _key(spec), "")
    if chosen == STANDARD:
        return None, "you"
    if chosen in PRESETS:
        return preset_named(chosen), "you"
    if path is None:
        return None, ""
    try:
        catalogue = load_catalogue()
    except Exception:      # noqa: BLE001 - a damaged catalogue costs the catalogue's presets, not the model
        catalogue = []
    found = preset_for(path, catalogue)
    return found, (found.source if found else "")


def remember(settings: QSettings, spec: str, kind: str) -> None:
    settings.setValue(_key(spec), kind)
