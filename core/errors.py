"""The one exception type for problems a user can cause and fix."""

from __future__ import annotations

from pathlib import Path


class LatentDeskError(Exception):
    """Something the user can act on: a bad file, a bad size, a bad setting.

    The message is written for the user; the app shows it as it is.
    """


class ModelLoadError(LatentDeskError):
    """A model file or folder that cannot be used; names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def shown(value, limit: int = 80) -> str:
    """A value read from a file, for a message: its repr, cut short (a hostile one can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
